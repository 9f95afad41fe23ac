"""What `scripts/train.py` runs for a config: training, or evaluation with `eval.eval_only`.

This is the one place that sees both bk_jax.train and bk_jax.eval (they never import each other):

* eval.eval_only and eval.streaming: the chunked, state-carrying evaluator over the run's most
  recent checkpoint (bk_jax.eval.streaming);
* eval.eval_only: batched evaluation at the training shape (bk_jax.train.evaluate);
* otherwise: training (bk_jax.train.loop).
"""

from __future__ import annotations

import os
from typing import Callable

import ml_collections

from bk_jax.runtime.errors import ConfigError


def run(config: ml_collections.ConfigDict, *, on_step: Callable[[int], None] | None = None) -> dict:
  """Trains, or evaluates the latest checkpoint of config.save_dir; returns the results dict.

  Args:
    config: a full run config (configs/base.py plus overrides).
    on_step: training only: called with the global step after every step.

  Returns:
    The trainer's results dict, or the evaluation summary.

  Raises:
    ConfigError / bk_jax.data.DataError: one-line errors, before any compile.
  """
  if not config.eval.eval_only:
    from bk_jax.train.loop import run as train
    return train(config, on_step=on_step)
  from bk_jax.train.evaluate import NO_CHECKPOINT
  if config.eval.streaming:
    from bk_jax.eval.loading import list_checkpoints
    from bk_jax.eval.streaming import run_streaming_eval
    if not list_checkpoints(config.save_dir):  # the streaming loader's hint names another script
      raise ConfigError(NO_CHECKPOINT.format(os.path.abspath(config.save_dir)))
    return run_streaming_eval(config, checkpoint=None)  # the run's most recent checkpoint
  from bk_jax.train.evaluate import run_eval
  return run_eval(config)

"""Rules about a run config that train and eval both read (neither owns them).

`train_lengths` is the one definition of which sequence lengths a config trains: the trainer's
schedule and validation, evaluation's "trained at" length and the memory planner all use it.
"""

from __future__ import annotations

from typing import Any


def train_lengths(config: Any) -> tuple[int, ...]:
  """The sequence lengths `config` trains, in training order.

  Args:
    config: a run config (ConfigDict or dict) with a `train` section. A config written before
      `train.multi_length` existed counts as single-length.

  Returns:
    `train.sequence_lengths` when `train.multi_length`, else `(train.seq_len,)`.
  """
  t = config["train"]
  if t.get("multi_length", False):
    return tuple(int(n) for n in t["sequence_lengths"])
  return (int(t["seq_len"]),)

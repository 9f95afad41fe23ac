"""`eval.eval_only`: evaluate the latest checkpoint of save_dir.

With eval.streaming the chunked, state-carrying evaluator (bk_jax.eval.streaming) runs; otherwise
the mask-weighted mean loss over eval.eval_tokens tokens of eval.split in batches of the training
shape (first training length).
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from bk_jax.sharding import batch_sharding, state_shardings
from bk_jax.train.checkpoint import Checkpoints, abstract_like
from bk_jax.train.config_validation import ConfigError
from bk_jax.train.monitors import perplexity
from bk_jax.train.state import create_train_state
from bk_jax.train.step import make_optimizer, masked_cross_entropy


#: eval_only without a run: the flags that name the run directory in the training scripts.
_NO_CHECKPOINT = ("no checkpoint to evaluate in {} (eval_only reads the run directory save_dir: pass "
                  "--save_dir DIR to train_long_context.py or --config.save_dir=DIR to train.py)")


def load_trained_model(config: ml_collections.ConfigDict, mesh=None):
  """(model, meta) from the latest checkpoint of config.save_dir (config as given to `run`)."""
  from bk_jax.models import build_model
  from bk_jax.train.loop import prepare

  cfg, mesh_, _ = prepare(config)
  mesh = mesh or mesh_
  ck = Checkpoints(cfg.save_dir, keep=1_000_000)
  step = ck.latest_step()
  if step is None:
    ck.close()
    raise ConfigError(_NO_CHECKPOINT.format(os.path.abspath(cfg.save_dir)))
  model = build_model(cfg.model)
  graphdef, state = create_train_state(model, make_optimizer(cfg.train))
  abstract = abstract_like(state, state_shardings(state, mesh))
  restored, meta = ck.restore(step, abstract, None)
  ck.close()
  meta["checkpoint_step"] = step
  return nnx.merge(graphdef, restored.params, restored.model_state), meta, cfg, mesh


def run_eval(config: ml_collections.ConfigDict) -> dict:
  e = config.eval
  if e.streaming:
    from bk_jax.eval.checkpoint import list_checkpoints
    from bk_jax.eval.streaming import run_streaming_eval  # lazily: a separate module
    if not list_checkpoints(config.save_dir):  # the eval's own hint names eval_streaming.py's flag
      raise ConfigError(_NO_CHECKPOINT.format(os.path.abspath(config.save_dir)))
    return run_streaming_eval(config, checkpoint=None)  # the run's most recent checkpoint
  from bk_jax import data as bk_data
  from bk_jax.train.schedule import plan_lengths

  model, meta, cfg, mesh = load_trained_model(config)
  plan = plan_lengths(cfg)[0]
  ds = bk_data.make_train_dataset(cfg.data, plan.seq_len, plan.batch_size, seed=cfg.seed,
                                  split=e.split, num_epochs=1)
  graphdef, state = nnx.split(model)

  @jax.jit
  def step(state, batch):
    m = nnx.merge(graphdef, state)
    ce = masked_cross_entropy(m(batch["inputs"]), batch["targets"], batch["mask"])
    n = jnp.sum(batch["mask"])
    return ce * n, n

  total, count = 0.0, 0.0
  sh = batch_sharding(mesh)
  for batch in bk_data.make_iterator(ds, cfg.data):
    s, n = step(state, jax.device_put(batch, sh))
    total, count = total + float(s), count + float(n)
    if count >= e.eval_tokens:
      break
  loss = total / max(count, 1.0)
  out = dict(split=e.split, loss=loss, perplexity=perplexity(loss), tokens=int(count),
             seq_len=plan.seq_len, checkpoint_step=meta["checkpoint_step"])
  if cfg.logging.console:
    print(f"Evaluation ({e.split}, N={plan.seq_len}): {int(count):,} tokens | Loss: {loss:.4f} | "
          f"PPL: {out['perplexity']:.2f}")
  return out

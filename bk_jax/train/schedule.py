"""The multi-length plan (which length, how many steps) and the learning-rate schedule."""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import ml_collections
import optax

from bk_jax.runtime.run_config import train_lengths
from bk_jax.train.config_validation import ConfigError


@dataclasses.dataclass(frozen=True)
class LengthPlan:
  """One entry of the schedule: `steps` batches of (batch_size, seq_len)."""

  index: int
  seq_len: int
  batch_size: int
  steps_per_epoch: int
  epochs: int
  steps: int

  def epoch_of(self, step_in_length: int) -> int:
    """1-based epoch of the step_in_length-th (0-based) step of this length."""
    return min(step_in_length // self.steps_per_epoch, self.epochs - 1) + 1

  def epoch_end(self, step_in_length: int) -> bool:
    """Whether the 0-based step `step_in_length` is the last one of its epoch."""
    s = step_in_length + 1
    return s == self.steps or (s % self.steps_per_epoch == 0 and s // self.steps_per_epoch < self.epochs)


def plan_lengths(config: ml_collections.ConfigDict, *, process_count: int = 1,
                 batch_divisor: int = 1) -> list[LengthPlan]:
  """The lengths in the given order with their batch sizes and step counts.

  With `train.steps_per_length > 0` every length trains exactly that many steps, counted in
  epochs of `steps_per_epoch` (the last one may be partial); otherwise `train.epochs` full passes.
  Raises ConfigError when a batch size is not divisible by `batch_divisor` (the data-parallel
  mesh size) and bk_jax.data.DataError for missing or too-short data.
  """
  from bk_jax import data as bk_data

  t = config.train
  plans = []
  for i, n in enumerate(train_lengths(config)):
    bs = int(bk_data.batch_size_for(n, t.batch_size, t.tokens_per_batch))
    if bs <= 0:
      raise ConfigError(f"train.tokens_per_batch={t.tokens_per_batch} gives no sequence of length {n}")
    if bs % batch_divisor:
      raise ConfigError(
          f"batch size {bs} at length {n} is not divisible by the data-parallel mesh size {batch_divisor}")
    spe = int(bk_data.steps_per_epoch(config.data, n, bs, process_count=process_count))
    if spe <= 0:
      raise ConfigError(_no_full_batch(config.data, bs, n, process_count))
    if t.steps_per_length > 0:
      steps = int(t.steps_per_length)
      epochs = -(-steps // spe)
    else:
      epochs = int(t.epochs)
      steps = epochs * spe
    plans.append(LengthPlan(i, n, bs, spe, epochs, steps))
  return plans


def _no_full_batch(data_cfg, bs: int, n: int, process_count: int) -> str:
  """The one-line error for a training split too short for one batch: what it has, what is needed."""
  from bk_jax import data as bk_data

  if data_cfg.dataset == "synthetic":
    return (f"the training split has no full batch: data.synthetic.num_samples="
            f"{data_cfg.synthetic.num_samples} but batch {bs} x {process_count} process(es) needs "
            f"{bs * process_count}")
  have = len(bk_data.load_corpus(data_cfg).splits["train"])
  hint = "raise data.data_limit" if data_cfg.data_limit else "use a larger corpus"
  return (f"the training split has no full batch: it has {have:,} tokens, batch {bs} x length {n} x "
          f"{process_count} process(es) needs at least {bs * n * process_count + 1:,} ({hint}, or a "
          f"smaller train.batch_size or sequence length)")


def learning_rate_schedule(train_cfg: ml_collections.ConfigDict, total_steps: int) -> optax.Schedule:
  """Linear warm-up to `lr` then cosine decay to `lr * min_lr_ratio` over `total_steps`.

  Evaluated at the 1-based step count, so the first update already has a non-zero rate.
  """
  total = max(int(total_steps), 1)
  warmup = min(int(train_cfg.warmup_steps), total)
  peak = float(train_cfg.lr)
  end = peak * float(train_cfg.min_lr_ratio)
  if warmup >= total:
    sched = optax.linear_schedule(0.0, peak, total)
  else:
    sched = optax.warmup_cosine_decay_schedule(0.0, peak, warmup, total, end_value=end)
  return lambda step: sched(jnp.minimum(step + 1, total))

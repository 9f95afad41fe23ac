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
  hint = bk_data.too_short_hint(data_cfg, have)
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


def plan_table(plans: list[LengthPlan]) -> list[list[int]]:
  """[[seq_len, batch_size, steps], ...]: what a checkpoint records of the plan it was trained to."""
  return [[p.seq_len, p.batch_size, p.steps] for p in plans]


def format_plan(table) -> str:
  """"N=128 x 20 steps, N=256 x 20 steps"."""
  return ", ".join(f"N={n} x {s} steps" for n, _, s in table)


def continue_plan(old: list[list[int]], new: list[list[int]], position: list[int],
                  status: dict[str, str]) -> tuple[list[int], int | None]:
  """Where a rerun with plan `new` continues a run trained to plan `old`.

  Lengths the run has finished must be unchanged, except that a finished run's last length may
  be extended (more steps); the length in progress may get any step count not below the steps
  it has done; lengths not started may change freely. The learning-rate schedule is always
  that of the new plan (its total steps), so an extension continues on the new plan's curve.

  Args:
    old, new: `plan_table`s of the checkpoint's plan and of this run's.
    position: the checkpoint's [length index, steps done in that length].
    status: the checkpoint's per-length status ("trained" / "DIVERGED"), keys str(N).

  Returns:
    (position to continue from, index of a finished length that is reopened, or None).

  Raises:
    ConfigError: one line naming what the new plan changes that cannot be continued.
  """
  index, done = position
  if old == new:
    return position, None
  # a run whose last periodic save fell on its last step resumes at [last, steps]: finished too
  finished = index >= len(old) or (index == len(old) - 1 and done >= old[index][2])
  refuse = (f"this run directory holds a run planned as {format_plan(old)}, "
            + ("finished; " if finished else f"at step {done} of N={old[index][0]}; "))
  last = len(old) - 1
  if finished:  # lengths may be appended, and the last one may get more steps
    ok = (len(new) > last and new[:last] == old[:last] and new[last][:2] == old[last][:2]
          and new[last][2] >= old[last][2])
    why = None if ok else "it changes lengths that are finished"
    if ok and new[last][2] > old[last][2]:
      n = str(old[last][0])
      if status.get(n) == "DIVERGED":
        raise ConfigError(refuse + f"N={n} DIVERGED, so it cannot be extended; use another save_dir")
      if index > last:  # past the end: reopen the last length at its end
        return [last, old[last][2]], last
  elif new[:index] != old[:index] or len(new) <= index:
    why = ("it changes lengths that are finished" if new[:index] != old[:index]
           else f"it drops the length in progress (N={old[index][0]})")
  elif new[index][:2] != old[index][:2]:
    why = f"it changes the length in progress (N={old[index][0]}, batch {old[index][1]})"
  elif new[index][2] < done:
    why = f"N={old[index][0]} has done {done} steps, more than the new plan's {new[index][2]}"
  else:
    why = None
  if why:
    raise ConfigError(refuse + f"the new plan ({format_plan(new)}) cannot continue it: {why}; rerun "
                      f"with the original schedule (or more steps for the last length) or use "
                      f"another save_dir")
  return position, None
  # a run whose last periodic save fell on its last step resumes at [last, steps]: finished too
  finished = index >= len(old) or (index == len(old) - 1 and done >= old[index][2])
  refuse = (f"this run directory holds a run planned as {format_plan(old)}, "
            + ("finished; " if finished else f"at step {done} of N={old[index][0]}; "))
  if index >= len(old) and len(new) == len(old) and new[:-1] == old[:-1] and \
     new[-1][:2] == old[-1][:2] and new[-1][2] > old[-1][2]:
    n = str(old[-1][0])
    if status.get(n) == "DIVERGED":
      raise ConfigError(refuse + f"N={n} DIVERGED, so it cannot be extended; use another save_dir")
    return [index - 1, old[-1][2]], index - 1  # reopen the last length
  why = None
  if new[:min(index, len(new))] != old[:index] or len(new) < index:
    why = "it changes lengths that are finished"
  elif index < len(old) and index < len(new):
    if new[index][:2] != old[index][:2]:
      why = f"it changes the length in progress (N={old[index][0]}, batch {old[index][1]})"
    elif new[index][2] < done:
      why = f"N={old[index][0]} has done {done} steps, more than the new plan's {new[index][2]}"
  elif index < len(old):
    why = f"it drops the length in progress (N={old[index][0]})"
  if why:
    raise ConfigError(refuse + f"the new plan ({format_plan(new)}) cannot continue it: {why}; rerun "
                      f"with the original schedule (or more steps for the last length) or use "
                      f"another save_dir")
  return position, None

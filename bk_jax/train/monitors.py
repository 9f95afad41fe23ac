"""Training monitors as pure functions of (monitor state, step values): run inside the jitted step.

* Spike detector: a step is a spike iff its loss > spike_factor x the previous *finite* loss of
  the same length; never on the first step of a length (the state is reset per length).
* Gradient-norm statistics (count, mean, population std, min, max; Welford) over the steps whose
  update was applied, per length and per epoch.
* Divergence: a step is bad if its loss/gradient is non-finite or its loss > divergence_factor x
  the best loss of the length; `patience` bad steps in a row set the sticky `diverged` flag.
"""

from __future__ import annotations

import math

import jax.numpy as jnp
from flax import struct


@struct.dataclass
class RunningStats:
  """Welford accumulator of a scalar series."""

  count: jnp.ndarray
  mean: jnp.ndarray
  m2: jnp.ndarray
  min: jnp.ndarray
  max: jnp.ndarray

  @classmethod
  def zeros(cls) -> "RunningStats":
    f = jnp.float32
    return cls(jnp.int32(0), f(0.0), f(0.0), f(jnp.inf), f(-jnp.inf))

  def update(self, x, valid) -> "RunningStats":
    x = jnp.asarray(x, jnp.float32)
    c = self.count + 1
    d = x - self.mean
    mean = self.mean + d / c.astype(jnp.float32)
    m2 = self.m2 + d * (x - mean)
    sel = lambda new, old: jnp.where(valid, new, old)
    return RunningStats(sel(c, self.count), sel(mean, self.mean), sel(m2, self.m2),
                        sel(jnp.minimum(self.min, x), self.min), sel(jnp.maximum(self.max, x), self.max))

  def summary(self) -> dict:
    """Host-side dict (call on fetched numpy values): mean, std, min, max, count."""
    n = int(self.count)
    if n == 0:
      return {"mean": 0.0, "std": 0.0, "min": 0.0, "max": 0.0, "count": 0}
    return {"mean": float(self.mean), "std": math.sqrt(max(float(self.m2) / n, 0.0)),
            "min": float(self.min), "max": float(self.max), "count": n}


@struct.dataclass
class WindowStats:
  """Counters over a window of steps (one length or one epoch)."""

  grad_norm: RunningStats
  loss_sum: jnp.ndarray  # sum of finite LM losses
  loss_count: jnp.ndarray
  steps: jnp.ndarray
  spikes: jnp.ndarray
  skipped: jnp.ndarray  # non-finite updates that were not applied
  nan_steps: jnp.ndarray
  inf_steps: jnp.ndarray
  precision_upgrades: jnp.ndarray

  @classmethod
  def zeros(cls) -> "WindowStats":
    i = lambda: jnp.int32(0)
    return cls(RunningStats.zeros(), jnp.float32(0.0), i(), i(), i(), i(), i(), i(), i())

  def update(self, *, loss, finite, grad_norm, is_spike, is_nan, is_inf, upgrades) -> "WindowStats":
    i32 = lambda b: jnp.asarray(b, jnp.int32)
    return WindowStats(
        grad_norm=self.grad_norm.update(grad_norm, finite),
        loss_sum=self.loss_sum + jnp.where(finite, loss, 0.0),
        loss_count=self.loss_count + i32(finite),
        steps=self.steps + 1,
        spikes=self.spikes + i32(is_spike),
        skipped=self.skipped + i32(~finite),
        nan_steps=self.nan_steps + i32(is_nan),
        inf_steps=self.inf_steps + i32(is_inf),
        precision_upgrades=self.precision_upgrades + i32(upgrades),
    )

  def summary(self) -> dict:
    """Host-side summary (call on fetched values)."""
    n = int(self.loss_count)
    return {
        "avg_loss": float(self.loss_sum) / n if n else float("nan"),
        "steps": int(self.steps),
        "spike_count": int(self.spikes),
        "skipped_steps": int(self.skipped),
        "nan_steps": int(self.nan_steps),
        "inf_steps": int(self.inf_steps),
        "precision_upgrades": int(self.precision_upgrades),
        "grad_norm": self.grad_norm.summary(),
    }


@struct.dataclass
class MonitorState:
  prev_loss: jnp.ndarray  # last finite loss of this length, NaN before the first
  best_loss: jnp.ndarray
  bad_streak: jnp.ndarray
  diverged: jnp.ndarray
  length: WindowStats
  epoch: WindowStats

  @classmethod
  def zeros(cls) -> "MonitorState":
    return cls(jnp.float32(jnp.nan), jnp.float32(jnp.inf), jnp.int32(0), jnp.bool_(False),
               WindowStats.zeros(), WindowStats.zeros())


def update_monitors(mon: MonitorState, *, loss, grad_norm, upgrades=0, spike_factor: float,
                    divergence_factor: float, patience: int,
                    divergence_min_loss: float = 0.0) -> tuple[MonitorState, dict]:
  """One step of every monitor. Returns the new state and this step's flags.

  Args:
    loss: the step's LM loss (scalar). grad_norm: pre-clip global gradient norm.
    upgrades: precision upgrades reported by the model this step.
    spike_factor: a spike is a loss above spike_factor x the previous finite loss, when that
      loss is > 0 (after a loss of exactly 0, reached on tasks a model solves, a ratio has no
      meaning and would be infinite).
    divergence_factor, divergence_min_loss, patience: a step is bad when its loss or gradient is
      non-finite or its loss exceeds max(divergence_factor x best loss, divergence_min_loss);
      `patience` bad steps in a row set `diverged`.
  Returns:
    (state, flags) with flags: finite, is_nan, is_inf, is_spike, spike_ratio (loss / previous
    finite loss on a spike, else 0), bad (counts towards divergence).
  """
  loss = jnp.asarray(loss, jnp.float32)
  grad_norm = jnp.asarray(grad_norm, jnp.float32)
  is_nan = jnp.isnan(loss) | jnp.isnan(grad_norm)
  is_inf = (jnp.isinf(loss) | jnp.isinf(grad_norm)) & ~is_nan
  finite = ~(is_nan | is_inf)
  has_prev = jnp.isfinite(mon.prev_loss) & (mon.prev_loss > 0)
  is_spike = has_prev & finite & (loss > spike_factor * mon.prev_loss)
  spike_ratio = jnp.where(is_spike, loss / jnp.where(has_prev, mon.prev_loss, 1.0), 0.0)
  bad = ~finite | (loss > jnp.maximum(divergence_factor * mon.best_loss, divergence_min_loss))
  streak = jnp.where(bad, mon.bad_streak + 1, 0)
  kw = dict(loss=loss, finite=finite, grad_norm=grad_norm, is_spike=is_spike, is_nan=is_nan,
            is_inf=is_inf, upgrades=upgrades)
  new = MonitorState(
      prev_loss=jnp.where(finite, loss, mon.prev_loss),
      best_loss=jnp.where(finite, jnp.minimum(mon.best_loss, loss), mon.best_loss),
      bad_streak=streak,
      diverged=mon.diverged | (streak >= patience),
      length=mon.length.update(**kw),
      epoch=mon.epoch.update(**kw),
  )
  flags = dict(finite=finite, is_nan=is_nan, is_inf=is_inf, is_spike=is_spike,
               spike_ratio=spike_ratio, bad=bad)
  return new, flags

"""Pure monitor semantics against hand computations (no model, no compile of a train step)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bk_jax.train.monitors import MonitorState, RunningStats, update_monitors
from bk_jax.train.schedule import LengthPlan

KW = dict(spike_factor=2.0, divergence_factor=4.0, patience=3)


@jax.jit
def _step(mon, loss, gnorm):
  return update_monitors(mon, loss=loss, grad_norm=gnorm, **KW)


def _run(losses, gnorms=None):
  mon = MonitorState.zeros()
  gnorms = gnorms or [1.0] * len(losses)
  flags = []
  for l, g in zip(losses, gnorms):
    mon, f = _step(mon, jnp.float32(l), jnp.float32(g))
    flags.append(jax.device_get(f))
  return jax.device_get(mon), flags


def test_spike_detector_against_hand_computation():
  # 1st step: never a spike even though "prev" does not exist. 3.0 -> 6.5 is > 2x (spike),
  # 6.5 -> 13.0 is exactly 2x (not a spike), NaN is skipped, and the next loss is compared
  # with the previous *finite* loss (13.0): 27.0 > 26.0 -> spike with ratio 27/13.
  losses = [10.0, 3.0, 6.5, 13.0, float("nan"), 27.0, 1.0]
  mon, flags = _run(losses)
  spikes = [bool(f["is_spike"]) for f in flags]
  assert spikes == [False, False, True, False, False, True, False]
  assert flags[2]["spike_ratio"] == pytest.approx(6.5 / 3.0)
  assert flags[5]["spike_ratio"] == pytest.approx(27.0 / 13.0)
  assert flags[3]["spike_ratio"] == 0.0
  assert int(mon.length.spikes) == 2 and int(mon.epoch.spikes) == 2
  assert bool(flags[4]["is_nan"]) and not bool(flags[4]["finite"])
  assert int(mon.length.skipped) == 1 and int(mon.length.nan_steps) == 1
  assert float(mon.prev_loss) == 1.0


def test_first_step_of_a_length_is_never_a_spike():
  mon, _ = _run([1.0])
  mon = MonitorState.zeros()  # what the loop does at a new length
  mon, f = _step(mon, jnp.float32(100.0), jnp.float32(1.0))
  assert not bool(f["is_spike"]) and int(mon.length.spikes) == 0


def test_a_loss_after_a_loss_of_exactly_zero_is_not_a_spike():
  """A solved task reaches a float32 loss of exactly 0: the next positive loss is no spike and its
  ratio stays finite (0), so no infinite figure reaches the dashboard; later spikes still count."""
  mon, flags = _run([1.0, 0.0, 1e-7, 1e-7, 5e-7])
  assert [bool(f["is_spike"]) for f in flags] == [False, False, False, False, True]
  assert [float(f["spike_ratio"]) for f in flags[:4]] == [0.0] * 4
  assert flags[4]["spike_ratio"] == pytest.approx(5.0)
  assert int(mon.length.spikes) == 1


def test_gradient_statistics_match_numpy():
  rng = np.random.default_rng(0)
  g = rng.uniform(0.1, 5.0, size=37).astype(np.float32)
  g_with_bad = list(g[:10]) + [float("inf")] + list(g[10:])
  mon, _ = _run([1.0] * len(g_with_bad), g_with_bad)
  s = RunningStats.summary(mon.length.grad_norm)
  assert s["count"] == 37  # the non-finite step is excluded (and counted as skipped)
  assert s["mean"] == pytest.approx(float(np.mean(g)), rel=1e-5)
  assert s["std"] == pytest.approx(float(np.std(g)), rel=1e-4)  # population std, like np.std
  assert s["min"] == pytest.approx(float(g.min())) and s["max"] == pytest.approx(float(g.max()))
  assert int(mon.length.skipped) == 1 and int(mon.length.inf_steps) == 1


def test_divergence_needs_patience_consecutive_bad_steps():
  # best = 1.0; loss > 4.0 is bad; two bad, one good (streak resets), three bad -> diverged.
  mon, flags = _run([1.0, 5.0, 5.0, 2.0, 5.0, float("inf"), 5.0])
  streak = [bool(f["bad"]) for f in flags]
  assert streak == [False, True, True, False, True, True, True]
  assert bool(mon.diverged) and int(mon.bad_streak) == 3
  mon2, _ = _run([1.0, 5.0, 5.0, 2.0, 5.0, 5.0])
  assert not bool(mon2.diverged)


def test_a_solved_task_below_the_floor_never_diverges():
  """A loss of 1e-7 rising tenfold (noise on a solved task) stays below divergence_min_loss: no
  bad step; the same tenfold rise from 0.1 is divergence. A NaN is bad whatever the floor."""
  floor = dict(KW, divergence_min_loss=0.01)
  step = jax.jit(lambda mon, loss: update_monitors(mon, loss=loss, grad_norm=jnp.float32(1.0),
                                                   **floor))

  def run(losses):
    mon, bad = MonitorState.zeros(), []
    for loss in losses:
      mon, f = step(mon, jnp.float32(loss))
      bad.append(bool(f["bad"]))
    return mon, bad

  mon, bad = run([1e-7] + [1e-6] * 5)
  assert bad == [False] * 6 and not bool(mon.diverged)
  mon, bad = run([0.1] + [1.0] * 3)
  assert bad == [False, True, True, True] and bool(mon.diverged)
  _, bad = run([1e-7, float("nan")])
  assert bad == [False, True]


def test_the_default_floor_lets_a_learnt_task_move_and_catches_a_relapse():
  """With configs/base.py's divergence settings: an induction run's loss after it is learnt
  (best 0.014, then 0.05-0.15 for longer than the patience) is never bad; a relapse to the
  chance loss (log 16) is divergence once it lasts the patience."""
  from configs.base import get_config

  t = get_config().train
  kw = dict(spike_factor=float(t.spike_factor), divergence_factor=float(t.divergence_factor),
            patience=int(t.divergence_patience), divergence_min_loss=float(t.divergence_min_loss))
  step = jax.jit(lambda mon, loss: update_monitors(mon, loss=loss, grad_norm=jnp.float32(1.0), **kw))
  wobble = [0.05, 0.15, 0.09, 0.14, 0.08] * (2 * int(t.divergence_patience))
  mon = MonitorState.zeros()
  for loss in [2.77, 1.0, 0.014] + wobble:
    mon, f = step(mon, jnp.float32(loss))
    assert not bool(f["bad"]), loss
  for _ in range(int(t.divergence_patience)):
    mon, f = step(mon, jnp.float32(math.log(16)))
    assert bool(f["bad"])
  assert bool(mon.diverged)


def test_epoch_average_ignores_non_finite_losses():
  mon, _ = _run([4.0, float("nan"), 2.0])
  s = mon.epoch.summary()
  assert s["avg_loss"] == pytest.approx(3.0) and s["steps"] == 3 and s["skipped_steps"] == 1


def test_length_plan_epochs():
  p = LengthPlan(0, 64, 4, steps_per_epoch=5, epochs=3, steps=12)  # 5 + 5 + 2 (partial)
  ends = [s for s in range(12) if p.epoch_end(s)]
  assert ends == [4, 9, 11]
  assert [p.epoch_of(s) for s in (0, 4, 5, 11)] == [1, 1, 2, 3]


def test_learning_rate_schedule_warmup_then_cosine():
  import ml_collections
  from bk_jax.train.schedule import learning_rate_schedule

  t = ml_collections.ConfigDict(dict(lr=1.0, min_lr_ratio=0.1, warmup_steps=4))
  f = learning_rate_schedule(t, 14)
  lrs = [float(f(s)) for s in range(14)]
  assert lrs[0] == pytest.approx(0.25) and lrs[3] == pytest.approx(1.0)  # first update non-zero
  assert lrs[-1] == pytest.approx(0.1, abs=1e-6)
  assert all(a >= b for a, b in zip(lrs[3:], lrs[4:]))
  mid = 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 5 / 10))
  assert lrs[8] == pytest.approx(mid, rel=1e-5)


def test_perplexity_is_exp_loss_without_a_cap():
  from bk_jax.runtime.metrics import perplexity

  assert perplexity(0.0) == 1.0
  assert perplexity(25.0) == pytest.approx(7.200489e10, rel=1e-6)  # no silent cap at e^20
  assert perplexity(1000.0) == float("inf")
  assert perplexity(float("nan")) != perplexity(float("nan"))

"""The record of divergence recoveries: every attempt's history is kept, and the per-length counts
(steps, NaN/Inf steps, skipped updates, spikes, gradient-norm statistics) cover all attempts.

A recovery restores an earlier checkpoint, whose run state and monitors know nothing of the steps
that followed it. Before the restore the trainer takes `history(run)`; after it, `keep(...)` puts
the full metrics history and epoch results back (each entry carries `attempt`: 0 for the first
try, k after the k-th recovery) and adds the abandoned segment (monitors at detection minus the
restored monitors) to `run.abandoned[N]`. `combine` adds that to the final attempt's counts.
"""

from __future__ import annotations

import copy
import math

_COUNTS = ("steps", "spike_count", "skipped_steps", "nan_steps", "inf_steps", "precision_upgrades")


def history(run) -> dict:
  """Deep copy of what a restore would lose: metrics history, epoch results, abandoned counts.

  Args:
    run: the trainer's `run_state.RunState`.
  """
  return copy.deepcopy({k: getattr(run, k) for k in ("metrics_history", "results_by_length", "abandoned")})


def _grad_moments(g: dict | None) -> tuple[int, float, float]:
  if not g or not g.get("count"):
    return 0, 0.0, 0.0
  n = int(g["count"])
  return n, float(g["mean"]), float(g["std"]) ** 2 * n  # (count, mean, M2)


def _grad_summary(n: int, mean: float, m2: float, lo: float, hi: float) -> dict:
  if n <= 0:
    return {"mean": 0.0, "std": 0.0, "min": 0.0, "max": 0.0, "count": 0}
  return {"mean": mean, "std": math.sqrt(max(m2 / n, 0.0)), "min": lo, "max": hi, "count": n}


def segment(at_detection: dict, restored: dict) -> dict:
  """Counts of the steps between a restored checkpoint and the divergence (length summaries).

  Gradient-norm moments are exact (Chan et al. parallel-variance formula run backwards); min and
  max are those of the whole attempt (the segment's own are not recoverable).
  """
  out = {k: int(at_detection.get(k, 0)) - int(restored.get(k, 0)) for k in _COUNTS}
  n1, m1, q1 = _grad_moments(at_detection.get("grad_norm"))
  n0, m0, q0 = _grad_moments(restored.get("grad_norm"))
  n = n1 - n0
  if n > 0:
    mean = (n1 * m1 - n0 * m0) / n
    m2 = q1 - q0 - (mean - m0) ** 2 * n0 * n / n1
    g = at_detection["grad_norm"]
    out["grad_norm"] = _grad_summary(n, mean, m2, float(g["min"]), float(g["max"]))
  else:
    out["grad_norm"] = _grad_summary(0, 0.0, 0.0, 0.0, 0.0)
  return out


def combine(a: dict, b: dict | None) -> dict:
  """Length summary `a` plus the counts `b` (None: `a` unchanged); grad-norm moments merged."""
  if not b:
    return a
  out = dict(a)
  for k in _COUNTS:
    out[k] = int(a.get(k, 0)) + int(b.get(k, 0))
  na, ma, qa = _grad_moments(a.get("grad_norm"))
  nb, mb, qb = _grad_moments(b.get("grad_norm"))
  n = na + nb
  if n == 0:
    out["grad_norm"] = _grad_summary(0, 0.0, 0.0, 0.0, 0.0)
  else:
    mean = (na * ma + nb * mb) / n
    m2 = qa + qb + (mb - ma) ** 2 * na * nb / n
    gs = [g for g in (a.get("grad_norm"), b.get("grad_norm")) if g and g.get("count")]
    out["grad_norm"] = _grad_summary(n, mean, m2, min(g["min"] for g in gs), max(g["max"] for g in gs))
  return out


def keep(run, kept: dict, key: str, at_detection: dict, restored: dict) -> None:
  """After a recovery's restore: puts back the kept history and adds the abandoned segment.

  Args:
    run: the trainer's `run_state.RunState`, as restored from the checkpoint (modified in place).
    kept: `history(run)` taken before the restore.
    key: the length, str(N).
    at_detection, restored: the length's monitor summaries before and after the restore.
  """
  run.metrics_history = kept["metrics_history"] or []
  run.results_by_length = kept["results_by_length"] or {}
  abandoned = dict(kept["abandoned"] or {})
  abandoned[key] = combine(segment(at_detection, restored), abandoned.get(key))
  run.abandoned = abandoned

"""Statistics across seeds: Welch's t-test, Mann-Whitney U, summaries (p-values via scipy)."""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np


def summary(x: Sequence[float]) -> dict:
  """n, mean, sample std (ddof=1), min, median, max of the finite values (non-finite counted)."""
  a = np.asarray(x, dtype=np.float64)
  f = a[np.isfinite(a)]
  out = dict(n=int(f.size), nonfinite=int(a.size - f.size))
  if f.size:
    out.update(mean=float(f.mean()), std=float(f.std(ddof=1)) if f.size > 1 else 0.0,
               min=float(f.min()), median=float(np.median(f)), max=float(f.max()))
  return out


def welch_t(a: Sequence[float], b: Sequence[float]) -> dict:
  """Welch's unequal-variance t-test, two-sided; t, Welch-Satterthwaite df and p.

  Computed from the formulas (so the test can check it against scipy.stats.ttest_ind with
  equal_var=False); the p-value uses scipy's Student-t survival function. With fewer than two
  values per side or zero variance on both sides the test is undefined: p is NaN.
  """
  from scipy import stats as st

  a = np.asarray(a, np.float64)
  b = np.asarray(b, np.float64)
  na, nb = a.size, b.size
  if na < 2 or nb < 2:
    return dict(t=math.nan, df=math.nan, p=math.nan, n_a=int(na), n_b=int(nb))
  va, vb = a.var(ddof=1) / na, b.var(ddof=1) / nb
  se2 = va + vb
  if se2 == 0:
    return dict(t=math.nan, df=math.nan, p=math.nan, n_a=int(na), n_b=int(nb))
  t = (a.mean() - b.mean()) / math.sqrt(se2)
  df = se2 ** 2 / (va ** 2 / (na - 1) + vb ** 2 / (nb - 1))
  p = 2.0 * st.t.sf(abs(t), df)
  return dict(t=float(t), df=float(df), p=float(p), n_a=int(na), n_b=int(nb))


def mann_whitney(a: Sequence[float], b: Sequence[float]) -> dict:
  """Two-sided Mann-Whitney U (U of sample a; scipy's exact p for small samples without ties)."""
  from scipy import stats as st

  a = np.asarray(a, np.float64)
  b = np.asarray(b, np.float64)
  if a.size < 1 or b.size < 1:
    return dict(u=math.nan, p=math.nan)
  r = st.mannwhitneyu(a, b, alternative="two-sided", method="auto")
  return dict(u=float(r.statistic), p=float(r.pvalue))


def rank_u(a: Sequence[float], b: Sequence[float]) -> float:
  """U of sample a from mid-ranks (independent of scipy; equals mannwhitneyu's statistic)."""
  from scipy.stats import rankdata

  a = np.asarray(a, np.float64)
  ranks = rankdata(np.concatenate([a, np.asarray(b, np.float64)]))
  return float(ranks[:a.size].sum() - a.size * (a.size + 1) / 2)


def compare(name: str, a: Sequence[float], b: Sequence[float], *, label_a: str = "a",
            label_b: str = "b", lower_is_better: bool = True) -> dict:
  """A claim about metric `name`: summaries of both groups, Welch t and Mann-Whitney U."""
  sa, sb = summary(a), summary(b)
  w, m = welch_t(a, b), mann_whitney(a, b)
  better = None
  if sa["n"] and sb["n"]:
    better = label_a if (sa["mean"] < sb["mean"]) == lower_is_better else label_b
  return dict(metric=name, a=label_a, b=label_b, summary_a=sa, summary_b=sb, welch=w,
              mann_whitney=m, better_mean=better, lower_is_better=lower_is_better)


def format_claim(c: dict) -> str:
  sa, sb = c["summary_a"], c["summary_b"]
  def ms(s):
    return f"{s['mean']:.4g} ± {s['std']:.2g} (n={s['n']})" if s["n"] else "n/a"
  p1, p2 = c["welch"]["p"], c["mann_whitney"]["p"]
  return (f"{c['metric']}: {c['a']} {ms(sa)} vs {c['b']} {ms(sb)}; better mean: {c['better_mean']}; "
          f"Welch t={c['welch']['t']:.3g} p={p1:.3g}; Mann-Whitney U={c['mann_whitney']['u']:.3g} "
          f"p={p2:.3g}" + ("" if (p1 == p1 and p1 < 0.05) else " (not significant at 0.05)"))

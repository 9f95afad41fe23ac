"""bk_jax.reports.stats against scipy and hand-computed values on known samples."""

import math

import numpy as np
import pytest
from scipy import stats as st

from bk_jax.reports import stats

A = [20.4, 24.2, 15.4, 21.4, 20.2, 18.5, 21.5]
B = [20.2, 16.9, 18.5, 17.3, 20.5]


def test_welch_matches_scipy():
  r = stats.welch_t(A, B)
  ref = st.ttest_ind(A, B, equal_var=False)
  assert r["t"] == pytest.approx(ref.statistic, rel=1e-12)
  assert r["p"] == pytest.approx(ref.pvalue, rel=1e-10)
  # Welch-Satterthwaite df by hand
  va, vb = np.var(A, ddof=1) / len(A), np.var(B, ddof=1) / len(B)
  df = (va + vb) ** 2 / (va ** 2 / (len(A) - 1) + vb ** 2 / (len(B) - 1))
  assert r["df"] == pytest.approx(df, rel=1e-12)


def test_welch_random_samples_match_scipy():
  rng = np.random.default_rng(0)
  for _ in range(20):
    a, b = rng.normal(0, 1, rng.integers(2, 12)), rng.normal(0.5, 3, rng.integers(2, 12))
    r, ref = stats.welch_t(a, b), st.ttest_ind(a, b, equal_var=False)
    assert r["t"] == pytest.approx(ref.statistic, rel=1e-10)
    assert r["p"] == pytest.approx(ref.pvalue, rel=1e-8, abs=1e-15)


def test_welch_degenerate_is_nan():
  assert math.isnan(stats.welch_t([1.0], [2.0, 3.0])["p"])
  assert math.isnan(stats.welch_t([1.0, 1.0], [1.0, 1.0])["p"])


def test_mann_whitney_matches_scipy_and_ranks():
  r = stats.mann_whitney(A, B)
  ref = st.mannwhitneyu(A, B, alternative="two-sided")
  assert r["u"] == ref.statistic and r["p"] == pytest.approx(ref.pvalue)
  assert stats.rank_u(A, B) == pytest.approx(ref.statistic)
  # complete separation, 3 vs 3: U = 9 (or 0), exact two-sided p = 2/20
  r = stats.mann_whitney([4.0, 5.0, 6.0], [1.0, 2.0, 3.0])
  assert r["u"] == 9.0 and r["p"] == pytest.approx(0.1)


def test_summary_and_compare():
  s = stats.summary([1.0, 2.0, 3.0, float("nan")])
  assert s["n"] == 3 and s["nonfinite"] == 1 and s["mean"] == 2.0 and s["std"] == 1.0
  c = stats.compare("loss", [1.0, 1.1, 0.9], [2.0, 2.2, 1.8], label_a="x", label_b="y")
  assert c["better_mean"] == "x" and c["welch"]["p"] < 0.01
  assert "Welch" in stats.format_claim(c)

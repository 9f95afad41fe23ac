"""Birman-Schwinger monitors against dense matrices built from a finite-lattice inverse."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import dense_reference as ref
from bk_jax.ops import birman_schwinger as bs
from bk_jax.ops import resolvent


def problem(rng, batch, n, heads):
  v = rng.normal(scale=2.0, size=batch + (n, heads))
  t = rng.uniform(0.5, 1.5, heads)
  z = rng.uniform(-3.5, -0.5, heads) + 1j * rng.uniform(0.1, 1.0, heads)
  return v, t, z


@pytest.mark.parametrize("n", [1, 2, 3, 40])
def test_schatten_norms_match_dense(n):
  rng = np.random.default_rng(n)
  v, t, z = problem(rng, (2,), n, 3)
  with jax.enable_x64(True):
    s2 = np.asarray(bs.schatten_s2(jnp.asarray(v), hopping=t, z=z))
    s1 = np.asarray(bs.schatten_s1_window(jnp.asarray(v), hopping=t, z=z, window=n))
  for b in range(2):
    for h in range(3):
      k = ref.birman_schwinger(v[b, :, h], t[h], z[h])
      np.testing.assert_allclose(s2[b, h], np.linalg.norm(k, "fro"), rtol=1e-10)
      np.testing.assert_allclose(s1[b, h], np.linalg.svd(k, compute_uv=False).sum(), rtol=1e-10)


def test_s1_window_uses_most_recent_positions():
  rng = np.random.default_rng(5)
  v, t, z = problem(rng, (), 50, 2)
  with jax.enable_x64(True):
    got = bs.schatten_s1_window(jnp.asarray(v), hopping=t, z=z, window=16)
    want = bs.schatten_s1_window(jnp.asarray(v[-16:]), hopping=t, z=z, window=16)
  np.testing.assert_allclose(got, want, rtol=1e-12)
  with pytest.raises(ValueError, match="window"):
    bs.schatten_s1_window(jnp.asarray(v), hopping=t, z=z, window=0)


def test_schatten_s2_float32_long_sequence_is_finite_and_accurate():
  rng = np.random.default_rng(6)
  v, t, z = problem(rng, (), 131072, 2)
  got = np.asarray(bs.schatten_s2(jnp.asarray(v, jnp.float32), hopping=t, z=z.astype(np.complex64)))
  with jax.enable_x64(True):
    want = np.asarray(bs.schatten_s2(jnp.asarray(v), hopping=t, z=z))
  assert np.all(np.isfinite(got))
  np.testing.assert_allclose(got, want, rtol=1e-4)


def test_condition_bound_dominates_true_condition_number():
  rng = np.random.default_rng(7)
  for n in [1, 2, 5, 30]:
    v, t, z = problem(rng, (), n, 3)
    v[rng.integers(0, n)] *= 50  # an outlier potential
    with jax.enable_x64(True):
      bound = np.asarray(bs.condition_bound(jnp.asarray(v), hopping=t, z=z))
    for h in range(3):
      mat = ref.tridiagonal(v[:, h], t[h]) - z[h] * np.eye(n)
      assert bound[h] >= np.linalg.cond(mat) * (1 - 1e-12)


def test_precision_upgrade_rule():
  rng = np.random.default_rng(8)
  v, t, z = problem(rng, (2,), 64, 3)
  v32 = jnp.asarray(v, jnp.float32)
  z64 = z.astype(np.complex64)
  bound = float(jnp.max(bs.condition_bound(v32, hopping=t, z=z64)))
  plain, _ = jax.jit(lambda v_: resolvent.causal_diag(v_, hopping=t, z=z64))(v32)
  # Without x64 the decision is reported but nothing is recomputed.
  g, _, info = bs.causal_diag_with_upgrade(v32, hopping=t, z=z64, threshold=bound / 2)
  assert bool(info["flagged"]) and not bool(info["upgraded"])
  np.testing.assert_array_equal(g, plain)
  with jax.enable_x64(True):
    exact = np.asarray(resolvent.causal_diag(jnp.asarray(v), hopping=t, z=z)[0])
    g_hi, _, info = jax.jit(lambda v_: bs.causal_diag_with_upgrade(v_, hopping=t, z=z64, threshold=bound / 2))(v32)
    assert bool(info["upgraded"]) and g_hi.dtype == jnp.complex64
    g_lo, _, info_lo = jax.jit(lambda v_: bs.causal_diag_with_upgrade(v_, hopping=t, z=z64, threshold=bound * 2))(v32)
    assert not bool(info_lo["flagged"]) and not bool(info_lo["upgraded"])
  # The upgraded path is at least as accurate as the float32 one (inputs rounded identically).
  err_hi = np.max(np.abs(np.asarray(g_hi) - exact))
  err_lo = np.max(np.abs(np.asarray(g_lo) - exact))
  assert err_hi <= err_lo

"""Per-position coupling t_i and shift z_i in resolvent.causal_diag (DESIGN §2.9).

References are dense float64 inverses of Jacobi matrices with varying off-diagonals.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import dense_reference as ref
from bk_jax.ops import resolvent

METHODS = resolvent.METHODS


def selective_problem(rng, batch, n, heads, t_pos=True, z_pos=True):
  """v (*batch, N, H); t and z per position (*batch, N, H) or per head (H,)."""
  v = rng.normal(scale=1.5, size=batch + (n, heads))
  t_shape = batch + (n, heads) if t_pos else (heads,)
  z_shape = batch + (n, heads) if z_pos else (heads,)
  t = rng.uniform(0.05, 2.5, t_shape)
  z = rng.uniform(-4.0, 0.5, z_shape) + 1j * rng.uniform(0.05, 1.5, z_shape)
  return v, t, z


def rel_err(a, b):
  return np.max(np.abs(np.asarray(a) - b) / np.abs(b))


KINDS = [(True, True), (True, False), (False, True)]


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("t_pos,z_pos", KINDS)
@pytest.mark.parametrize("batch,n,heads", [((), 1, 2), ((), 7, 3), ((2,), 17, 2)])
def test_matches_dense_jacobi_float64(method, t_pos, z_pos, batch, n, heads):
  rng = np.random.default_rng(abs(hash((method, t_pos, z_pos, batch, n))) % 2**32)
  v, t, z = selective_problem(rng, batch, n, heads, t_pos, z_pos)
  with jax.enable_x64(True):
    g, carry = resolvent.causal_diag(jnp.asarray(v), hopping=t, z=z, method=method, chunk_size=4)
  expected = ref.causal_diag_jacobi(v, t, z)
  assert rel_err(g, expected) <= 1e-12
  np.testing.assert_array_equal(np.asarray(carry), np.asarray(g)[..., -1, :])


@pytest.mark.parametrize("method", METHODS)
def test_matches_dense_float32_and_broadcast_batch(method):
  """Per-position parameters (N, H) broadcast over v's batch dims (B, N, H)."""
  rng = np.random.default_rng(11)
  v, t, z = selective_problem(rng, (), 12, 3)
  v = np.stack([v, v[::-1]])  # (2, 12, 3)
  g, _ = resolvent.causal_diag(jnp.asarray(v, jnp.float32), hopping=t.astype(np.float32),
                               z=z.astype(np.complex64), method=method, chunk_size=5)
  assert g.dtype == jnp.complex64
  expected = ref.causal_diag_jacobi(v.astype(np.float32), t.astype(np.float32),
                                    z.astype(np.complex64))
  assert rel_err(g, expected) <= 2e-5


@pytest.mark.slow
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("t_pos,z_pos", KINDS)
def test_gradients_match_finite_differences(method, t_pos, z_pos):
  """d/dv, d/dt_i, d/dz_i (per position or per head) and d/dcarry against central FD."""
  rng = np.random.default_rng(12)
  v, t, z = selective_problem(rng, (2,), 9, 2, t_pos, z_pos)
  c0 = rng.normal(size=(2, 2)) * 0.3 + 0.4j
  w = rng.normal(size=(9, 2)) + 1j * rng.normal(size=(9, 2))
  with jax.enable_x64(True):

    def loss(v_, t_, z_, c_, method=method):
      g, last = resolvent.causal_diag(v_, hopping=t_, z=z_, carry=c_, method=method, chunk_size=4)
      return jnp.sum(jnp.real(jnp.asarray(w) * g)) + jnp.sum(jnp.imag(g) ** 2) + jnp.sum(jnp.real(last))

    args = [jnp.asarray(a) for a in (v, t, z, c0)]
    grads = jax.jit(jax.grad(loss, argnums=(0, 1, 2, 3)))(*args)
    if method != "chunked":  # the exact custom VJP equals plain autodiff of the chunked scan
      autodiff = jax.jit(jax.grad(functools.partial(loss, method="chunked"), argnums=(0, 1, 2, 3)))(*args)
      for a, b in zip(grads, autodiff):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)
    loss = jax.jit(loss)
    eps = 1e-5  # central differences: truncation ~eps^2, rounding ~1e-16/eps

    def fd(k, e):
      plus = list(args)
      minus = list(args)
      plus[k] = args[k] + eps * e
      minus[k] = args[k] - eps * e
      return (loss(*plus) - loss(*minus)) / (2 * eps)

    for k, arr in enumerate((v, t, z, c0)):
      grad = np.asarray(grads[k])
      assert grad.shape == np.shape(arr)
      flat = list(np.ndindex(*np.shape(arr)))
      for idx in [flat[0], flat[len(flat) // 2], flat[-1], flat[len(flat) // 3]]:
        e = np.zeros(np.shape(arr))
        e[idx] = 1.0
        if np.iscomplexobj(arr):
          # JAX's gradient of a real loss w.r.t. complex z is dL/dRe z - i dL/dIm z.
          expected = fd(k, e) - 1j * fd(k, 1j * e)
        else:
          expected = fd(k, e)
        np.testing.assert_allclose(grad[idx], expected, rtol=1e-6, atol=1e-9, err_msg=str((k, idx)))


@pytest.mark.parametrize("method", METHODS)
def test_first_bond_ignored_without_carry(method):
  """Without a carry, t_0 is irrelevant: g does not move and its gradient is exactly 0."""
  rng = np.random.default_rng(13)
  v, t, z = selective_problem(rng, (2,), 11, 3)
  with jax.enable_x64(True):
    f = jax.jit(lambda t_: resolvent.causal_diag(jnp.asarray(v), hopping=t_, z=z, method=method,
                                                 chunk_size=4)[0])
    t2 = t.copy()
    t2[:, 0] *= 7.0
    np.testing.assert_allclose(f(jnp.asarray(t2)), f(jnp.asarray(t)), rtol=1e-14, atol=0)
    gt = jax.jit(jax.grad(lambda t_: jnp.sum(jnp.abs(f(t_)) ** 2)))(jnp.asarray(t))
    assert np.all(np.asarray(gt)[:, 0] == 0.0)
    assert np.all(np.asarray(gt)[:, 1:] != 0.0)


@pytest.mark.parametrize("method", METHODS)
def test_causality_bit_identical(method):
  """Perturbing v_j, t_j or z_j leaves g_{<j} bit-identical and moves g_j."""
  rng = np.random.default_rng(14)
  v, t, z = selective_problem(rng, (2,), 200, 3)
  v, t, z = jnp.asarray(v, jnp.float32), jnp.asarray(t, jnp.float32), jnp.asarray(z, jnp.complex64)
  f = jax.jit(lambda v_, t_, z_: resolvent.causal_diag(
      v_, hopping=t_, z=z_, method=method, chunk_size=32)[0])
  base = np.asarray(f(v, t, z))
  for j in [1, 31, 32, 150, 199]:
    for args in [(v.at[:, j].add(3.0), t, z), (v, t.at[:, j].mul(1.7), z),
                 (v, t, z.at[:, j].add(0.5 + 0.3j))]:
      g = np.asarray(f(*args))
      np.testing.assert_array_equal(g[:, :j], base[:, :j])
      assert np.all(g[:, j] != base[:, j])


@pytest.mark.slow
@pytest.mark.parametrize("method", METHODS)
def test_carry_chaining_values_and_gradients(method):
  """Chunks chained through the carry (t_0 of a chunk = bond to the previous chunk) == one call."""
  rng = np.random.default_rng(15)
  n = 60
  v, t, z = selective_problem(rng, (2,), n, 3)
  cuts = [1, 2, 23, 41]
  with jax.enable_x64(True):
    args = tuple(jnp.asarray(a) for a in (v, t, z))

    def one(v_, t_, z_):
      g, last = resolvent.causal_diag(v_, hopping=t_, z=z_, method=method, chunk_size=8)
      return g, last

    def chained(v_, t_, z_):
      pieces, carry = [], None
      for lo, hi in zip([0] + cuts, cuts + [n]):
        g, carry = resolvent.causal_diag(v_[:, lo:hi], hopping=t_[:, lo:hi], z=z_[:, lo:hi],
                                         carry=carry, method=method, chunk_size=8)
        pieces.append(g)
      return jnp.concatenate(pieces, axis=1), carry

    g1, c1 = jax.jit(one)(*args)
    g2, c2 = jax.jit(chained)(*args)
    np.testing.assert_allclose(g2, g1, rtol=1e-12, atol=0)
    np.testing.assert_allclose(c2, c1, rtol=1e-12, atol=0)
    w = jnp.asarray(rng.normal(size=(n, 3)) + 1j * rng.normal(size=(n, 3)))

    def scalar(f):
      return lambda *a: jnp.sum(jnp.real(w * f(*a)[0])) + jnp.sum(jnp.imag(f(*a)[1]))

    gr1 = jax.jit(jax.grad(scalar(one), argnums=(0, 1, 2)))(*args)
    gr2 = jax.jit(jax.grad(scalar(chained), argnums=(0, 1, 2)))(*args)
    for a, b in zip(gr2, gr1):
      np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("method", METHODS)
def test_bounds_at_extreme_inputs(method):
  """|g_i| <= 1/min_{j<=i} Im z_j and Im g > 0 for |v| up to 1e6, t_i from 1e-6 to 1e3."""
  rng = np.random.default_rng(16)
  n, heads = 16384, 3
  scale = np.array([1e-3, 1e3, 1e6])
  v = rng.normal(size=(n, heads)) * scale
  v[n // 2 :: 7] = 1e6
  t = 10.0 ** rng.uniform(-6, 3, (n, heads))
  t[::13, 1] = 1e3
  t[::17, 2] = 1e-6
  eta = 10.0 ** rng.uniform(-3, 0.5, (n, heads))
  z = rng.uniform(-4.5, 0.5, (n, heads)) + 1j * eta
  diag = jax.jit(functools.partial(resolvent.causal_diag, method=method))  # not eager: faster
  g, _ = diag(jnp.asarray(v, jnp.float32), hopping=jnp.asarray(t, jnp.float32),
              z=jnp.asarray(z, jnp.complex64))
  g = np.asarray(g)
  assert np.all(np.isfinite(g))
  eta_min = np.minimum.accumulate(eta.astype(np.float32).astype(np.float64), axis=0)
  assert np.all(np.abs(g) * eta_min <= 1.0 + 1e-5)  # only float32 rounding of the last division
  assert np.all(g.imag > 0)


def test_methods_agree_per_position():
  rng = np.random.default_rng(17)
  v, t, z = selective_problem(rng, (2,), 4096, 3)
  with jax.enable_x64(True):
    exact = np.asarray(jax.jit(functools.partial(resolvent.causal_diag, hopping=t, z=z,
                                                 method="scan"))(jnp.asarray(v))[0])
  for method in METHODS:  # jit: eager dispatch of the scans is slower
    g, _ = jax.jit(functools.partial(resolvent.causal_diag, hopping=t.astype(np.float32),
                                     z=z.astype(np.complex64), method=method))(
                                         jnp.asarray(v, jnp.float32))
    assert rel_err(g, exact) <= 1e-5, method


def test_bad_parameter_shapes_raise():
  v = jnp.zeros((2, 5, 3))
  with pytest.raises(ValueError, match="hopping per head must have shape"):
    resolvent.causal_diag(v, hopping=jnp.ones(4), z=jnp.full(3, 1j))
  with pytest.raises(ValueError, match="z per position must broadcast"):
    resolvent.causal_diag(v, hopping=jnp.ones(3), z=jnp.full((4, 3), 1j))
  with pytest.raises(ValueError, match="per-head"):
    resolvent.full_diag(v, hopping=jnp.ones((5, 3)), z=jnp.full(3, 1j))

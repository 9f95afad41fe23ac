"""bk_jax.ops.resolvent.causal_green (the Green's-function mixer, DESIGN §2.10).

References are dense float64 inverses of (per-position) Jacobi prefix matrices.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import dense_reference as ref
from bk_jax.ops import resolvent

METHODS = resolvent.METHODS


def problem(rng, batch, n, heads, d, t_pos=True, z_pos=True, complex_x=False):
  v = rng.normal(scale=1.5, size=batch + (n, heads))
  t_shape = batch + (n, heads) if t_pos else (heads,)
  z_shape = batch + (n, heads) if z_pos else (heads,)
  t = rng.uniform(0.05, 2.5, t_shape)
  z = rng.uniform(-4.0, 0.5, z_shape) + 1j * rng.uniform(0.05, 1.5, z_shape)
  x = rng.normal(size=batch + (n, heads, d))
  if complex_x:
    x = x + 1j * rng.normal(size=x.shape)
  return v, x, t, z


KINDS = [(False, False), (True, True), (True, False), (False, True)]


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("t_pos,z_pos", KINDS)
def test_every_row_entry_matches_dense(method, t_pos, z_pos):
  """One-hot values x_j = e_j give y_i[j] = [(H_{0..i} - z)^{-1}]_{ij}: the whole last row."""
  rng = np.random.default_rng(abs(hash((method, t_pos, z_pos))) % 2**32)
  n, heads = 13, 2
  v, _, t, z = problem(rng, (2,), n, heads, 1, t_pos, z_pos)
  x = np.broadcast_to(np.eye(n)[None, :, None, :], (2, n, heads, n))
  with jax.enable_x64(True):
    kw = dict(hopping=t, z=z, method=method, chunk_size=4)  # jit: eager dispatch is slower
    y, carry = jax.jit(functools.partial(resolvent.causal_green, **kw))(jnp.asarray(v),
                                                                         jnp.asarray(x))
    g, _ = jax.jit(functools.partial(resolvent.causal_diag, **kw))(jnp.asarray(v))
  assert y.dtype == jnp.complex128 and y.shape == (2, n, heads, n)
  rows = np.moveaxis(ref.prefix_rows(v, t, z), -1, -2)  # (2, i, h, j)
  np.testing.assert_allclose(y, rows, rtol=1e-11, atol=1e-15)
  np.testing.assert_array_equal(np.asarray(y)[..., np.triu_indices(n, 1)[0], :, np.triu_indices(n, 1)[1]], 0)
  np.testing.assert_array_equal(carry.y, np.asarray(y)[:, -1])
  np.testing.assert_array_equal(carry.g, np.asarray(g)[:, -1])


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("complex_x", [False, True])
@pytest.mark.parametrize("batch,n", [((), 1), ((), 9), ((2, 2), 17)])
def test_random_values_match_dense(method, complex_x, batch, n):
  rng = np.random.default_rng(n + 3 * complex_x)
  v, x, t, z = problem(rng, batch, n, 3, 4, True, True, complex_x)
  with jax.enable_x64(True):
    y, _ = jax.jit(functools.partial(resolvent.causal_green, hopping=t, z=z, method=method,
                                     chunk_size=4))(jnp.asarray(v), jnp.asarray(x))
  np.testing.assert_allclose(y, ref.causal_green(v, t, z, x), rtol=1e-11, atol=1e-13)


@pytest.mark.parametrize("method", METHODS)
def test_float32_matches_dense(method):
  rng = np.random.default_rng(21)
  v, x, t, z = problem(rng, (2,), 24, 3, 5, True, False)
  v, x, t, z = v.astype(np.float32), x.astype(np.float32), t.astype(np.float32), z.astype(np.complex64)
  y, carry = jax.jit(functools.partial(resolvent.causal_green, hopping=t, z=z, method=method,
                                       chunk_size=5))(jnp.asarray(v), jnp.asarray(x))
  assert y.dtype == jnp.complex64 and carry.g.dtype == jnp.complex64
  expected = ref.causal_green(v, t, z, x)
  assert np.max(np.abs(np.asarray(y) - expected)) <= 2e-5 * np.max(np.abs(expected))


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("t_pos,z_pos", [(True, True), (False, False)])
def test_gradients_match_finite_differences(method, t_pos, z_pos):
  """d/dv, d/dx, d/dt, d/dz, d/dg_carry, d/dy_carry against central differences."""
  rng = np.random.default_rng(22)
  n, heads, d = 8, 2, 3
  v, x, t, z = problem(rng, (2,), n, heads, d, t_pos, z_pos, complex_x=True)
  g0 = rng.normal(size=(2, heads)) * 0.3 + 0.4j
  y0 = rng.normal(size=(2, heads, d)) + 1j * rng.normal(size=(2, heads, d))
  w = rng.normal(size=(n, heads, d)) + 1j * rng.normal(size=(n, heads, d))
  with jax.enable_x64(True):

    def loss(v_, x_, t_, z_, g0_, y0_):
      y, c = resolvent.causal_green(v_, x_, hopping=t_, z=z_, carry=(g0_, y0_), method=method,
                                    chunk_size=3)
      return (jnp.sum(jnp.real(jnp.asarray(w) * y)) + jnp.sum(jnp.abs(y) ** 2)
              + jnp.sum(jnp.imag(c.g)) + jnp.sum(jnp.real(c.y)))

    arrays = (v, x, t, z, g0, y0)
    args = [jnp.asarray(a) for a in arrays]
    grads = jax.jit(jax.grad(loss, argnums=tuple(range(6))))(*args)
    loss = jax.jit(loss)
    eps = 1e-5  # central differences: truncation ~eps^2, rounding ~1e-16/eps

    def fd(k, e):
      plus, minus = list(args), list(args)
      plus[k] = args[k] + eps * e
      minus[k] = args[k] - eps * e
      return (loss(*plus) - loss(*minus)) / (2 * eps)

    for k, arr in enumerate(arrays):
      grad = np.asarray(grads[k])
      assert grad.shape == np.shape(arr)
      flat = list(np.ndindex(*np.shape(arr)))
      for idx in [flat[0], flat[len(flat) // 2], flat[-1], flat[len(flat) // 3]]:
        e = np.zeros(np.shape(arr))
        e[idx] = 1.0
        # JAX's gradient of a real loss w.r.t. a complex input is dL/dRe - i dL/dIm.
        expected = fd(k, e) - 1j * fd(k, 1j * e) if np.iscomplexobj(arr) else fd(k, e)
        np.testing.assert_allclose(grad[idx], expected, rtol=1e-6, atol=1e-8, err_msg=str((k, idx)))


@pytest.mark.parametrize("method", METHODS)
def test_causality_bit_identical(method):
  """Perturbing x_j, v_j, t_j or z_j leaves y_{<j} bit-identical and moves y_j."""
  rng = np.random.default_rng(23)
  v, x, t, z = problem(rng, (2,), 150, 3, 4)
  v, x, t, z = (jnp.asarray(v, jnp.float32), jnp.asarray(x, jnp.float32),
                jnp.asarray(t, jnp.float32), jnp.asarray(z, jnp.complex64))
  f = jax.jit(lambda v_, x_, t_, z_: resolvent.causal_green(
      v_, x_, hopping=t_, z=z_, method=method, chunk_size=32)[0])
  base = np.asarray(f(v, x, t, z))
  for j in [1, 31, 32, 149]:
    for args in [(v, x.at[:, j].add(1.0), t, z), (v.at[:, j].add(3.0), x, t, z),
                 (v, x, t.at[:, j].mul(1.7), z), (v, x, t, z.at[:, j].add(0.5 + 0.3j))]:
      y = np.asarray(f(*args))
      np.testing.assert_array_equal(y[:, :j], base[:, :j])
      assert np.all(y[:, j] != base[:, j])


@pytest.mark.slow
@pytest.mark.parametrize("method", METHODS)
def test_carry_chaining_values_and_gradients(method):
  rng = np.random.default_rng(24)
  n = 50
  v, x, t, z = problem(rng, (2,), n, 3, 2)
  cuts = [1, 23]
  w = rng.normal(size=(n, 3, 2)) + 1j * rng.normal(size=(n, 3, 2))
  with jax.enable_x64(True):
    args = tuple(jnp.asarray(a) for a in (v, x, t, z))

    def one(v_, x_, t_, z_):
      return resolvent.causal_green(v_, x_, hopping=t_, z=z_, method=method, chunk_size=8)

    def chained(v_, x_, t_, z_):
      pieces, carry = [], None
      for lo, hi in zip([0] + cuts, cuts + [n]):
        y, carry = resolvent.causal_green(v_[:, lo:hi], x_[:, lo:hi], hopping=t_[:, lo:hi],
                                          z=z_[:, lo:hi], carry=carry, method=method, chunk_size=8)
        pieces.append(y)
      return jnp.concatenate(pieces, axis=1), carry

    (y1, c1), (y2, c2) = jax.jit(one)(*args), jax.jit(chained)(*args)
    np.testing.assert_allclose(y2, y1, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(c2.g, c1.g, rtol=1e-12)
    np.testing.assert_allclose(c2.y, c1.y, rtol=1e-12)

    def scalar(f):
      def s(*a):
        y, c = f(*a)
        return jnp.sum(jnp.real(jnp.asarray(w) * y)) + jnp.sum(jnp.imag(c.g)) + jnp.sum(jnp.abs(c.y))
      return s

    gr1 = jax.jit(jax.grad(scalar(one), argnums=(0, 1, 2, 3)))(*args)
    gr2 = jax.jit(jax.grad(scalar(chained), argnums=(0, 1, 2, 3)))(*args)
    for a, b in zip(gr2, gr1):
      np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-13)


@pytest.mark.slow
@pytest.mark.parametrize("method", METHODS)
def test_bounded_at_65536_with_extreme_inputs(method):
  """|y_i[k]| <= ||x_{0..i}[k]||_2 / min_{j<=i} Im z_j at N = 65,536, |v| up to 1e6."""
  rng = np.random.default_rng(25)
  n, heads, d = 65536, 3, 2
  v = rng.normal(size=(n, heads)) * np.array([1e-3, 1e3, 1e6])
  v[n // 2 :: 7] = 1e6
  v[::11, 0] = 0.0  # resonant stretch on the free spectrum
  t = 10.0 ** rng.uniform(-6, 1, (n, heads))
  t[:, 0] = 1.0
  eta = 10.0 ** rng.uniform(-2, 0.5, (n, heads))
  z = rng.uniform(-4.5, 0.5, (n, heads)) + 1j * eta
  x = rng.normal(size=(n, heads, d)) * 10.0 ** rng.uniform(-3, 3, (n, 1, 1))
  y, carry = resolvent.causal_green(jnp.asarray(v, jnp.float32), jnp.asarray(x, jnp.float32),
                                    hopping=jnp.asarray(t, jnp.float32),
                                    z=jnp.asarray(z, jnp.complex64), method=method)
  y = np.asarray(y)
  assert np.all(np.isfinite(y)) and np.all(np.isfinite(np.asarray(carry.g)))
  x32 = x.astype(np.float32).astype(np.float64)
  norm = np.sqrt(np.cumsum(x32 ** 2, axis=0))
  eta_min = np.minimum.accumulate(eta.astype(np.float32).astype(np.float64), axis=0)
  assert np.all(np.abs(y) <= norm / eta_min[..., None] * (1 + 1e-4))


@pytest.mark.slow
def test_methods_agree():
  rng = np.random.default_rng(26)
  v, x, t, z = problem(rng, (2,), 4096, 3, 4)
  with jax.enable_x64(True):
    exact = np.asarray(resolvent.causal_green(jnp.asarray(v), jnp.asarray(x), hopping=t, z=z,
                                              method="scan")[0])
  for method in METHODS:
    y, _ = resolvent.causal_green(jnp.asarray(v, jnp.float32), jnp.asarray(x, jnp.float32),
                                  hopping=t.astype(np.float32), z=z.astype(np.complex64),
                                  method=method)
    err = np.abs(np.asarray(y) - exact)
    assert np.max(err) <= 1e-5 * np.max(np.abs(exact)), method


def test_bad_arguments_raise():
  v = jnp.zeros((2, 5, 3))
  with pytest.raises(ValueError, match=r"x must have shape v.shape \+ \(d,\)"):
    resolvent.causal_green(v, jnp.zeros((2, 5, 3)), hopping=jnp.ones(3), z=jnp.full(3, 1j))
  with pytest.raises(ValueError, match="hopping per position"):
    resolvent.causal_green(v, jnp.zeros((2, 5, 3, 2)), hopping=jnp.ones((4, 3)), z=jnp.full(3, 1j))
  with pytest.raises(ValueError, match="unknown resolvent method"):
    resolvent.causal_green(v, jnp.zeros((2, 5, 3, 2)), hopping=jnp.ones(3), z=jnp.full(3, 1j),
                           method="parallel")

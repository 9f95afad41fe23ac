"""bk_jax.ops.resolvent against dense inverses, finite differences and its own invariants."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import dense_reference as ref
from bk_jax.ops import resolvent

METHODS = resolvent.METHODS


def random_problem(rng, batch, n, heads):
  v = rng.normal(scale=1.5, size=batch + (n, heads))
  t = rng.uniform(0.3, 2.0, heads)
  z = rng.uniform(-4.0, 0.5, heads) + 1j * rng.uniform(0.05, 1.5, heads)
  return v, t, z


def rel_err(a, b):
  return np.max(np.abs(np.asarray(a) - b) / np.abs(b))


SHAPES = [((), 1, 1), ((), 2, 3), ((), 3, 2), ((2,), 17, 4), ((2, 3), 9, 2), ((1,), 64, 5)]


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("batch,n,heads", SHAPES)
def test_causal_matches_dense_complex64(method, batch, n, heads):
  rng = np.random.default_rng(hash((batch, n, heads)) % 2**32)
  v, t, z = random_problem(rng, batch, n, heads)
  g, carry = jax.jit(functools.partial(  # one compile: eager dispatch of the scans is slower
      resolvent.causal_diag, hopping=t, z=z.astype(np.complex64), method=method, chunk_size=4))(
          jnp.asarray(v, jnp.float32))
  assert g.dtype == jnp.complex64
  expected = ref.causal_diag(v.astype(np.float32), t.astype(np.float32), z.astype(np.complex64))
  assert rel_err(g, expected) <= 1e-5
  np.testing.assert_array_equal(np.asarray(carry), np.asarray(g)[..., -1, :])


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("batch,n,heads", SHAPES)
def test_causal_matches_dense_complex128(method, batch, n, heads):
  rng = np.random.default_rng(1 + hash((batch, n, heads)) % 2**32)
  v, t, z = random_problem(rng, batch, n, heads)
  with jax.enable_x64(True):
    g, _ = jax.jit(functools.partial(resolvent.causal_diag, hopping=t, z=z, method=method,
                                     chunk_size=4))(jnp.asarray(v))
    assert g.dtype == jnp.complex128
    assert rel_err(g, ref.causal_diag(v, t, z)) <= 1e-12


@pytest.mark.parametrize("method", METHODS)
def test_full_diag_matches_dense(method):
  rng = np.random.default_rng(3)
  for batch, n, heads in [((), 1, 2), ((), 2, 1), ((3,), 11, 3)]:
    v, t, z = random_problem(rng, batch, n, heads)
    with jax.enable_x64(True):
      g = resolvent.full_diag(jnp.asarray(v), hopping=t, z=z, method=method)
      assert rel_err(g, ref.full_diag(v, t, z)) <= 1e-12


def _loss(method, weights):
  def loss(v, t, z):
    g, _ = resolvent.causal_diag(v, hopping=t, z=z, method=method, chunk_size=3)
    return jnp.sum(jnp.real(weights * g)) + jnp.sum(jnp.imag(g) ** 2)

  return loss


@pytest.mark.parametrize("method", METHODS)
def test_gradients_match_finite_differences(method):
  rng = np.random.default_rng(4)
  v, t, z = random_problem(rng, (2,), 10, 3)
  w = rng.normal(size=(10, 3)) + 1j * rng.normal(size=(10, 3))
  with jax.enable_x64(True):
    loss = jax.jit(_loss(method, jnp.asarray(w)))
    gv, gt, gz = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(jnp.asarray(v), jnp.asarray(t),
                                                             jnp.asarray(z))
    eps = 1e-6

    def fd(perturb):
      return (loss(*perturb(eps)) - loss(*perturb(-eps))) / (2 * eps)

    for idx in [(0, 0, 0), (1, 4, 2), (1, 9, 1)]:
      e = np.zeros_like(v)
      e[idx] = 1.0
      np.testing.assert_allclose(gv[idx], fd(lambda s: (v + s * e, t, z)), rtol=1e-6, atol=1e-9)
    for h in range(3):
      e = np.zeros(3)
      e[h] = 1.0
      np.testing.assert_allclose(gt[h], fd(lambda s: (v, t + s * e, z)), rtol=1e-6, atol=1e-9)
      # JAX's gradient of a real loss w.r.t. complex z is dL/dRe z - i dL/dIm z.
      d_re = fd(lambda s: (v, t, z + s * e))
      d_im = fd(lambda s: (v, t, z + 1j * s * e))
      np.testing.assert_allclose(gz[h], d_re - 1j * d_im, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("method", METHODS)
def test_gradient_matches_dense_analytic(method):
  rng = np.random.default_rng(5)
  v, t, z = random_problem(rng, (), 12, 2)
  w = rng.normal(size=(12, 2)) + 1j * rng.normal(size=(12, 2))
  with jax.enable_x64(True):

    def loss(v_):
      g, _ = resolvent.causal_diag(v_, hopping=t, z=z, method=method, chunk_size=5)
      return jnp.sum(jnp.real(jnp.asarray(w) * g))

    got = jax.jit(jax.grad(loss))(jnp.asarray(v))
  np.testing.assert_allclose(got, ref.causal_diag_grad_v(v, t, z, w), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("method", METHODS)
def test_causality_bit_identical(method):
  rng = np.random.default_rng(6)
  v, t, z = random_problem(rng, (2,), 300, 4)
  v = jnp.asarray(v, jnp.float32)
  z = z.astype(np.complex64)
  f = jax.jit(lambda v_: resolvent.causal_diag(v_, hopping=t, z=z, method=method, chunk_size=32)[0])
  base = np.asarray(f(v))
  for j in [0, 1, 31, 32, 150, 299]:
    g = np.asarray(f(v.at[:, j, :].add(3.0)))
    np.testing.assert_array_equal(g[:, :j], base[:, :j])
    assert np.all(g[:, j] != base[:, j])  # the perturbation does reach position j


@pytest.mark.parametrize("method", METHODS)
def test_carry_chaining_equals_one_call(method):
  rng = np.random.default_rng(7)
  v, t, z = random_problem(rng, (3,), 257, 4)
  with jax.enable_x64(True):
    full, full_carry = jax.jit(lambda v_: resolvent.causal_diag(v_, hopping=t, z=z,
                                                                method=method))(jnp.asarray(v))
    # One compile per piece length (eager dispatch of the associative scan is much slower).
    step = jax.jit(lambda v_, c: resolvent.causal_diag(v_, hopping=t, z=z, carry=c, method=method, chunk_size=16))
    for cuts in ([1, 2, 200], np.sort(rng.choice(np.arange(3, 257), size=3, replace=False))):
      pieces, carry = [], None
      for lo, hi in zip(np.r_[0, cuts], np.r_[cuts, 257]):
        g, carry = step(jnp.asarray(v[:, lo:hi]), carry)
        pieces.append(np.asarray(g))
      np.testing.assert_allclose(np.concatenate(pieces, axis=1), full, rtol=1e-12, atol=0)
      np.testing.assert_allclose(carry, full_carry, rtol=1e-12, atol=0)


def test_carry_gradient_flows():
  """The carry is differentiable: chained calls give the gradient of the single call."""
  rng = np.random.default_rng(8)
  v, t, z = random_problem(rng, (), 40, 2)
  with jax.enable_x64(True):

    def one(v_):
      return jnp.sum(jnp.abs(resolvent.causal_diag(v_, hopping=t, z=z)[0]) ** 2)

    def two(v_):
      g1, c = resolvent.causal_diag(v_[:13], hopping=t, z=z)
      g2, _ = resolvent.causal_diag(v_[13:], hopping=t, z=z, carry=c)
      return jnp.sum(jnp.abs(g1) ** 2) + jnp.sum(jnp.abs(g2) ** 2)

    np.testing.assert_allclose(jax.grad(two)(jnp.asarray(v)), jax.grad(one)(jnp.asarray(v)), rtol=1e-12)


@pytest.mark.slow  # a long sequence (16 s on the 2-core CPU)
def test_methods_agree_and_associative_accurate_at_65536():
  rng = np.random.default_rng(9)
  n, heads = 65536, 2
  v, t, z = random_problem(rng, (), n, heads)
  with jax.enable_x64(True):
    exact, _ = resolvent.causal_diag(jnp.asarray(v), hopping=t, z=z, method="scan")
    exact = np.asarray(exact)
  v32 = jnp.asarray(v, jnp.float32)
  for method in METHODS:
    g, _ = resolvent.causal_diag(v32, hopping=t, z=z.astype(np.complex64), method=method)
    g = np.asarray(g)
    assert np.all(np.isfinite(g))
    assert rel_err(g, exact) <= 1e-5, method


@pytest.mark.parametrize("method", METHODS)
def test_bounds_hold_for_adversarial_inputs(method):
  """|g| <= 1/Im z and Im g > 0 with |v| up to 1e6 at N = 131,072; never NaN."""
  rng = np.random.default_rng(10)
  n = 131072
  heads = 3
  scale = np.array([1e-3, 1e3, 1e6])
  v = rng.normal(size=(n, heads)) * scale * np.where(rng.random((n, heads)) < 0.5, 1, -1)
  v[n // 2 :: 7] = 1e6  # spikes
  v[::11, 0] = 0.0  # resonant stretch on the free spectrum
  t = np.array([1.0, 0.2, 3.0])
  z = np.array([-2.0 + 1e-3j, -1.0 + 0.5j, 0.0 + 1.0j], np.complex64)
  diag = jax.jit(lambda v_: resolvent.causal_diag(v_, hopping=t, z=z, method=method)[0])
  g = np.asarray(diag(jnp.asarray(v, jnp.float32)))
  assert np.all(np.isfinite(g))
  eta = z.imag.astype(np.float64)
  # The bound is exact; allow only float32 rounding of the final division.
  assert np.all(np.abs(g) * eta <= 1.0 + 1e-5)
  assert np.all(g.imag > 0)


def test_bad_arguments_raise_clear_errors():
  v = jnp.zeros((4, 2))
  with pytest.raises(ValueError, match="unknown resolvent method"):
    resolvent.causal_diag(v, hopping=jnp.ones(2), z=jnp.full(2, 1j), method="parallel")
  with pytest.raises(ValueError, match="shape"):
    resolvent.causal_diag(jnp.zeros(4), hopping=jnp.ones(2), z=jnp.full(2, 1j))

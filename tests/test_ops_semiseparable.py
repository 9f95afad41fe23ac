"""bk_jax.ops.semiseparable: exact causal Woodbury vs dense inverses of T + U diag(s) U^T."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import dense_reference as ref
from bk_jax.ops import semiseparable


def problem(rng, batch, n, heads, rank):
  v = rng.normal(size=batch + (n, heads))
  u = rng.normal(scale=0.7, size=batch + (n, heads, rank))
  s = rng.normal(size=(heads, rank))
  t = rng.uniform(0.3, 2.0, heads)
  z = rng.uniform(-4.0, 0.5, heads) + 1j * rng.uniform(0.1, 1.5, heads)
  return v, u, s, t, z


@pytest.mark.parametrize("batch,n,heads,rank", [((), 1, 1, 1), ((), 2, 2, 2), ((), 3, 1, 4), ((2,), 23, 3, 3)])
def test_matches_dense_inverse(batch, n, heads, rank):
  rng = np.random.default_rng(n * 7 + rank)
  v, u, s, t, z = problem(rng, batch, n, heads, rank)
  expected = ref.causal_diag(v, t, z, u=u, s=s)
  with jax.enable_x64(True):
    o, _ = semiseparable.causal_diag(jnp.asarray(v), jnp.asarray(u), jnp.asarray(s), hopping=t, z=z, chunk_size=5)
    assert np.max(np.abs(o - expected) / np.abs(expected)) <= 1e-12
  o32, _ = semiseparable.causal_diag(
      jnp.asarray(v, jnp.float32), jnp.asarray(u, jnp.float32), jnp.asarray(s, jnp.float32),
      hopping=t, z=z.astype(np.complex64), chunk_size=5,
  )
  assert o32.dtype == jnp.complex64
  assert np.max(np.abs(o32 - expected) / np.abs(expected)) <= 1e-5


def test_bounds_and_causality():
  rng = np.random.default_rng(1)
  v, u, s, t, z = problem(rng, (2,), 200, 3, 4)
  v, u = jnp.asarray(v, jnp.float32), jnp.asarray(u, jnp.float32)
  f = jax.jit(lambda v_, u_: semiseparable.causal_diag(v_, u_, jnp.asarray(s, jnp.float32), hopping=t, z=z, chunk_size=64)[0])
  base = np.asarray(f(v, u))
  assert np.all(np.abs(base) * z.imag <= 1 + 1e-5) and np.all(base.imag > 0)
  for j in [0, 63, 64, 199]:
    out = np.asarray(f(v.at[:, j].add(1.0), u.at[:, j].add(0.5)))
    np.testing.assert_array_equal(out[:, :j], base[:, :j])
    assert np.all(out[:, j] != base[:, j])


def test_carry_chaining_equals_one_call():
  rng = np.random.default_rng(2)
  v, u, s, t, z = problem(rng, (2,), 50, 2, 3)
  with jax.enable_x64(True):
    full, full_carry = jax.jit(functools.partial(semiseparable.causal_diag, hopping=t, z=z))(
        jnp.asarray(v), jnp.asarray(u), jnp.asarray(s))
    piece = jax.jit(functools.partial(semiseparable.causal_diag, hopping=t, z=z, chunk_size=4))
    pieces, carry = [], None
    for lo, hi in [(0, 7), (7, 8), (8, 33), (33, 50)]:
      o, carry = piece(jnp.asarray(v[:, lo:hi]), jnp.asarray(u[:, lo:hi]), jnp.asarray(s),
                       carry=carry)
      pieces.append(np.asarray(o))
  np.testing.assert_allclose(np.concatenate(pieces, axis=1), full, rtol=1e-12)
  for a, b in zip(carry, full_carry):
    np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-300)


def test_gradients_match_finite_differences():
  rng = np.random.default_rng(3)
  v, u, s, t, z = problem(rng, (), 12, 2, 2)
  w = rng.normal(size=(12, 2)) + 1j * rng.normal(size=(12, 2))
  with jax.enable_x64(True):

    @jax.jit  # one compile for the ~20 evaluations (eager dispatch is slower)
    def loss(v_, u_, s_, t_, z_):
      o, _ = semiseparable.causal_diag(v_, u_, s_, hopping=t_, z=z_, chunk_size=5)
      return jnp.sum(jnp.real(jnp.asarray(w) * o))

    args = [jnp.asarray(a) for a in (v, u, s, t, z)]
    grads = jax.jit(jax.grad(loss, argnums=(0, 1, 2, 3, 4)))(*args)
    eps = 1e-6
    for arg_i, idx in [(0, (3, 1)), (0, (11, 0)), (1, (5, 1, 0)), (1, (0, 0, 1)), (2, (1, 1)), (3, (0,)), (4, (1,))]:
      e = np.zeros(args[arg_i].shape, args[arg_i].dtype)
      e[idx] = 1.0
      plus = list(args)
      minus = list(args)
      plus[arg_i] = args[arg_i] + eps * e
      minus[arg_i] = args[arg_i] - eps * e
      fd = (loss(*plus) - loss(*minus)) / (2 * eps)
      if arg_i == 4:  # complex z: JAX returns dL/dRe z - i dL/dIm z
        plus[4] = args[4] + 1j * eps * e
        minus[4] = args[4] - 1j * eps * e
        fd = fd - 1j * (loss(*plus) - loss(*minus)) / (2 * eps)
      np.testing.assert_allclose(grads[arg_i][idx], fd, rtol=1e-6, atol=1e-9)


def test_rank_zero_core_reduces_to_tridiagonal():
  from bk_jax.ops import resolvent

  rng = np.random.default_rng(4)
  v, u, s, t, z = problem(rng, (), 30, 2, 3)
  with jax.enable_x64(True):
    o, _ = semiseparable.causal_diag(jnp.asarray(v), jnp.asarray(u), jnp.zeros_like(jnp.asarray(s)), hopping=t, z=z)
    g, _ = resolvent.causal_diag(jnp.asarray(v), hopping=t, z=z)
  np.testing.assert_allclose(o, g, rtol=1e-13)


def test_shape_errors():
  with pytest.raises(ValueError, match=r"\(H, r\)"):
    semiseparable.causal_diag(jnp.zeros((4, 2)), jnp.zeros((4, 2, 3)), jnp.zeros((2, 2)), hopping=jnp.ones(2), z=jnp.full(2, 1j))
  with pytest.raises(ValueError, match="expected v"):
    semiseparable.causal_diag(jnp.zeros((4, 2)), jnp.zeros((5, 2, 3)), jnp.zeros((2, 3)), hopping=jnp.ones(2), z=jnp.full(2, 1j))

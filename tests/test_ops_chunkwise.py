"""The chunkwise scalar-decay kernel (bk_jax.ops.chunkwise) against the sequential recurrence.

References: a plain numpy loop of S_i = c_i S_{i-1} + w_i k_i v_i^T, o_i = S_i^T q_i (values) and
the same loop in jnp under lax.scan (gradients by autodiff); finite differences; BK chains from
the resolvent itself (c = -t g, w = g).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from bk_jax.ops import resolvent
from bk_jax.ops.chunkwise import chunkwise, chunkwise_local, resolve_chunk, segment_sums


def sequential(q, k, v, c, w, state):
  """numpy float64/complex128 loop: o (..., N, H, d), S_last (..., H, n, d)."""
  s = np.array(state, dtype=np.result_type(c, w, state, np.float64))
  o = np.zeros(q.shape[:-1] + v.shape[-1:], s.dtype)
  for i in range(q.shape[-3]):
    s = (c[..., i, :, None, None] * s
         + w[..., i, :, None, None] * k[..., i, :, :, None] * v[..., i, :, None, :])
    o[..., i, :, :] = np.einsum("...hn,...hnd->...hd", q[..., i, :, :], s)
  return o, s


def sequential_jnp(q, k, v, log_c, w, state):
  """The same recurrence in jnp (lax.scan), differentiable: the gradient reference."""
  def step(s, x):
    qi, ki, vi, li, wi = x
    s = jnp.exp(li)[..., None, None] * s + wi[..., None, None] * ki[..., :, None] * vi[..., None, :]
    return s, jnp.einsum("...hn,...hnd->...hd", qi, s)

  xs = tuple(jnp.moveaxis(x, -3 if x.ndim == q.ndim else -2, 0) for x in (q, k, v, log_c, w))
  last, o = jax.lax.scan(step, state, xs)
  return jnp.moveaxis(o, 0, -3), last


def inputs(rng, shape=(2, 37, 3), n=4, d=5, rotating=True, tiny=True):
  """q, k, v, c, w, state with |c| spanning [1e-30, 1] and single tokens at |c| > 1."""
  b, t, h = shape
  q, k = rng.normal(size=(b, t, h, n)), rng.normal(size=(b, t, h, n))
  v = rng.normal(size=(b, t, h, d))
  mod = rng.uniform(0.3, 1.0, (b, t, h))
  if tiny:
    mod[:, 5] = 1e-30
    mod[:, 11] = 1e-12
    mod[:, 17] = 1.7  # a single growing token
  if rotating:
    c = mod * np.exp(1j * rng.uniform(-np.pi, 0, (b, t, h)))
    w = rng.normal(size=(b, t, h)) + 1j * rng.normal(size=(b, t, h))
    state = rng.normal(size=(b, h, n, d)) + 1j * rng.normal(size=(b, h, n, d))
  else:
    c, w, state = mod, rng.normal(size=(b, t, h)), rng.normal(size=(b, h, n, d))
  return q, k, v, c, w, state


def rel(a, b):
  return float(np.max(np.abs(np.asarray(a) - b)) / np.max(np.abs(b)))


@pytest.fixture
def x64():
  with jax.enable_x64(True):
    yield


def test_segment_sums_are_sums_of_exactly_the_segment():
  x = np.random.default_rng(0).normal(size=(3, 9))
  seg = np.asarray(segment_sums(jnp.asarray(x)))
  for r in range(9):
    for m in range(9):
      want = x[:, m + 1:r + 1].sum(-1) if r >= m else 0.0
      np.testing.assert_allclose(seg[:, r, m], want, atol=1e-6)


@pytest.mark.parametrize("rotating", [True, False])
@pytest.mark.parametrize("chunk,block", [(1, 1024), (4, 8), (64, 1024)])
def test_float64_matches_the_sequential_recurrence(x64, rotating, chunk, block):
  """Values and final state to <= 1e-12 relative, for |c| from 1e-30 to 1.7, any chunk/block
  (37 tokens: chunks that do not divide N, several checkpointed blocks)."""
  q, k, v, c, w, s0 = inputs(np.random.default_rng(0), rotating=rotating)
  o_ref, s_ref = sequential(q, k, v, c, w, s0)
  o, s = chunkwise_local(q, k, v, np.log(c), w, s0, chunk=chunk, block=block)
  assert o.dtype == (jnp.complex128 if rotating else jnp.float64)
  assert rel(o, o_ref) <= 1e-12 and rel(s, s_ref) <= 1e-12


@pytest.mark.parametrize("scan_method", ["sequential", "associative"])
def test_bk_chain_with_huge_potentials_float64(x64, scan_method):
  """c = -t g, w = g from the resolvent itself, with a potential of 1e4 every 7th token (|c| down
  to ~1e-4 per token, products to 1e-300 and below): the keyed Green mixer's exact kernel."""
  rng = np.random.default_rng(1)
  b, t, h, n, d = 2, 96, 3, 4, 3
  v_pot = rng.normal(size=(b, t, h))
  v_pot[:, ::7] = 1e4
  hop = rng.uniform(0.5, 2.0, (b, t, h))
  z = rng.uniform(-3.5, -0.5, h) + 1j * rng.uniform(1e-3, 0.5, h)
  g, _ = resolvent.causal_diag(jnp.asarray(v_pot), hopping=jnp.asarray(hop), z=jnp.asarray(z))
  g = np.asarray(g)
  c = -hop * g
  q, k, vals = (rng.normal(size=(b, t, h, m)) for m in (n, n, d))
  o_ref, s_ref = sequential(q, k, vals, c, g, np.zeros((b, h, n, d)))
  o, s = chunkwise_local(q, k, vals, np.log(hop) + np.log(-g), g, chunk=16, block=32,
                         scan_method=scan_method)
  assert rel(o, o_ref) <= 1e-12 and rel(s, s_ref) <= 1e-12


def test_float32_error_is_that_of_float32_rounding():
  """float32 at N 2,048 within 1e-5 (relative to the largest output) of the float64 loop, with
  no NaN or inf where products of tiny decays underflow."""
  rng = np.random.default_rng(2)
  q, k, v, c, w, s0 = inputs(rng, shape=(1, 2048, 2), n=4, d=4)
  c[:, 300:340] = 1e-30  # forty tokens in a row: the product underflows float32 entirely
  o_ref, _ = sequential(q, k, v, c, w, s0)
  f32 = lambda x: jnp.asarray(x, jnp.complex64 if np.iscomplexobj(x) else jnp.float32)
  o, _ = chunkwise_local(*map(f32, (q, k, v, np.log(c), w, s0)))
  assert np.all(np.isfinite(np.asarray(o)))
  assert rel(o, o_ref) <= 1e-5


@pytest.mark.parametrize("rotating", [True, False])
def test_gradients_match_autodiff_of_the_recurrence(x64, rotating):
  """d/d(q, k, v, log c, w, state) of a real loss: <= 1e-12 relative to lax.scan autodiff."""
  q, k, v, c, w, s0 = map(jnp.asarray, inputs(np.random.default_rng(3), shape=(2, 21, 2),
                                                rotating=rotating, tiny=False))
  proj = jnp.asarray(np.random.default_rng(4).normal(size=(2, 21, 2, 5)))

  def loss(fn):
    def f(q, k, v, lc, w, s0):
      o, s = fn(q, k, v, lc, w, s0)
      return jnp.sum(jnp.real(o) * proj) + jnp.sum(jnp.imag(o) ** 2) + jnp.sum(jnp.abs(s) ** 2)
    return f

  args = (q, k, v, jnp.log(c), w, s0)
  want = jax.grad(loss(sequential_jnp), argnums=range(6))(*args)
  got = jax.grad(loss(lambda *a: chunkwise_local(*a, chunk=4, block=8)), argnums=range(6))(*args)
  for a, b in zip(got, want):
    assert rel(a, np.asarray(b)) <= 1e-12


def test_gradients_match_finite_differences(x64):
  q, k, v, c, w, s0 = map(jnp.asarray, inputs(np.random.default_rng(5), shape=(1, 9, 2), n=3,
                                                d=2, tiny=False))
  f = jax.jit(lambda q, k, v, lc, w, s0: chunkwise_local(q, k, v, lc, w, s0, chunk=4)[0])
  check_grads(f, (q, k, v, jnp.log(c), w, s0), order=1, modes=("rev",), eps=1e-6)


def test_carry_chaining_equals_one_call(x64):
  q, k, v, c, w, s0 = inputs(np.random.default_rng(6), shape=(2, 50, 3))
  lc = np.log(c)
  local = jax.jit(functools.partial(chunkwise_local, chunk=8))  # eager dispatch is slower
  full, last = local(q, k, v, lc, w, s0)
  s, outs = s0, []
  for a, b in ((0, 7), (7, 8), (8, 33), (33, 50)):
    o, s = local(q[:, a:b], k[:, a:b], v[:, a:b], lc[:, a:b], w[:, a:b], s)
    outs.append(o)
  assert rel(np.concatenate(outs, axis=1), np.asarray(full)) <= 1e-13
  assert rel(s, np.asarray(last)) <= 1e-13


def test_public_entry_and_chunk_rule():
  q, k, v, c, w, s0 = inputs(np.random.default_rng(7), rotating=False, tiny=False)
  f32 = lambda x: jnp.asarray(x, jnp.float32)
  a = chunkwise(*map(f32, (q, k, v, np.log(c), w, s0)))
  b = chunkwise_local(*map(f32, (q, k, v, np.log(c), w, s0)))
  np.testing.assert_array_equal(a[0], b[0])
  assert resolve_chunk("auto", "cpu") == 16 and resolve_chunk("auto", "gpu") == 64
  assert resolve_chunk(32) == 32
  with pytest.raises(ValueError, match="chunk"):
    resolve_chunk(0)


def test_bad_inputs_fail_with_one_line():
  q = jnp.zeros((1, 4, 2, 3))
  v = jnp.zeros((1, 4, 2, 5))
  lc = jnp.zeros((1, 4, 2))
  with pytest.raises(ValueError, match="must be real"):
    chunkwise_local(q.astype(jnp.complex64), q, v, lc, lc)
  with pytest.raises(ValueError, match="must match"):
    chunkwise_local(q, q, v, lc[:, :3], lc)
  with pytest.raises(ValueError, match="N >= 1"):
    chunkwise_local(q[:, :0], q[:, :0], v[:, :0], lc[:, :0], lc[:, :0])

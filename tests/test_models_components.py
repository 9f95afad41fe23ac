"""Component tests: scattering router, blockwise attention, selective scan."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bk_jax.models.mamba import selective_scan
from bk_jax.models.moe import scattering_route
from bk_jax.models.transformer import blockwise_attention
from bk_jax.ops import resolvent


def _amplitude(v, eta):
  g, _ = resolvent.causal_diag(v, hopping=jnp.ones(v.shape[-1]),
                               z=jax.lax.complex(jnp.linspace(-3.5, -0.5, v.shape[-1]), eta))
  return jnp.mean(g * eta, axis=-1)


def test_scattering_router_causal_and_normalised():
  h, n, e = 4, 40, 4
  eta = jnp.geomspace(0.1, 1.0, h)
  v = jax.random.normal(jax.random.key(0), (3, n, h))
  w = scattering_route(_amplitude(v, eta), e)
  assert w.shape == (3, n, e)
  np.testing.assert_allclose(w.sum(-1), 1.0, atol=1e-6)
  load = w.mean((0, 1))
  np.testing.assert_allclose(load.sum(), 1.0, atol=1e-6)
  j = 17
  v2 = v.at[:, j:].set(jax.random.normal(jax.random.key(1), (3, n - j, h)))
  w2 = scattering_route(_amplitude(v2, eta), e)
  np.testing.assert_array_equal(w[:, :j], w2[:, :j])  # routing of i never sees tokens > i


def test_scattering_router_rules():
  e = 4
  # phases pi*(0.1, 0.3, 0.6, 0.9) -> experts 0, 1, 2, 3; |w| 0.2 (plain) or 0.9 (resonant)
  phase = jnp.pi * jnp.array([0.1, 0.3, 0.6, 0.9])
  plain = scattering_route(0.2 * jnp.exp(1j * phase), e)
  np.testing.assert_array_equal(plain, np.eye(e))
  res = scattering_route(0.9 * jnp.exp(1j * phase), e)
  np.testing.assert_allclose(res.max(-1), 2 / 3, atol=1e-6)
  np.testing.assert_array_equal(res.argmax(-1), np.arange(e))
  # frac 0.4 at expert 0 -> neighbour reflects to 1; frac 0.2 at expert 1 -> neighbour 0
  np.testing.assert_allclose(res[0], [2 / 3, 1 / 3, 0, 0], atol=1e-6)
  np.testing.assert_allclose(res[1], [1 / 3, 2 / 3, 0, 0], atol=1e-6)


def _dense_attention(q, k, v, qp, kp, window):
  s = jnp.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(q.shape[-1])
  vis = (kp[None, :] >= 0) & (kp[None, :] <= qp[:, None])
  if window is not None:
    vis &= qp[:, None] - kp[None, :] < window
  s = jnp.where(vis, s, -jnp.inf)
  return jnp.einsum("bhqk,bkhd->bqhd", jax.nn.softmax(s, -1), v)


@pytest.mark.parametrize("window", [None, 5])
def test_blockwise_attention_matches_dense(window):
  ks = jax.random.split(jax.random.key(0), 3)
  q, k, v = (jax.random.normal(kk, (2, 19, 2, 8)) for kk in ks)
  pos = jnp.arange(19, dtype=jnp.int32)
  kp = pos.at[3].set(-1) if window is None else pos  # an empty cache slot is ignored
  blockwise = jax.jit(lambda q: blockwise_attention(q, k, v, pos, kp, window=window, block=4))
  dense = jax.jit(lambda q: _dense_attention(q, k, v, pos, kp, window))
  np.testing.assert_allclose(blockwise(q), dense(q), atol=1e-5)
  g = jax.jit(jax.grad(lambda q: blockwise(q).sum()))(q)
  g_ref = jax.jit(jax.grad(lambda q: dense(q).sum()))(q)
  np.testing.assert_allclose(g, g_ref, atol=1e-4)


def test_selective_scan_matches_loop():
  b, n, d, s = 2, 13, 3, 4
  ks = jax.random.split(jax.random.key(0), 5)
  x = jax.random.normal(ks[0], (b, n, d))
  dt = jax.nn.softplus(jax.random.normal(ks[1], (b, n, d)))
  a = -jnp.exp(jax.random.normal(ks[2], (d, s)))
  bb, cc = jax.random.normal(ks[3], (b, n, s)), jax.random.normal(ks[4], (b, n, s))
  y, h_last = selective_scan(x, dt, a, bb, cc, jnp.zeros((b, d, s)), chunk=4)
  h = np.zeros((b, d, s))
  ys = []
  for t in range(n):
    h = np.exp(dt[:, t, :, None] * a) * h + (dt[:, t] * x[:, t])[:, :, None] * bb[:, t, None, :]
    ys.append(np.einsum("bds,bs->bd", h, cc[:, t]))
  np.testing.assert_allclose(y, np.stack(ys, 1), atol=1e-5)
  np.testing.assert_allclose(h_last, h, atol=1e-5)


def _selective_inputs(b=2, n=21, d=3, s=4):
  ks = jax.random.split(jax.random.key(1), 6)
  x = jax.random.normal(ks[0], (b, n, d))
  dt = jax.nn.softplus(jax.random.normal(ks[1], (b, n, d)))
  a = -jnp.exp(jax.random.normal(ks[2], (d, s)))
  bb, cc = jax.random.normal(ks[3], (b, n, s)), jax.random.normal(ks[4], (b, n, s))
  h0 = jax.random.normal(ks[5], (b, d, s))
  return x, dt, a, bb, cc, h0


def test_selective_scan_associative_equals_sequential():
  """Values (y, h_last) and gradients w.r.t. all six inputs; N = 21 with chunk 8 has a tail."""
  args = _selective_inputs()
  w = jax.random.normal(jax.random.key(2), args[0].shape)

  def run(method):
    def f(*a):
      y, h_last = selective_scan(*a, chunk=8, method=method)
      return jnp.sum(y * w) + jnp.sum(h_last ** 2), (y, h_last)
    return jax.jit(jax.value_and_grad(f, argnums=tuple(range(6)), has_aux=True))(*args)

  ((vs, (ys, hs)), gs), ((va, (ya, ha)), ga) = run("sequential"), run("associative")
  np.testing.assert_allclose(ya, ys, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(ha, hs, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(va, vs, rtol=1e-5)
  for p, q in zip(ga, gs):  # d/dx, dt, A, B, C, h0
    np.testing.assert_allclose(p, q, rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_mamba_block_associative_equals_sequential_grads():
  """The whole block (conv, projections, scan) under both methods: values and parameter grads."""
  from flax import nnx

  from bk_jax.models.mamba import MambaBlock

  x = jax.random.normal(jax.random.key(3), (2, 19, 16))
  outs = {}
  for method in ("sequential", "associative"):
    with nnx.use_eager_sharding(False):
      blk = MambaBlock(16, d_state=4, d_conv=4, expand=2, chunk=8, n_layers=2,
                       rngs=nnx.Rngs(0), scan_method=method)

    def f(m, x):
      y, (_, h), _ = m(x, None, 0, None)
      return jnp.sum(jnp.sin(y)) + jnp.sum(h)

    outs[method] = nnx.jit(nnx.value_and_grad(f, argnums=(0, 1)))(blk, x)
  (vs, (gps, gxs)), (va, (gpa, gxa)) = outs["sequential"], outs["associative"]
  np.testing.assert_allclose(va, vs, rtol=1e-5)
  np.testing.assert_allclose(gxa, gxs, rtol=1e-4, atol=1e-5)
  for p, q in zip(jax.tree.leaves(nnx.state(gpa)), jax.tree.leaves(nnx.state(gps))):
    np.testing.assert_allclose(p, q, rtol=1e-4, atol=1e-5)
  with pytest.raises(ValueError, match="unknown linear scan method"), \
      nnx.use_eager_sharding(False):
    MambaBlock(16, d_state=4, d_conv=4, expand=2, chunk=8, n_layers=2, rngs=nnx.Rngs(0),
               scan_method="parallel")

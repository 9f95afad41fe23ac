"""The Mamba-2 (SSD) block against independent float64 numpy references.

References written here from the paper's algorithm, not from the block's code:
* `ssd_minimal`: the chunked SSD algorithm of Dao & Gu 2024 (state-spaces/mamba
  `ssd_minimal.py`, the paper's Listing 1): `segsum`, then (1) the diagonal blocks, (2) each
  chunk's state, (3) the recurrence between chunks, (4) states to outputs;
* `ssd_sequential`: the recurrence h_t = exp(dt_t A) h_{t-1} + dt_t x_t B_t^T one token at a time;
* `block_reference`: the whole block (pre-norm, in_proj, causal conv, SiLU, softplus dt, SSD, D
  skip, gated group RMS norm, out_proj, residual) in numpy, with the block's parameters.

Errors are normwise: max |got - want| / max |want| (entries near zero make elementwise ratios
meaningless).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from bk_jax.models.mamba2 import Mamba2Block, ssd


def rel(got, want) -> float:
  got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
  return float(np.max(np.abs(got - want)) / np.max(np.abs(want)))


# ------------------------------------------------------------------ numpy references (float64)

def segsum(x: np.ndarray) -> np.ndarray:
  """out[..., i, j] = sum_{j<u<=i} x[..., u] for i >= j, -inf above the diagonal (a masked
  cumulative sum of exactly the segment's terms)."""
  t = x.shape[-1]
  rep = np.repeat(x[..., :, None], t, axis=-1)  # rep[..., u, j] = x[u]
  rep = np.where(np.tril(np.ones((t, t), bool), -1), rep, 0.0)  # keep u > j
  out = np.cumsum(rep, axis=-2)  # sum over j < u <= i
  return np.where(np.tril(np.ones((t, t), bool)), out, -np.inf)


def ssd_minimal(x, a, b, c, block_len: int, initial_state=None):
  """The chunked SSD algorithm.

  Args:
    x: (batch, N, H, P) inputs (already times dt); a: (batch, N, H) log decays (dt A);
    b, c: (batch, N, H, S); N a multiple of block_len; initial_state (batch, H, P, S) or None.

  Returns:
    (y (batch, N, H, P), final state (batch, H, P, S)).
  """
  bsz, n, h, p = x.shape
  nc = n // block_len
  split = lambda t: t.reshape(bsz, nc, block_len, *t.shape[2:])
  x, a, b, c = map(split, (x, a, b, c))  # (b, c, l, ...)
  a = np.moveaxis(a, -1, 1)  # (b, h, c, l)
  a_cumsum = np.cumsum(a, axis=-1)
  # 1. within each chunk (the diagonal blocks)
  decay = np.exp(segsum(a))  # (b, h, c, l, s)
  y_diag = np.einsum("bclhn,bcshn,bhcls,bcshp->bclhp", c, b, decay, x)
  # 2. each chunk's state from a zero start
  decay_states = np.exp(a_cumsum[..., -1:] - a_cumsum)
  states = np.einsum("bclhn,bhcl,bclhp->bchpn", b, decay_states, x)
  # 3. the recurrence between chunks
  if initial_state is None:
    initial_state = np.zeros_like(states[:, :1])
  else:
    initial_state = initial_state[:, None]
  states = np.concatenate([initial_state, states], axis=1)
  decay_chunk = np.exp(segsum(np.pad(a_cumsum[..., -1], [(0, 0), (0, 0), (1, 0)])))
  new_states = np.einsum("bhzc,bchpn->bzhpn", decay_chunk, states)
  states, final = new_states[:, :-1], new_states[:, -1]
  # 4. states to outputs
  y_off = np.einsum("bclhn,bchpn,bhcl->bclhp", c, states, np.exp(a_cumsum))
  return (y_diag + y_off).reshape(bsz, n, h, p), final


def ssd_sequential(x, dt, a, b, c, d, initial_state=None):
  """y_t = h_t C_t + D x_t, h_t = exp(dt_t A) h_{t-1} + dt_t x_t B_t^T; h (batch, H, P, S)."""
  bsz, n, h, p = x.shape
  state = np.zeros((bsz, h, p, b.shape[-1])) if initial_state is None else initial_state.copy()
  ys = []
  for t in range(n):
    state = (np.exp(dt[:, t] * a)[..., None, None] * state
             + (dt[:, t, :, None] * x[:, t])[..., None] * b[:, t, :, None, :])
    ys.append(np.einsum("bhpn,bhn->bhp", state, c[:, t]) + d[:, None] * x[:, t])
  return np.stack(ys, 1), state


def per_head(g, heads):
  """(batch, N, G, S) -> (batch, N, H, S): head h reads group h // (H / G)."""
  return np.concatenate([np.repeat(g[:, :, i:i + 1], heads // g.shape[2], axis=2)
                         for i in range(g.shape[2])], axis=2)


def ssd_problem(seed, batch=2, n=24, heads=4, groups=2, p=3, s=5, tiny_decays=False):
  """Random SSD inputs; with tiny_decays some steps decay by down to exp(-80) ~ 1e-35."""
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(batch, n, heads, p))
  dt = np.log1p(np.exp(rng.normal(size=(batch, n, heads)) - 2.0))  # softplus
  a = -rng.uniform(1.0, 16.0, heads)
  if tiny_decays:
    dt[:, ::5] = 5.0  # dt A down to -80
  b, c = rng.normal(size=(2, batch, n, groups, s))
  d = rng.normal(size=heads)
  h0 = rng.normal(size=(batch, heads, p, s))
  return x, dt, a, b, c, d, h0


def run_ssd(x, dt, a, b, c, d, h0, chunk, dtype=jnp.float64):
  """The block's `ssd`; states in the references' (batch, H, P, S) layout."""
  args = [jnp.asarray(t, dtype) for t in (x, dt, a, b, c, d, np.swapaxes(h0, -1, -2))]
  y, h = jax.jit(functools.partial(ssd, chunk=chunk))(*args)
  return np.asarray(y, np.float64), np.swapaxes(np.asarray(h, np.float64), -1, -2)


# ------------------------------------------------------------------ the SSD layer

@pytest.mark.parametrize("tiny_decays", [False, True])
def test_ssd_matches_ssd_minimal_and_the_sequential_recurrence_float64(tiny_decays):
  x, dt, a, b, c, d, h0 = ssd_problem(0, tiny_decays=tiny_decays)
  heads = x.shape[2]
  want_seq, h_seq = ssd_sequential(x, dt, a, per_head(b, heads), per_head(c, heads), d, h0)
  y_min, h_min = ssd_minimal(x * dt[..., None], a * dt, per_head(b, heads), per_head(c, heads),
                             block_len=8, initial_state=h0)
  y_min = y_min + d[:, None] * x
  assert rel(y_min, want_seq) <= 1e-12 and rel(h_min, h_seq) <= 1e-12  # the references agree
  with jax.enable_x64(True):
    for chunk in (4, 8, 5):  # 5: a partial last chunk
      y, h = run_ssd(x, dt, a, b, c, d, h0, chunk)
      assert rel(y, want_seq) <= 1e-12 and rel(y, y_min) <= 1e-12, chunk
      assert rel(h, h_seq) <= 1e-12 and rel(h, h_min) <= 1e-12, chunk


def test_ssd_float32_within_1e_5_of_float64():
  x, dt, a, b, c, d, h0 = ssd_problem(1, n=40, tiny_decays=True)
  heads = x.shape[2]
  want, h_want = ssd_sequential(x, dt, a, per_head(b, heads), per_head(c, heads), d, h0)
  y, h = run_ssd(x, dt, a, b, c, d, h0, chunk=16, dtype=jnp.float32)
  assert rel(y, want) <= 1e-5 and rel(h, h_want) <= 1e-5


def test_ssd_gradients_match_the_sequential_scan_float64():
  """d/dx, dt, A, B, C, D and the initial state, through the chunkwise kernel and through a
  plain per-token lax.scan (autodiff of each is exact to rounding)."""
  x, dt, a, b, c, d, h0 = ssd_problem(2, n=13)
  heads = x.shape[2]
  rng = np.random.default_rng(3)
  wy, wh = rng.normal(size=x.shape), rng.normal(size=h0.shape)

  def scan_ref(x, dt, a, b, c, d, h0):
    b, c = (jnp.repeat(t, heads // t.shape[2], axis=2) for t in (b, c))

    def step(h, inp):
      x_t, dt_t, b_t, c_t = inp
      h = (jnp.exp(dt_t * a)[..., None, None] * h
           + (dt_t[..., None] * x_t)[..., None] * b_t[:, :, None, :])
      return h, jnp.einsum("bhpn,bhn->bhp", h, c_t) + d[:, None] * x_t
    h, y = jax.lax.scan(step, h0, tuple(jnp.moveaxis(t, 1, 0) for t in (x, dt, b, c)))
    return jnp.moveaxis(y, 0, 1), h

  def chunked(x, dt, a, b, c, d, h0):
    y, h = ssd(x, dt, a, b, c, d, jnp.swapaxes(h0, -1, -2), chunk=4)
    return y, jnp.swapaxes(h, -1, -2)

  def loss(f):
    def go(*args):
      y, h = f(*args)
      return jnp.sum(y * wy) + jnp.sum(h * wh)
    return jax.jit(jax.grad(go, argnums=tuple(range(7))))

  with jax.enable_x64(True):
    args = [jnp.asarray(t) for t in (x, dt, a, b, c, d, h0)]
    got, want = loss(chunked)(*args), loss(scan_ref)(*args)
  for name, g, w in zip(("x", "dt", "A", "B", "C", "D", "h0"), got, want):
    assert rel(g, w) <= 1e-12, (name, rel(g, w))


# ------------------------------------------------------------------ the block

def call(blk, x, carry=None):
  """blk(x, carry) under one jit (eager dispatch of every op is several times slower here)."""
  return nnx.jit(lambda m, x, c: m(x, c, jnp.zeros((), jnp.int32), None))(blk, x, carry)


def make_block(dtype=jnp.float32, *, d_model=16, d_state=4, headdim=8, ngroups=2, chunk=4,
               seed=0):
  with nnx.use_eager_sharding(False):
    return Mamba2Block(d_model, d_state=d_state, d_conv=4, expand=2, headdim=headdim,
                       ngroups=ngroups, chunk=chunk, n_layers=2, rngs=nnx.Rngs(seed),
                       dtype=dtype, param_dtype=dtype)


def block_reference(blk: Mamba2Block, x: np.ndarray) -> np.ndarray:
  """The whole block in float64 numpy, from a fresh (zero) state."""
  p = lambda t: np.asarray(t[...], np.float64)
  bsz, n, _ = x.shape
  di, s, g, hd, k = blk.d_inner, blk.d_state, blk.ngroups, blk.headdim, blk.d_conv
  heads = di // hd
  u = x / np.sqrt(np.mean(x * x, -1, keepdims=True) + 1e-6) * p(blk.norm.scale)
  proj = u @ p(blk.in_proj.kernel)
  z, xbc, dt_raw = proj[..., :di], proj[..., di:2 * di + 2 * g * s], proj[..., 2 * di + 2 * g * s:]
  xpad = np.concatenate([np.zeros((bsz, k - 1, xbc.shape[-1])), xbc], axis=1)
  w = p(blk.conv_w)
  conv = np.stack([sum(w[j] * xpad[:, t + j] for j in range(k)) for t in range(n)], 1)
  conv = conv + p(blk.conv_b)
  act = conv / (1 + np.exp(-conv))
  xs, bm, cm = act[..., :di], act[..., di:di + g * s], act[..., di + g * s:]
  dt = np.log1p(np.exp(dt_raw + p(blk.dt_bias)))
  a = -np.exp(p(blk.a_log))
  y, _ = ssd_sequential(xs.reshape(bsz, n, heads, hd), dt, a,
                        per_head(bm.reshape(bsz, n, g, s), heads),
                        per_head(cm.reshape(bsz, n, g, s), heads), p(blk.d_skip))
  gated = y.reshape(bsz, n, di) * (z / (1 + np.exp(-z)))
  grouped = gated.reshape(bsz, n, g, di // g)
  normed = grouped / np.sqrt(np.mean(grouped ** 2, -1, keepdims=True) + 1e-5)
  out = normed.reshape(bsz, n, di) * p(blk.out_norm.scale)
  return x + out @ p(blk.out_proj.kernel)


def test_block_matches_the_numpy_block():
  """float32 block vs the float64 reference: a handful of float32 roundings per stage."""
  blk = make_block()
  x = np.random.default_rng(4).normal(size=(2, 21, 16))
  y, carry, aux = call(blk, jnp.asarray(x, jnp.float32))
  want = block_reference(blk, x)
  assert rel(np.asarray(y) - x, want - x) <= 1e-5  # the branch, not the residual it rides on
  assert carry.ssm.dtype == jnp.float32 and carry.ssm.shape == (2, 4, 4, 8)
  assert carry.conv.shape == (2, 3, 32 + 2 * 2 * 4) and float(aux["aux_loss"]) == 0.0


def test_block_init_follows_the_reference():
  blk = make_block(d_model=64, headdim=4)  # 32 heads
  dt = np.asarray(jax.nn.softplus(blk.dt_bias[...]))
  assert np.all((dt >= 1e-3 * (1 - 1e-5)) & (dt <= 1e-1 * (1 + 1e-5)))
  a = np.exp(np.asarray(blk.a_log[...]))
  assert np.all((a >= 1.0) & (a <= 16.0)) and a.std() > 1.0
  np.testing.assert_array_equal(np.asarray(blk.d_skip[...]), 1.0)
  bound = 1 / np.sqrt(4)
  for w in (blk.conv_w, blk.conv_b):
    assert np.abs(np.asarray(w[...])).max() <= bound
  assert blk.in_proj.kernel.shape == (64, 2 * 128 + 2 * 2 * 4 + 32) and blk.in_proj.bias is None


def test_block_streaming_uneven_chunks_equal_one_forward_float64():
  with jax.enable_x64(True):
    blk = make_block(jnp.float64)
    x = jnp.asarray(np.random.default_rng(5).normal(size=(2, 21, 16)))
    full, last, _ = call(blk, x)
    carry, outs = blk.init_carry(2), []
    for lo, hi in ((0, 3), (3, 4), (4, 21)):  # uneven, one of a single token, chunk 4
      y, carry, _ = call(blk, x[:, lo:hi], carry)
      outs.append(y)
    assert rel(jnp.concatenate(outs, 1) - x, full - x) <= 1e-12
    assert rel(carry.ssm, last.ssm) <= 1e-12
    np.testing.assert_array_equal(carry.conv, last.conv)


def test_block_is_causal():
  with jax.enable_x64(True):
    blk = make_block(jnp.float64)
    x = np.random.default_rng(6).normal(size=(2, 21, 16))
    x2 = x.copy()
    j = 9
    x2[:, j] += 1.0
    run = lambda t: np.asarray(call(blk, jnp.asarray(t))[0])
    a, b = run(x), run(x2)
  assert np.abs(a[:, :j] - b[:, :j]).max() <= 1e-14  # no earlier output sees token j
  assert np.all(np.abs(a[:, j:] - b[:, j:]).max(axis=-1) > 1e-6)  # every later one does


def test_bad_head_layout_is_a_value_error():
  with pytest.raises(ValueError, match="headdim 12 must divide d_inner 32"):
    make_block(headdim=12)
  with pytest.raises(ValueError, match="ngroups 3"):
    make_block(headdim=8, ngroups=3)


@pytest.mark.slow
def test_mamba2_trains_the_same_on_sequence_parallel_and_tensor_meshes():
  """3 train steps on mesh sequence=8, data 2 x sequence 4 and data x fsdp x tensor equal one
  device (tests/sharding_checks.py, 8 fake CPU devices); the SSD kernel really ran
  sequence-parallel on the sequence meshes."""
  import json

  from sharding_checks import run_check

  ov = {"kind": "mamba2", "mamba2.headdim": 16, "mamba2.d_state": 8, "mamba2.ngroups": 2}
  meshes = ("1,1,1,8", "2,1,1,4", "2,2,2,1")
  res = run_check("train_variant_meshes", json.dumps(ov), *meshes)
  for spec in meshes:
    assert res[spec]["loss"] <= 1e-5 and res[spec]["params"] <= 1e-5, (spec, res[spec])
    assert (res[spec]["chunkwise_sequence_parallel_calls"] > 0) == (spec[-1] != "1"), res[spec]

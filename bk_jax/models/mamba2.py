"""Mamba-2 (SSD) block: the recurrent baseline of the "mamba2" model kind.

Block (Dao & Gu 2024, "Transformers are SSMs"; the reference is state-spaces/mamba's
`Mamba2`): x + out_proj(norm(y * silu(z))), pre-RMSNorm, where one in_proj gives
(z, x, B, C, dt_raw), a causal depthwise convolution of width d_conv with SiLU runs over
(x, B, C) together, and the SSD layer is a scalar-decay state-space model per head:

    h_t = exp(dt_t A_h) h_{t-1} + dt_t B_t x_t^T    (h: d_state x headdim per head h),
    y_t = h_t^T C_t + D_h x_t,                       dt_t = softplus(dt_raw_t + dt_bias_h),

with x split into heads of `headdim` values, B and C (d_state each) shared by the heads of a
group (`ngroups` groups), A_h = -exp(A_log_h) a negative scalar per head (A_log initialised to
log U[1, 16]), dt_bias initialised so that softplus(dt_bias) is log-uniform in [1e-3, 1e-1]
(floored at 1e-4), D_h = 1. The gated norm is the reference's RMSNormGated with
norm_before_gate=False: an RMS norm over groups of d_inner / ngroups channels of y * silu(z).

The SSD layer runs on `ops.chunkwise` (q = C, k = B, v = x, log c = dt A, write weight dt): the
(d_state x headdim) state exists once per chunk, never once per token, and under a "sequence"
mesh the kernel runs sequence-parallel. Streaming state: the last d_conv-1 conv inputs and the
SSM state.

Initialisation follows the reference's variances: its Linear layers draw from PyTorch's default
U(+-1/sqrt(fan_in)) (variance 1/(3 fan_in)), out_proj additionally divided by sqrt(n_layers)
(its `rescale_prenorm_residual` with one residual branch per layer), and the convolution's
weights and bias U(+-1/sqrt(d_conv)) (PyTorch's Conv1d default).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from bk_jax.models.layers import RMSNorm, dense
from bk_jax.ops.chunkwise import chunkwise

#: dt at init: softplus(dt_bias) log-uniform in [DT_MIN, DT_MAX], floored at DT_FLOOR (reference)
DT_MIN, DT_MAX, DT_FLOOR = 1e-3, 1e-1, 1e-4
#: A at init: -U[A_INIT_RANGE] per head (reference)
A_INIT_RANGE = (1.0, 16.0)
#: eps of the gated RMS norm (reference)
NORM_EPS = 1e-5
#: Tokens per matmul chunk of the SSD kernel when `mamba2.chunk` is 0, on every platform: at
#: the block's state (d_state 128 x headdim 64) 64 is the CPU's fastest (scripts/bench_chunkwise.py
#: --real --key-dim 128 --value-dim 64: forward+backward 1.8x faster than at 16, the chunk of
#: ResNet-BK's 8 x 8 states on the CPU) and feeds a GPU's matrix units.
SSD_CHUNK = 64


class Mamba2Carry(NamedTuple):
  """Streaming state of one Mamba-2 block."""
  conv: jax.Array  # (B, d_conv-1, d_inner + 2 ngroups d_state): the last inputs of the conv
  ssm: jax.Array  # (B, H, d_state, headdim) float32 (float64 under float64): the SSD state


def ssd(x, dt, a, b, c, d_skip, state, *, chunk: int = SSD_CHUNK):
  """The SSD layer: y_t = h_t^T C_t + D x_t for h_t = exp(dt_t A) h_{t-1} + dt_t B_t x_t^T.

  Args:
    x: (B, N, H, P) values per head (P = headdim).
    dt: (B, N, H) positive step sizes.
    a: (H,) negative decay rates A.
    b, c: (B, N, G, S) input and output projections per group (S = d_state); head h reads
      group h // (H / G), as the reference groups its heads.
    d_skip: (H,) skip weights D.
    state: (B, H, S, P) h before position 0, or None (zeros).
    chunk: tokens per matmul chunk of `ops.chunkwise`.

  Returns:
    (y (B, N, H, P), h at the last position (B, H, S, P)), in the dtype of the inputs.
  """
  heads, groups = x.shape[-2], b.shape[-2]
  per_group = lambda t: jnp.repeat(t, heads // groups, axis=-2)  # (B, N, H, S)
  y, state = chunkwise(per_group(c), per_group(b), x, dt * a, dt, state, chunk=chunk)
  return y + d_skip[:, None] * x, state


class GatedRMSNorm(nnx.Module):
  """norm(y * silu(z)) * scale, the RMS statistics over groups of `group_size` channels.

  The reference's RMSNormGated with norm_before_gate=False; statistics in at least float32,
  the output in y's dtype.
  """

  def __init__(self, d: int, *, group_size: int, param_dtype=jnp.float32, eps: float = NORM_EPS):
    self.scale = nnx.Param(
        nnx.with_partitioning(nnx.initializers.ones_init(), ("mlp",))(None, (d,), param_dtype))
    self.group_size, self.eps = group_size, eps

  def __call__(self, y: jax.Array, z: jax.Array, out_dtype) -> jax.Array:
    """y, z (..., d) -> (..., d) in out_dtype."""
    wide = jnp.promote_types(jnp.promote_types(y.dtype, z.dtype), jnp.float32)
    g = y.astype(wide) * jax.nn.silu(z.astype(wide))
    g = g.reshape(*g.shape[:-1], -1, self.group_size)
    g = g * jax.lax.rsqrt(jnp.mean(g * g, axis=-1, keepdims=True) + self.eps)
    g = g.reshape(*g.shape[:-2], -1) * self.scale[...].astype(wide)
    return g.astype(out_dtype)


class Mamba2Block(nnx.Module):
  """Pre-norm residual Mamba-2 block.

  Args (constructor):
    d_model: residual width; d_state: SSM state per head and value (S); d_conv: conv width;
    expand: d_inner = expand * d_model; headdim: values per head (P; H = d_inner / P heads);
    ngroups: groups of heads sharing B and C; chunk: tokens per matmul chunk of the SSD kernel;
    n_layers: the depth (out_proj's init scale).
  """

  def __init__(self, d_model: int, *, d_state: int, d_conv: int, expand: int, headdim: int,
               ngroups: int, chunk: int, n_layers: int, rngs: nnx.Rngs,
               dtype=jnp.float32, param_dtype=jnp.float32):
    d_inner = expand * d_model
    if d_inner % headdim or (d_inner // headdim) % ngroups:
      raise ValueError(f"headdim {headdim} must divide d_inner {d_inner} into a number of heads "
                       f"that ngroups {ngroups} divides")
    nheads = d_inner // headdim
    conv_dim = d_inner + 2 * ngroups * d_state
    self.d_inner, self.d_state, self.d_conv, self.headdim = d_inner, d_state, d_conv, headdim
    self.nheads, self.ngroups, self.conv_dim, self.chunk = nheads, ngroups, conv_dim, chunk
    self.dtype = dtype
    # the SSD inputs, its state, dt and exp(dt A) in at least float32 (dt moves exp(dt A) by
    # |A| dt times its own relative error: bf16 would cost ~1e-2)
    self.ssm_dtype = jnp.promote_types(dtype, jnp.float32)
    kw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype)
    self.norm = RMSNorm(d_model, param_dtype=param_dtype)
    # order [z, x, B, C, dt] as the reference's in_proj
    self.in_proj = dense(d_model, 2 * d_inner + 2 * ngroups * d_state + nheads, ("embed", "mlp"),
                         scale=1.0 / 3.0, **kw)
    bound = 1.0 / math.sqrt(d_conv)
    conv_init = jax.nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform", in_axis=0,
                                                     out_axis=1)  # U(+-1/sqrt(d_conv))
    self.conv_w = nnx.Param(nnx.with_partitioning(conv_init, ("conv", "mlp"))(
        rngs.params(), (d_conv, conv_dim), param_dtype))
    self.conv_b = nnx.Param(nnx.with_partitioning(
        lambda key, shape, dt: jax.random.uniform(key, shape, dt, -bound, bound), ("mlp",))(
            rngs.params(), (conv_dim,), param_dtype))
    log_dt = jax.random.uniform(rngs.params(), (nheads,)) * (math.log(DT_MAX) - math.log(DT_MIN))
    dt = jnp.maximum(jnp.exp(log_dt + math.log(DT_MIN)), DT_FLOOR)
    inv_softplus = lambda *_: (dt + jnp.log(-jnp.expm1(-dt))).astype(param_dtype)
    self.dt_bias = nnx.Param(nnx.with_partitioning(inv_softplus, ("heads",))(None, None, None))
    a = jax.random.uniform(rngs.params(), (nheads,), jnp.float32, *A_INIT_RANGE)
    self.a_log = nnx.Param(nnx.with_partitioning(
        lambda *_: jnp.log(a).astype(param_dtype), ("heads",))(None, None, None))
    self.d_skip = nnx.Param(nnx.with_partitioning(nnx.initializers.ones_init(), ("heads",))(
        None, (nheads,), param_dtype))
    self.out_norm = GatedRMSNorm(d_inner, group_size=d_inner // ngroups, param_dtype=param_dtype)
    self.out_proj = dense(d_inner, d_model, ("mlp", "embed"), scale=1.0 / (3.0 * n_layers), **kw)

  def init_carry(self, batch_size: int) -> Mamba2Carry:
    """Zero streaming state (a fresh sequence)."""
    return Mamba2Carry(
        conv=jnp.zeros((batch_size, self.d_conv - 1, self.conv_dim), self.dtype),
        ssm=jnp.zeros((batch_size, self.nheads, self.d_state, self.headdim), self.ssm_dtype))

  def __call__(self, x: jax.Array, carry: Mamba2Carry | None, pos: jax.Array,
               bias: jax.Array | None) -> tuple[jax.Array, Mamba2Carry, dict[str, jax.Array]]:
    """One block over a chunk.

    Args:
      x: (B, N, d_model) residual stream.
      carry: streaming state from the previous chunk, or None for a fresh sequence.
      pos: absolute position of x[:, 0] (unused: the SSM carries position implicitly).
      bias: unused (the prime-bump bias is a ResNet-BK feature).

    Returns:
      (x + block(x), new carry, {"aux_loss": 0}).
    """
    del pos, bias
    if carry is None:
      carry = self.init_carry(x.shape[0])
    conv_state, h0 = carry
    u = self.norm(x)
    kernel = self.in_proj.kernel[...].astype(u.dtype)
    zxbc = jnp.dot(u, kernel[:, :-self.nheads])
    # dt's pre-activation accumulates into float32 and takes its bias there (as MambaBlock and
    # the reference's kernel): a bf16 rounding of dt_raw + dt_bias would move exp(dt A)
    dt_raw = jnp.dot(u, kernel[:, -self.nheads:], preferred_element_type=self.ssm_dtype)
    z, xbc = jnp.split(zxbc, [self.d_inner], axis=-1)
    xpad = jnp.concatenate([conv_state.astype(xbc.dtype), xbc], axis=1)  # (B, k-1+N, conv_dim)
    n = xbc.shape[1]
    w = self.conv_w[...].astype(xbc.dtype)
    conv = (sum(xpad[:, k:k + n] * w[k] for k in range(self.d_conv))
            + self.conv_b[...].astype(xbc.dtype))  # an f32 bias would promote to f32
    new_conv_state = xpad[:, n:]  # the last d_conv-1 inputs
    xs, b, c = jnp.split(jax.nn.silu(conv).astype(self.ssm_dtype),
                         [self.d_inner, self.d_inner + self.ngroups * self.d_state], axis=-1)
    wide = lambda t: t.astype(self.ssm_dtype)
    dt = jax.nn.softplus(dt_raw + wide(self.dt_bias[...]))  # (B, N, H)
    a = -jnp.exp(wide(self.a_log[...]))
    groups = lambda t: t.reshape(*t.shape[:-1], self.ngroups, self.d_state)
    y, h_last = ssd(xs.reshape(*xs.shape[:-1], self.nheads, self.headdim), dt, a, groups(b),
                    groups(c), wide(self.d_skip[...]), h0, chunk=self.chunk)
    y = self.out_norm(y.reshape(*y.shape[:-2], self.d_inner), z, x.dtype)
    return (x + self.out_proj(y), Mamba2Carry(conv=new_conv_state, ssm=h_last),
            {"aux_loss": jnp.zeros((), jnp.float32)})

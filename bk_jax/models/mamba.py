"""Mamba (selective SSM) block: the recurrent baseline of the "mamba" model kind.

Block (Gu & Dao 2023): x + out_proj(SSM(silu(conv(in_x))) * silu(in_z)), pre-RMSNorm, where
in_proj splits into (in_x, in_z), conv is a causal depthwise convolution of width d_conv, and
the selective SSM has input-dependent Delta, B, C:

    h_t = exp(Delta_t A) h_{t-1} + Delta_t x_t B_t,    y_t = C_t . h_t + D x_t,

with the S4D-real init A = -(1, 2, ..., d_state) per channel and Delta's bias initialised so that
softplus(bias) is log-uniform in [1e-3, 1e-1].

The scan runs in `jax.checkpoint`-ed chunks: reverse mode keeps only the (B, d_inner, d_state)
state at chunk boundaries and recomputes one chunk at a time, so forward+backward at 131k tokens
fits in CPU memory. Inside a chunk it is a sequential `lax.scan` (CPU) or a log-depth
`lax.associative_scan` over (exp(Delta A), Delta x B) pairs (accelerators); `scan_method` picks,
"auto" by platform. Streaming state: the last d_conv-1 conv
inputs and the SSM state.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from bk_jax.models.layers import RMSNorm, dense
from bk_jax.ops.linear_scan import linear_scan, resolve_scan_method
from bk_jax.ops.scan import checkpointed_chunks

class MambaCarry(NamedTuple):
  """Streaming state of one Mamba block."""
  conv: jax.Array  # (B, d_conv-1, d_inner): the last inputs of the causal conv
  ssm: jax.Array  # (B, d_inner, d_state) float32: the selective-scan state


def selective_scan(x, dt, a, b, c, h0, *, chunk: int, method: str = "auto"):
  """Chunked, checkpointed selective scan (`ops.scan.checkpointed_chunks`).

  Within each jax.checkpoint-ed chunk of L steps:
  * "sequential": a per-step `lax.scan` that forms exp(dt_t A) and dt_t x_t B_t on the fly and
    contracts with C_t at once (never materialises (L, B, D, S); the CPU's fastest form, 3x the
    materialised forms measured on the CPU);
  * "associative": builds the (L, B, D, S) pairs (exp(dt A), dt x B) and solves the recurrence
    with `ops.linear_scan` in log depth (the accelerator form); the pairs exist one chunk at a
    time, so memory stays bounded by the chunk.

  Args:
    x, dt: (B, N, D) inputs and positive step sizes.
    a: (D, S) negative real state matrix (diagonal per channel).
    b, c: (B, N, S) input-dependent projections.
    h0: (B, D, S) initial state.
    chunk: time steps per checkpointed chunk.
    method: "auto", "sequential" or "associative" (`ops.linear_scan.resolve_scan_method`).

  Returns:
    y: (B, N, D) = C_t . h_t (the D-skip is added by the caller); h_last: (B, D, S).
  """
  method = resolve_scan_method(method)

  def step(h, inp):
    x_t, dt_t, b_t, c_t = inp
    h = jnp.exp(dt_t[:, :, None] * a) * h + (dt_t * x_t)[:, :, None] * b_t[:, None, :]
    return h, jnp.einsum("bds,bs->bd", h, c_t)

  def sequential_chunk(h, inp):
    return jax.lax.scan(step, h, inp, unroll=4)

  def associative_chunk(h, inp):
    x_l, dt_l, b_l, c_l = inp  # (L, B, D), (L, B, D), (L, B, S), (L, B, S)
    decay = jnp.exp(dt_l[..., None] * a)  # (L, B, D, S)
    drive = (dt_l * x_l)[..., None] * b_l[:, :, None, :]
    hs, h_last = linear_scan(decay, drive, h, method="associative")
    return h_last, jnp.einsum("lbds,lbs->lbd", hs, c_l)

  time_major = lambda t: jnp.moveaxis(t, 1, 0)
  h_last, y = checkpointed_chunks(
      sequential_chunk if method == "sequential" else associative_chunk, h0,
      tuple(map(time_major, (x, dt, b, c))), chunk=chunk)
  return jnp.moveaxis(y, 0, 1), h_last


class MambaBlock(nnx.Module):
  """Pre-norm residual Mamba block.

  Args (constructor):
    d_model: residual width; d_state: SSM state per channel; d_conv: conv width;
    expand: d_inner = expand * d_model; chunk: checkpointed scan chunk length;
    scan_method: "auto" | "sequential" | "associative" (see `selective_scan`).
  """

  def __init__(self, d_model: int, *, d_state: int, d_conv: int, expand: int, chunk: int,
               n_layers: int, rngs: nnx.Rngs, dtype=jnp.float32, param_dtype=jnp.float32,
               scan_method: str = "auto"):
    d_inner = expand * d_model
    dt_rank = math.ceil(d_model / 16)
    self.d_inner, self.d_state, self.d_conv, self.dt_rank, self.chunk = (
        d_inner, d_state, d_conv, dt_rank, chunk)
    self.dtype = dtype
    resolve_scan_method(scan_method)  # fail fast on a bad name; "auto" resolves when traced
    self.scan_method = scan_method
    kw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype)
    self.norm = RMSNorm(d_model, param_dtype=param_dtype)
    self.in_proj = dense(d_model, 2 * d_inner, ("embed", "mlp"), **kw)
    conv_init = jax.nn.initializers.variance_scaling(1.0, "fan_in", "normal", in_axis=0,
                                                     out_axis=1)
    self.conv_w = nnx.Param(nnx.with_partitioning(conv_init, ("conv", "mlp"))(
        rngs.params(), (d_conv, d_inner), param_dtype))
    self.conv_b = nnx.Param(nnx.with_partitioning(nnx.initializers.zeros_init(), ("mlp",))(
        None, (d_inner,), param_dtype))
    self.x_proj = dense(d_inner, dt_rank + 2 * d_state, ("mlp", None), **kw)
    self.dt_proj = dense(dt_rank, d_inner, (None, "mlp"), use_bias=True, **kw)
    # softplus(bias) log-uniform in [1e-3, 1e-1] (Mamba's dt init); bias = softplus^{-1}(dt)
    dt = jnp.exp(jax.random.uniform(rngs.params(), (d_inner,)) * (math.log(0.1) - math.log(1e-3))
                 + math.log(1e-3))
    self.dt_proj.bias[...] = (dt + jnp.log(-jnp.expm1(-dt))).astype(param_dtype)
    a_init = lambda *_: jnp.log(jnp.broadcast_to(
        jnp.arange(1, d_state + 1, dtype=jnp.float32), (d_inner, d_state))).astype(param_dtype)
    self.a_log = nnx.Param(nnx.with_partitioning(a_init, ("mlp", "state"))(None, None, None))
    self.d_skip = nnx.Param(nnx.with_partitioning(nnx.initializers.ones_init(), ("mlp",))(
        None, (d_inner,), param_dtype))
    # residual-branch output scaled by 1/sqrt(2 n_layers) (GPT-2 style) to keep depth stable
    self.out_proj = dense(d_inner, d_model, ("mlp", "embed"), scale=1.0 / (2 * n_layers), **kw)

  def init_carry(self, batch_size: int) -> MambaCarry:
    """Zero streaming state (a fresh sequence)."""
    return MambaCarry(conv=jnp.zeros((batch_size, self.d_conv - 1, self.d_inner), self.dtype),
                      ssm=jnp.zeros((batch_size, self.d_inner, self.d_state), jnp.float32))

  def scan_inputs(self, x: jax.Array, conv_state: jax.Array):
    """The selective scan's inputs for one chunk.

    Args:
      x: (B, N, d_model) residual stream; conv_state: (B, d_conv - 1, d_inner) the previous
        chunk's last conv inputs (zeros for a fresh sequence).

    Returns:
      (xc, z, dt, a, b, c, conv'): the conv'd input xc (B, N, D) and the gate's z (B, N, D),
      the steps dt (B, N, D) float32, a = -exp(A_log) (D, S), b and c (B, N, S), the new conv
      state.
    """
    xi, z = jnp.split(self.in_proj(self.norm(x)), 2, axis=-1)
    xpad = jnp.concatenate([conv_state.astype(xi.dtype), xi], axis=1)  # (B, k-1+N, D)
    n = xi.shape[1]
    w = self.conv_w[...].astype(xi.dtype)
    conv = (sum(xpad[:, k:k + n] * w[k] for k in range(self.d_conv))
            + self.conv_b[...].astype(xi.dtype))  # an f32 bias would promote xc to f32
    new_conv_state = xpad[:, n:]  # the last d_conv-1 inputs
    xc = jax.nn.silu(conv)
    dt_in, b, c = jnp.split(self.x_proj(xc), [self.dt_rank, self.dt_rank + self.d_state], -1)
    f32 = lambda t: t.astype(jnp.float32)
    # dt's pre-activation is a bias of -2.3..-6.9 plus a small rank-dt_rank projection: rounded
    # to bf16 (spacing 2^-5 at |x| >= 4) it would move dt by up to ~1.6% and exp(dt A) with it,
    # so the bf16 matmul accumulates into float32 and the bias is added in float32 (as Mamba's
    # own kernel adds delta_bias in fp32 before its softplus).
    dt_pre = jnp.dot(dt_in, self.dt_proj.kernel[...].astype(dt_in.dtype),
                     preferred_element_type=jnp.float32) + f32(self.dt_proj.bias[...])
    dt = jax.nn.softplus(dt_pre)
    a = -jnp.exp(f32(self.a_log[...]))
    return xc, z, dt, a, b, c, new_conv_state

  def __call__(self, x: jax.Array, carry: MambaCarry | None, pos: jax.Array,
               bias: jax.Array | None) -> tuple[jax.Array, MambaCarry, dict[str, jax.Array]]:
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
    xc, z, dt, a, b, c, new_conv_state = self.scan_inputs(x, carry.conv)
    f32 = lambda t: t.astype(jnp.float32)
    y, h_last = selective_scan(f32(xc), dt, a, f32(b), f32(c), carry.ssm, chunk=self.chunk,
                               method=self.scan_method)
    y = (y + f32(xc) * f32(self.d_skip[...])).astype(z.dtype) * jax.nn.silu(z)
    return (x + self.out_proj(y), MambaCarry(conv=new_conv_state, ssm=h_last),
            {"aux_loss": jnp.zeros((), jnp.float32)})

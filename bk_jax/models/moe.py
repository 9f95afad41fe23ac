"""Mixture of experts with a parameter-free scattering router or a learned top-k router.

Scattering router (DESIGN §2.6): the BK layer's own resolvent decides the expert of each token.
With w_i = mean_h(eta_h * g_{i,h}) (inside the closed upper half unit disk, Im w_i > 0):

* phase delta_i = arg w_i in (0, pi); primary expert e_i = floor(delta_i / pi * E), clipped;
* a token is *resonant* when |w_i| > `RESONANCE_THRESHOLD` (decided per token, so routing of
  token i depends on tokens <= i only; the reference's batch-wide quantile is not causal);
  a resonant token also goes to the neighbouring expert on the side of its fractional phase,
  weights proportional to 1/(1+|e-e_i|) -> (2/3, 1/3).

Learned router: softmax(W_r u), top-k renormalised gates, Switch-style load-balancing loss
E * sum_e f_e P_e (f_e: dispatch fraction, P_e: mean gate probability), weighted by
`aux_loss_weight`.

Dispatch is dense: every expert runs on every token and the outputs are combined with the
(sparse) routing weights. That costs E x the FLOPs of one FFN but has static shapes, no
capacity drops and no token loss; it is the right trade for the small E (<= 8) used here.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx

from bk_jax.models.layers import dense

#: How each aux figure the MoE emits combines over layers (and microbatches): see
#: bk_jax.models.kinds.reduce_aux. Declared here, next to the code that computes them.
AUX_REDUCE = {
    "moe/expert_load": functools.partial(jnp.mean, axis=0),  # (E,) per layer -> (E,)
    "moe/routing_entropy": jnp.mean,
}

RESONANCE_THRESHOLD = 0.5  # |mean_h eta g| above which a token is resonant (|eta g| <= 1)


def scattering_route(w: jax.Array, num_experts: int) -> jax.Array:
  """Parameter-free routing weights from the scattering amplitude.

  Args:
    w: complex (..., N) scattering amplitude with Im w > 0 and |w| <= 1.
    num_experts: E.

  Returns:
    float32 (..., N, E) routing weights; each row sums to 1. Pure per-token function of w, so it
    is causal whenever w is.
  """
  w = jax.lax.stop_gradient(w)  # routing is discrete; gradients flow through the experts
  pos = jnp.angle(w) / jnp.pi * num_experts  # in (0, E)
  primary = jnp.clip(jnp.floor(pos).astype(jnp.int32), 0, num_experts - 1)
  frac = pos - primary
  step = jnp.where(frac >= 0.5, 1, -1)
  neighbour = primary + step
  neighbour = jnp.where((neighbour < 0) | (neighbour >= num_experts), primary - step, neighbour)
  resonant = jnp.abs(w) > RESONANCE_THRESHOLD
  one_p = jax.nn.one_hot(primary, num_experts, dtype=jnp.float32)
  one_n = jax.nn.one_hot(neighbour, num_experts, dtype=jnp.float32)
  # weights 1 and 1/(1+1) before normalisation -> 2/3 and 1/3
  mixed = (2.0 * one_p + one_n) / 3.0
  return jnp.where(resonant[..., None], mixed, one_p)


class MoE(nnx.Module):
  """Experts of width d_ff with a "scattering" or "learned" router.

  Args (constructor):
    d_model, d_ff: expert input/hidden width.
    num_experts: E.
    router: "scattering" (needs the block's scattering amplitude) or "learned".
    top_k: experts per token (learned router).
    aux_loss_weight: weight of the load-balancing loss (learned router; the scattering router
      has no parameters and no auxiliary loss).
  """

  def __init__(self, d_model: int, d_ff: int, num_experts: int, router: str, top_k: int,
               aux_loss_weight: float, *, rngs: nnx.Rngs, out_scale: float = 1.0,
               dtype=jnp.float32, param_dtype=jnp.float32):
    e = num_experts
    init_in = jax.nn.initializers.variance_scaling(1.0, "fan_in", "normal", in_axis=-2,
                                                   out_axis=-1, batch_axis=(0,))
    init_out = jax.nn.initializers.variance_scaling(out_scale, "fan_in", "normal", in_axis=-2,
                                                    out_axis=-1, batch_axis=(0,))
    zeros = nnx.initializers.zeros_init()
    key = rngs.params
    self.w_in = nnx.Param(nnx.with_partitioning(init_in, ("experts", "embed", "mlp"))(
        key(), (e, d_model, d_ff), param_dtype))
    self.b_in = nnx.Param(nnx.with_partitioning(zeros, ("experts", "mlp"))(
        key(), (e, d_ff), param_dtype))
    self.w_out = nnx.Param(nnx.with_partitioning(init_out, ("experts", "mlp", "embed"))(
        key(), (e, d_ff, d_model), param_dtype))
    self.b_out = nnx.Param(nnx.with_partitioning(zeros, ("experts", "embed"))(
        key(), (e, d_model), param_dtype))
    self.router_kind = router
    self.num_experts = e
    self.top_k = top_k
    self.aux_loss_weight = aux_loss_weight
    self.dtype = dtype
    if router == "learned":
      self.router = dense(d_model, e, ("embed", "experts"), rngs=rngs, scale=0.1,
                          dtype=jnp.float32, param_dtype=param_dtype)

  def _learned_route(self, u: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Top-k gates (B, N, E) and the weighted load-balancing loss (scalar)."""
    probs = jax.nn.softmax(self.router(u.astype(jnp.float32)), axis=-1)
    _, idx = jax.lax.top_k(probs, self.top_k)
    mask = jax.nn.one_hot(idx, self.num_experts, dtype=jnp.float32).sum(-2)  # (B, N, E)
    gates = probs * mask
    gates = gates / jnp.sum(gates, axis=-1, keepdims=True)
    frac = jnp.mean(mask, axis=tuple(range(mask.ndim - 1))) / self.top_k
    mean_p = jnp.mean(probs, axis=tuple(range(probs.ndim - 1)))
    aux = self.aux_loss_weight * self.num_experts * jnp.sum(frac * mean_p)
    return gates, aux

  def __call__(self, u: jax.Array, amplitude: jax.Array | None = None
               ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Routes and mixes the experts.

    Args:
      u: (B, N, d_model) normalised block input.
      amplitude: complex (B, N) scattering amplitude (scattering router only).

    Returns:
      y: (B, N, d_model) expert mixture.
      stats: {"aux_loss": scalar, "moe/expert_load": (E,) sums to 1,
              "moe/routing_entropy": entropy (nats) of the expert load; log E when balanced}.
    """
    if self.router_kind == "scattering":
      weights = scattering_route(amplitude, self.num_experts)
      aux_loss = jnp.zeros((), jnp.float32)
    else:
      weights, aux_loss = self._learned_route(u)
    dt = self.dtype
    # every parameter is cast to the activation dtype: an f32 bias would silently promote the
    # expert matmuls and the residual stream to f32 under bf16 mixed precision
    h = jnp.einsum("bnd,edf->bnef", u.astype(dt), self.w_in[...].astype(dt))
    h = h + self.b_in[...].astype(dt)
    h = jax.nn.gelu(h) * weights[..., None].astype(dt)
    y = jnp.einsum("bnef,efd->bnd", h, self.w_out[...].astype(dt))
    y = y + jnp.einsum("bne,ed->bnd", weights.astype(dt), self.b_out[...].astype(dt))
    load = jnp.mean(weights, axis=(0, 1))
    entropy = -jnp.sum(load * jnp.log(jnp.where(load > 0, load, 1.0)))
    return y, {"aux_loss": aux_loss, "moe/expert_load": load, "moe/routing_entropy": entropy}

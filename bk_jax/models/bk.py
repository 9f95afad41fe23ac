"""ResNet-BK block: causal resolvent features of a learned Schrödinger operator, plus FFN/MoE.

Per block, with u = RMSNorm(x) (B, N, d_model):

    v = W_v u (+ prime-bump bias)                      (B, N, H) real potentials, H = n_heads
    g = causal_diag(v; t_h, z_h)                       (B, N, H) complex  (DESIGN §2.2)
        or the semiseparable output with U = W_U u     (DESIGN §2.4, rank r from config)
    f = [Re eta g, Im eta g]                           (B, N, 2H), inside the unit disk (§2.8)
    x' = x + FFN-or-MoE(u) + scale * W_o f

Per head: hopping t_h = softplus(raw) > 0 (init 1), shift z_h = E_h + i eta_h with
eta_h = eta_min + softplus(raw) >= eta_min; E_h is spread over [-3.5, -0.5] and eta_h is
log-spaced over [0.1, 1] at init so heads see different memory lengths. All of them are
parameters and receive exact gradients through the ops' custom VJPs.

Streaming state per block: the resolvent carry g_{N-1} (B, H) complex, or the semiseparable
carry (g, x, y, M): a few numbers per head, independent of how many tokens were consumed.

Birman–Schwinger monitors (`use_birman_schwinger`, DESIGN §2.5) are computed on the
stop-gradient potentials: Schatten-1 on the last `bs_window` positions, exact Schatten-2 and the
Gershgorin condition bound, all O(N). Precision upgrade: when the bound exceeds
`precision_threshold` the layer's resolvent is recomputed in complex128 (one `lax.cond`). This
needs jax_enable_x64; without it the decision is still counted ("bk/precision_flags") but no
recomputation happens and "bk/precision_upgrades" stays 0.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from bk_jax.models.bk_mixers import BKVariantBlock
from bk_jax.models.config import uses_bk_variant
from bk_jax.models.layers import FFN, RMSNorm, dense, per_token
from bk_jax.models.moe import AUX_REDUCE as MOE_AUX_REDUCE
from bk_jax.models.moe import MoE
from bk_jax.ops import birman_schwinger, resolvent, semiseparable
from bk_jax.sharding import constrain

#: How each aux figure a ResNet-BK block emits combines over layers (and microbatches): the
#: Birman-Schwinger monitors of `_monitored_core` and the MoE's (bk_jax.models.kinds.reduce_aux).
AUX_REDUCE = {
    "bk/schatten_s1": jnp.mean,
    "bk/schatten_s2": jnp.mean,
    "bk/condition_number": jnp.max,
    "bk/precision_flags": jnp.sum,
    "bk/precision_upgrades": jnp.sum,
    **MOE_AUX_REDUCE,
}

PRIME_BUMP_EPS = 0.05  # epsilon of DESIGN §2.7 (bump width sqrt(eps) in log-position)
PRIME_BUMP_KMAX = 2
PRIME_BUMP_PMAX = 4096  # bumps exist for primes <= PMAX, i.e. positions up to ~PMAX


def _inv_softplus(y: np.ndarray) -> np.ndarray:
  return y + np.log(-np.expm1(-y))


def _primes(limit: int) -> np.ndarray:
  sieve = np.ones(limit + 1, bool)
  sieve[:2] = False
  for p in range(2, int(limit ** 0.5) + 1):
    if sieve[p]:
      sieve[p * p::p] = False
  return np.nonzero(sieve)[0]


def prime_bump_potential(positions: jax.Array, scale: float) -> jax.Array:
  """Prime-bump potential of DESIGN §2.7 at absolute token positions.

  V(x) = s * sum_p sum_{k<=kmax} log p / p^{k(1/2+eps)} * eps^{-1/2} * exp(-(x - log p)^2/(2 eps))
  evaluated at x = log(1 + position), so bump p sits at token position ~p - 1. No table: a
  pure function of the absolute position, which the streaming cache carries.

  Args:
    positions: (N,) int absolute positions.
    scale: s.

  Returns:
    (N,) float32 potential bias (shared by all heads).
  """
  p = _primes(PRIME_BUMP_PMAX).astype(np.float64)
  k = np.arange(1, PRIME_BUMP_KMAX + 1, dtype=np.float64)[:, None]
  amp = np.sum(np.log(p) / p ** (k * (0.5 + PRIME_BUMP_EPS)), axis=0) / math.sqrt(PRIME_BUMP_EPS)
  x = jnp.log1p(positions.astype(jnp.float32))[:, None]
  d = x - jnp.asarray(np.log(p), jnp.float32)
  bumps = jnp.exp(-d * d / (2 * PRIME_BUMP_EPS)) @ jnp.asarray(amp, jnp.float32)
  return scale * bumps


class BKBlock(nnx.Module):
  """One pre-norm ResNet-BK block (see the module docstring).

  Args (constructor):
    cfg: the model ConfigDict (d_model, n_heads, d_ff, eta_min, resolvent_method,
      use_semiseparable, semiseparable_rank, use_birman_schwinger, bs_window,
      precision_threshold, use_moe, num_experts, router, top_k, aux_loss_weight).
  """

  def __init__(self, cfg: Any, *, rngs: nnx.Rngs, dtype=jnp.float32, param_dtype=jnp.float32):
    d, h = cfg.d_model, cfg.n_heads
    out_scale = 1.0 / (2 * cfg.n_layers)
    kw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype)
    self.n_heads, self.eta_min, self.method = h, cfg.eta_min, cfg.resolvent_method
    self.semiseparable_rank = cfg.semiseparable_rank if cfg.use_semiseparable else 0
    self.monitors, self.bs_window = cfg.use_birman_schwinger, cfg.bs_window
    self.precision_threshold = cfg.precision_threshold
    self.dtype = dtype

    def head_param(values: np.ndarray, axes=("heads",)) -> nnx.Param:
      init = lambda *_: jnp.asarray(values, param_dtype)
      return nnx.Param(nnx.with_partitioning(init, axes)(None, values.shape, param_dtype))

    eta0 = np.geomspace(0.1, 1.0, h)
    self.hopping_raw = head_param(np.full(h, _inv_softplus(1.0)))
    self.energy = head_param(np.linspace(-3.5, -0.5, h))
    self.eta_raw = head_param(_inv_softplus(np.maximum(eta0 - cfg.eta_min, 1e-3)))
    self.norm = RMSNorm(d, param_dtype=param_dtype)
    self.w_v = dense(d, h, ("embed", "heads"), **kw)
    if self.semiseparable_rank:
      r = self.semiseparable_rank
      self.w_u = dense(d, h * r, ("embed", "heads"), **kw)
      self.s = head_param(np.full((h, r), 0.1), ("heads", None))
    self.w_o = dense(2 * h, d, ("heads", "embed"), scale=out_scale, **kw)
    self.scale = nnx.Param(nnx.with_partitioning(nnx.initializers.ones_init(), ("embed",))(
        None, (d,), param_dtype))
    if cfg.use_moe:
      self.ffn = MoE(d, cfg.d_ff, cfg.num_experts, cfg.router, cfg.top_k, cfg.aux_loss_weight,
                     out_scale=out_scale, **kw)
    else:
      self.ffn = FFN(d, cfg.d_ff, out_scale=out_scale, **kw)

  # -- parameters in physical form -----------------------------------------------------------
  def hopping(self) -> jax.Array:
    """(H,) t_h > 0."""
    return jax.nn.softplus(self.hopping_raw[...].astype(jnp.float32))

  def eta(self) -> jax.Array:
    """(H,) eta_h >= eta_min."""
    return self.eta_min + jax.nn.softplus(self.eta_raw[...].astype(jnp.float32))

  def shift(self) -> jax.Array:
    """(H,) complex z_h = E_h + i eta_h."""
    return jax.lax.complex(self.energy[...].astype(jnp.float32), self.eta())

  def init_carry(self, batch_size: int):
    """Fresh-sequence streaming state: complex (B, H), or the semiseparable carry."""
    if self.semiseparable_rank:
      return semiseparable.init_carry((batch_size,), self.n_heads, self.semiseparable_rank)
    return jnp.zeros((batch_size, self.n_heads), jnp.complex64)

  # -- forward -------------------------------------------------------------------------------
  def _core(self, v, u_low, carry, hopping, z):
    """g (B, N, H) complex and the new carry; precision follows the dtype of v."""
    if self.semiseparable_rank:
      return semiseparable.causal_diag(v, u_low, self.s[...].astype(v.dtype), hopping=hopping,
                                       z=z, carry=carry)
    return resolvent.causal_diag(v, hopping=hopping, z=z, carry=carry, method=self.method)

  def _monitored_core(self, v, u_low, carry, hopping, z):
    """_core plus the Birman–Schwinger monitors and the precision-upgrade decision."""
    vs, ts, zs = jax.lax.stop_gradient((v, hopping, z))
    bound = birman_schwinger.condition_bound(vs, hopping=ts, z=zs)  # (B, H)
    flagged = jnp.max(bound) > self.precision_threshold
    (g, carry), upgraded = birman_schwinger.with_precision_upgrade(
        self._core, (v, u_low, carry, hopping, z), flagged=flagged)
    stats = {
        "bk/schatten_s1": jnp.mean(birman_schwinger.schatten_s1_window(
            vs, hopping=ts, z=zs, window=self.bs_window)),
        "bk/schatten_s2": jnp.mean(birman_schwinger.schatten_s2(vs, hopping=ts, z=zs)),
        "bk/condition_number": jnp.max(bound),
        "bk/precision_flags": flagged.astype(jnp.int32),
        "bk/precision_upgrades": upgraded.astype(jnp.int32),
    }
    return g, carry, stats

  def __call__(self, x: jax.Array, carry, pos: jax.Array, bias: jax.Array | None):
    """One block over a chunk.

    Args:
      x: (B, N, d_model) residual stream.
      carry: streaming state from the previous chunk, or None for a fresh sequence.
      pos: absolute position of x[:, 0] (unused here: the prime-bump bias arrives in `bias`).
      bias: (N,) potential bias (prime bump) or None.

    Returns:
      (x', new carry, aux) with aux = {"aux_loss": scalar, ...monitor/MoE statistics}.
    """
    del pos
    if carry is None:
      carry = self.init_carry(x.shape[0])
    u = self.norm(x)
    # per-head potentials: heads over tensor, tokens over sequence (the resolvent's layout)
    v = constrain(per_token(self.w_v, u).astype(jnp.float32),
                  ("activation_batch", "activation_length", "activation_heads"))
    if bias is not None:
      v = v + bias[:, None]
    u_low = None
    if self.semiseparable_rank:
      u_low = per_token(self.w_u, u).astype(jnp.float32).reshape(
          *u.shape[:-1], self.n_heads, self.semiseparable_rank)
    hopping, z, eta = self.hopping(), self.shift(), self.eta()
    if self.monitors:
      g, carry, aux = self._monitored_core(v, u_low, carry, hopping, z)
    else:
      g, carry = self._core(v, u_low, carry, hopping, z)
      aux = {}
    eg = g * eta  # |eta g| <= 1: well-scaled features with no normalisation (DESIGN §2.8)
    feats = jnp.concatenate([jnp.real(eg), jnp.imag(eg)], axis=-1).astype(self.dtype)
    mix = per_token(lambda f: self.scale[...].astype(self.dtype) * self.w_o(f), feats)
    if isinstance(self.ffn, MoE):
      y, moe_stats = self.ffn(u, jnp.mean(eg, axis=-1))
      aux.update(moe_stats)
    else:
      y = self.ffn(u)
      aux["aux_loss"] = jnp.zeros((), jnp.float32)
    return x + y + mix, carry, aux


def make_bk_block(cfg: Any, *, rngs: nnx.Rngs, dtype=jnp.float32, param_dtype=jnp.float32):
  """The seed BKBlock, or the variant block (bk_mixers.py) when a variant flag is set.

  Args:
    cfg: the model ConfigDict (`config.uses_bk_variant` decides).
    rngs, dtype, param_dtype: as for BKBlock.

  Returns:
    BKBlock or bk_mixers.BKVariantBlock (same block interface).
  """
  cls = BKVariantBlock if uses_bk_variant(cfg) else BKBlock
  return cls(cfg, rngs=rngs, dtype=dtype, param_dtype=param_dtype)

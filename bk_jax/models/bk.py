"""The ResNet-BK block: causal resolvent features of a learned Schrödinger operator, plus FFN/MoE.

One block class; its token mixer (`bk_mixer`) is a pure function in `bk_mixers.py`. Per block,
with u = RMSNorm(x) (B, N, d_model):

    u' = silu(causal depthwise conv_4(u))  if `bk_conv` (Mamba/H3's short conv), else u
    v  = W_v u' (+ prime-bump bias)          (B, N, H) real potentials, H = n_heads
    t  = softplus(t_h (+ W_t u'))            per head, or per position with `selective_coupling`
    z  = E_h (+ W_E u') + i (eta_min + softplus(eta_h (+ W_eta u')))
                                             per head, or per position with `selective_shift`
                                             (DESIGN §2.9: Im z_i >= eta_min for every input)
    mixer (bk_mixers.py):
      "diag"            g = causal_diag(v; t, z) (DESIGN §2.2), or the semiseparable output with
                        U = W_U u (DESIGN §2.4); f = [Re eta g, Im eta g]               (2H)
      "green"           y_i = sum_{j<=i} G_ij x_j with x = W_x u' (d_head per head);
                        f = [Re eta y, Im eta y]                                  (2 H d_head)
      "green_modulus"   the same with |G_ij|; f = eta y                            (H d_head)
        with `bk_key_dim` n > 0 the values are k_j (x) x_j (k = W_k u') read by q = W_q u':
        o_i = sum_{j<=i} G_ij (q_i . k_j) x_j, a state of n x d_head per head
      "ward_selective"  S_j = a_j S_{j-1} + (1 - a_j) k_j x_j^T with a step Delta_j = softplus(
                        W_Delta u'_j + b_h) apart from BK's Ward log-decay; f = q^T S (H d_head)
        keyed "green*" with `bk_selective_heads` H_s > 0: the last H_s heads run the selective
        step, the others G (or |G|); f = [the Green heads' f, the selective heads' f]
    m  = W_o f,  times silu(W_gate u) if `bk_gate`
    x' = x + FFN-or-MoE(u) + scale * m

Per head: hopping t_h = softplus(raw) > 0 (init 1), shift z_h = E_h + i eta_h with
eta_h = eta_min + softplus(raw) >= eta_min; E_h spread over [-3.5, -0.5] and eta_h by `bk_init`
(`bk_mixers.initial_eta`) so heads see different memory lengths. All of them are parameters and
receive exact gradients through the ops' custom VJPs. |eta g| <= 1 (DESIGN §2.8) and
||r_i|| <= 1/eta (DESIGN §2.10) keep the features bounded without normalisation.

Streaming state per block (`BKCarry`): the resolvent carry (g_last (B, H) complex; the
semiseparable carry; GreenCarry(g_last, state (B, H, n * d_head)) for the value mixers; a pair of
GreenCarry, the Green heads' and the selective heads', with `bk_selective_heads`) and,
with `bk_conv`, the last CONV_WIDTH - 1 block inputs: nothing grows with the tokens consumed.

Birman–Schwinger monitors (`use_birman_schwinger`, DESIGN §2.5) are computed on the
stop-gradient potentials: Schatten-1 on the last `bs_window` positions, exact Schatten-2 and the
Gershgorin condition bound, all O(N). Precision upgrade: when the bound exceeds
`precision_threshold` the layer's mixer is recomputed in double precision (one `lax.cond`). This
needs jax_enable_x64; without it the decision is still counted ("bk/precision_flags") but no
recomputation happens and "bk/precision_upgrades" stays 0.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from bk_jax.models.bk_mixers import (CONV_WIDTH, DELTA_MAX_INIT, V_SCALE_LONG_MEMORY, causal_conv,
                                     diag_features, green_mix, green_selective_mix, initial_eta,
                                     inv_softplus, selective_mix, value_features)
from bk_jax.models.config import resolve_mix_method
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
    "bk/step_mean": jnp.mean,  # the selective step's mean, with a step threshold or penalty
    "bk/step_skip_fraction": jnp.mean,  # the share of steps in the dead zone (a skipped token)
    **MOE_AUX_REDUCE,
}

PRIME_BUMP_EPS = 0.05  # epsilon of DESIGN §2.7 (bump width sqrt(eps) in log-position)
PRIME_BUMP_KMAX = 2
PRIME_BUMP_PMAX = 4096  # bumps exist for primes <= PMAX, i.e. positions up to ~PMAX


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



class BKCarry(NamedTuple):
  """Streaming state of one block."""
  # g_last (B, H) complex ("diag"), the semiseparable carry ("diag" with use_semiseparable), or
  # resolvent.GreenCarry(g_last, state (B, H, n * d_head)) for the value mixers, or a pair of them
  # (Green heads, selective heads) with bk_selective_heads
  res: Any
  conv: jax.Array | None = None  # (B, CONV_WIDTH - 1, d_model) with bk_conv, else None


class BKBlock(nnx.Module):
  """One pre-norm ResNet-BK block (see the module docstring).

  Args (constructor):
    cfg: the model ConfigDict (d_model, n_heads, d_ff, n_layers, eta_min, resolvent_method, the
      bk_* mixer options, selective_shift, selective_coupling, use_semiseparable,
      semiseparable_rank, use_birman_schwinger, bs_window, precision_threshold, use_moe and its
      router options); `bk_jax.models.kinds` validates which options combine.
    rngs, dtype, param_dtype: parameter RNGs, activation and parameter dtypes.
  """

  def __init__(self, cfg: Any, *, rngs: nnx.Rngs, dtype=jnp.float32, param_dtype=jnp.float32):
    d, h = cfg.d_model, cfg.n_heads
    out_scale = 1.0 / (2 * cfg.n_layers)
    kw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype)
    self.n_heads, self.d_model, self.dtype = h, d, dtype
    self.eta_min, self.method = cfg.eta_min, cfg.resolvent_method
    self.mixer = cfg.bk_mixer
    self.modulus = self.mixer == "green_modulus"  # real kernel |G_ij|, real features
    # the scalar-decay control of "ward_selective" (bk_ward_decay=False) uses no resolvent at all
    self.resolvent = self.mixer != "ward_selective" or bool(cfg.bk_ward_decay)
    self.valued = self.mixer != "diag"  # a vector state per head, not one g
    # the heads run by the selective step: all of "ward_selective"'s, or the last
    # bk_selective_heads of a keyed Green block (heads of both kinds, DESIGN §2.13)
    self.sel_heads = h if self.mixer == "ward_selective" else int(cfg.bk_selective_heads)
    self.hybrid = self.mixer != "ward_selective" and self.sel_heads > 0
    self.head_dim = int(cfg.bk_head_dim) if self.valued else 0
    self.key_dim = int(cfg.bk_key_dim) if self.valued else 0
    self.state_dim = self.head_dim * max(self.key_dim, 1)  # k (x) x when keyed, else x
    self.mix_method = resolve_mix_method(cfg.bk_mix_method)
    self.write_form = cfg.bk_write
    self.semiseparable_rank = cfg.semiseparable_rank if cfg.use_semiseparable else 0
    self.use_conv, self.use_gate = bool(cfg.bk_conv), bool(cfg.bk_gate)
    self.sel_shift, self.sel_coupling = bool(cfg.selective_shift), bool(cfg.selective_coupling)
    self.monitors, self.bs_window = cfg.use_birman_schwinger, cfg.bs_window
    self.precision_threshold = cfg.precision_threshold

    def param(values: np.ndarray, axes=("heads",)) -> nnx.Param:
      init = lambda *_: jnp.asarray(values, param_dtype)
      return nnx.Param(nnx.with_partitioning(init, axes)(None, values.shape, param_dtype))

    # Parameters are created in one fixed order (it fixes which RNG draw each one gets).
    if self.resolvent:
      eta0 = initial_eta(h, cfg.eta_min, cfg.bk_init)
      self.hopping_raw = param(np.full(h, inv_softplus(1.0)))
      self.energy = param(np.linspace(-3.5, -0.5, h))
      self.eta_raw = param(inv_softplus(np.maximum(eta0 - cfg.eta_min, min(1e-3, cfg.eta_min))))
    self.norm = RMSNorm(d, param_dtype=param_dtype)
    if self.use_conv:
      conv_init = jax.nn.initializers.variance_scaling(1.0, "fan_in", "normal", in_axis=0,
                                                       out_axis=1)  # as MambaBlock's conv
      self.conv_w = nnx.Param(nnx.with_partitioning(conv_init, ("conv", "embed"))(
          rngs.params(), (CONV_WIDTH, d), param_dtype))
      self.conv_b = param(np.zeros(d), ("embed",))
    if self.resolvent:
      # long-memory inits start the potentials near zero: a random potential of std s localizes
      # the Green's function within ~8 / s^2 tokens (Anderson localization) whatever eta is
      v_scale = 1.0 if cfg.bk_init == "short_memory" else V_SCALE_LONG_MEMORY
      self.w_v = dense(d, h, ("embed", "heads"), scale=v_scale, **kw)
    if self.semiseparable_rank:
      r = self.semiseparable_rank
      self.w_u = dense(d, h * r, ("embed", "heads"), **kw)
      self.s = param(np.full((h, r), 0.1), ("heads", None))
    zero = dict(scale=1e-8, **kw)  # selective deltas start at zero: per-head operator at init
    if self.sel_coupling:
      self.w_t = dense(d, h, ("embed", "heads"), **zero)
    if self.sel_shift:
      self.w_e = dense(d, h, ("embed", "heads"), **zero)
      self.w_eta = dense(d, h, ("embed", "heads"), **zero)
    n_feat = 2 * h
    if self.sel_heads:
      # a step per head, or per head and key dimension (each key dimension starts at its head's):
      # delta_bias's shape, (H_s,) or (H_s, n), is the step's shape per token
      hs = self.sel_heads
      steps = np.geomspace(cfg.bk_delta_min_init, DELTA_MAX_INIT, hs)
      if cfg.bk_step == "key":
        steps = np.repeat(steps[:, None], self.key_dim, axis=1)
      self.w_delta = dense(d, steps.size, ("embed", "heads"), **kw)
      self.step_threshold = float(cfg.bk_step_threshold)
      self.step_penalty = float(cfg.bk_step_penalty)
      self.delta_bias = param(inv_softplus(steps + self.step_threshold),
                              ("heads", None)[:steps.ndim])
      # A_h spread geometrically over [1, bk_rate_max_init] in the order of the steps: at 1 (the
      # default) every head has A_h = 1; Mamba-2 draws A from [1, 16]. Per key dimension:
      # A_{h,i} = (i + 1) A_h, Mamba-1's S4D-real rates 1..n, so one head holds n time scales
      rates = np.geomspace(1.0, cfg.bk_rate_max_init, hs)
      if cfg.bk_decay == "key":
        rates = rates[:, None] * np.arange(1, self.key_dim + 1)[None, :]
      self.a_log = param(np.log(rates), ("heads", None)[:rates.ndim])
      if self.resolvent:
        self.ward_scale_raw = param(np.full(hs, inv_softplus(1.0)))  # s_h = 1
    if self.valued:
      self.w_x = dense(d, h * self.head_dim, ("embed", "heads"), **kw)
      real = self.modulus or self.mixer == "ward_selective"
      # complex outputs give two features each; the selective heads' outputs are real
      n_feat = ((1 if real else 2) * (h - self.sel_heads) + self.sel_heads) * self.head_dim
      if self.key_dim:
        self.w_k = dense(d, h * self.key_dim, ("embed", "heads"), **kw)
        self.w_q = dense(d, h * self.key_dim, ("embed", "heads"), **kw)
        if cfg.bk_init == "mimetic":  # q . k starts as a similarity of the two positions' inputs
          self.w_q.kernel[...] = self.w_k.kernel[...]
    self.w_o = dense(n_feat, d, ("heads", "embed"), scale=out_scale, **kw)
    if self.use_gate:
      self.w_gate = dense(d, d, ("embed", "mlp"), **kw)
    self.scale = param(np.ones(d), ("embed",))
    if cfg.use_moe:
      self.ffn = MoE(d, cfg.d_ff, cfg.num_experts, cfg.router, cfg.top_k, cfg.aux_loss_weight,
                     out_scale=out_scale, **kw)
    else:
      self.ffn = FFN(d, cfg.d_ff, out_scale=out_scale, **kw)

  def init_carry(self, batch_size: int) -> BKCarry:
    """Fresh-sequence streaming state."""
    g = jnp.zeros((batch_size, self.n_heads), jnp.complex64)
    if self.semiseparable_rank:
      res = semiseparable.init_carry((batch_size,), self.n_heads, self.semiseparable_rank)
    elif self.valued:
      y_dtype = jnp.float32 if self.modulus or self.mixer == "ward_selective" else jnp.complex64
      carry = lambda g, dt: resolvent.GreenCarry(
          g, jnp.zeros((batch_size, g.shape[1], self.state_dim), dt))
      res = carry(g, y_dtype)
      if self.hybrid:  # the Green heads' carry and the selective heads' (real state)
        hg = self.n_heads - self.sel_heads
        res = (carry(g[:, :hg], y_dtype), carry(g[:, hg:], jnp.float32))
    else:
      res = g
    conv = (jnp.zeros((batch_size, CONV_WIDTH - 1, self.d_model), self.dtype) if self.use_conv
            else None)
    return BKCarry(res=res, conv=conv)

  # -- the operator and the mixer's inputs ---------------------------------------------------
  def potentials(self, u: jax.Array, conv_state: jax.Array | None):
    """The block input after the optional conv, and the potentials from it.

    Args:
      u: (B, N, d_model) normed block input.
      conv_state: (B, CONV_WIDTH - 1, d_model) with bk_conv (None otherwise).

    Returns:
      (uc (B, N, d_model), new conv state or None, v (B, N, H) float32, or None for the
      scalar-decay control, which has no resolvent).
    """
    uc, new_conv = u, None
    if self.use_conv:
      uc, new_conv = causal_conv(u, self.conv_w[...].astype(u.dtype),
                                 self.conv_b[...].astype(u.dtype), conv_state)
      uc = jax.nn.silu(uc)
    if not self.resolvent:
      return uc, new_conv, None
    # per-head potentials: heads over tensor, tokens over sequence (the resolvent's layout)
    v = constrain(per_token(self.w_v, uc).astype(jnp.float32),
                  ("activation_batch", "activation_length", "activation_heads"))
    return uc, new_conv, v

  def operator(self, uc: jax.Array):
    """Hopping, shift and eta, per head (H,) or per position (B, N, H) (DESIGN §2.9).

    Args:
      uc: (B, N, d_model) block input after the optional conv.

    Returns:
      (hopping t > 0, z complex with Im z = eta, eta >= eta_min), all of one shape.
    """
    f32 = lambda a: a.astype(jnp.float32)
    t_raw, e, eta_raw = f32(self.hopping_raw[...]), f32(self.energy[...]), f32(self.eta_raw[...])
    if self.sel_coupling:
      t_raw = t_raw + f32(per_token(self.w_t, uc))
    if self.sel_shift:
      e = e + f32(per_token(self.w_e, uc))
      eta_raw = eta_raw + f32(per_token(self.w_eta, uc))
    hopping = jax.nn.softplus(t_raw)
    shape = jnp.broadcast_shapes(hopping.shape, e.shape)  # one layout for the ops
    # Im z and the feature scale each evaluate eta, so eta_raw's gradient sums the two uses as the
    # default block always has: tests/test_models_bk_block.py pins those numerics bit for bit
    eta = lambda: jnp.broadcast_to(self.eta_min + jax.nn.softplus(eta_raw), shape)
    hopping, e = jnp.broadcast_to(hopping, shape), jnp.broadcast_to(e, shape)
    return hopping, jax.lax.complex(e, eta()), eta()

  def mixer_inputs(self, u: jax.Array, uc: jax.Array) -> dict[str, Any]:
    """The mixer's projected inputs (arrays only, so a precision upgrade can promote them).

    Args:
      u: (B, N, d_model) normed block input; uc: the same after the optional conv.

    Returns:
      "diag": {"u_low": (B, N, H, r), "s": (H, r)} with use_semiseparable, else {};
      "green*": {"vals": (B, N, H, d_head)} and, keyed, "q", "k": (B, N, H, n);
      "ward_selective": q, k, "x", "delta": (B, N, H) or, with bk_step "key", (B, N, H, n),
      "rate": (H,) or, with bk_decay "key", (H, n); "ward_scale": (H,) or None;
      "green*" with selective heads: q, k, "x" of every head and the selective heads' "delta",
      "rate", "ward_scale" (H_s in place of H).
    """
    if self.semiseparable_rank:
      u_low = per_token(self.w_u, u).astype(jnp.float32)
      return {"u_low": u_low.reshape(*u.shape[:-1], self.n_heads, self.semiseparable_rank),
              "s": self.s[...]}
    if not self.valued:
      return {}
    # float32 (float64 for float64 models) for the selective step; float32 for the Green mixers
    acc = (jnp.promote_types(self.dtype, jnp.float32) if self.mixer == "ward_selective"
           else jnp.float32)
    f = lambda a: a.astype(acc)
    heads = lambda w, k: f(per_token(w, uc)).reshape(*uc.shape[:-1], self.n_heads, k)
    q, k = ((heads(self.w_q, self.key_dim), heads(self.w_k, self.key_dim)) if self.key_dim
            else (None, None))
    if not self.sel_heads:
      return {"vals": heads(self.w_x, self.head_dim), "q": q, "k": k}
    s = f(per_token(self.w_delta, uc)).reshape(*uc.shape[:-1], *self.delta_bias.shape)
    return {"q": q, "k": k, "x": heads(self.w_x, self.head_dim),
            # below the threshold the step is exactly 0: the token is skipped (no write, no decay)
            "delta": jnp.maximum(jax.nn.softplus(s + f(self.delta_bias[...]))
                                 - self.step_threshold, 0.0),
            "rate": jnp.exp(f(self.a_log[...])),
            "ward_scale": (jax.nn.softplus(f(self.ward_scale_raw[...])) if self.resolvent
                           else None)}

  # -- the mixer -----------------------------------------------------------------------------
  def mix(self, v, inputs: dict[str, Any], res, hopping, z, eta):
    """The mixer's output and new resolvent carry; precision follows the dtypes of the inputs.

    Args:
      v: (B, N, H) float potentials (None for the scalar-decay control).
      inputs: `mixer_inputs`; res: the resolvent carry; hopping, z, eta: `operator`.

    Returns:
      (y, res'): "diag" g (B, N, H) complex; the value mixers (B, N, H, d_head); with selective
      heads the pair (Green heads' y, selective heads' y).
    """
    if self.mixer == "diag" and self.semiseparable_rank:
      return semiseparable.causal_diag(v, inputs["u_low"], inputs["s"].astype(v.dtype),
                                       hopping=hopping, z=z, carry=res)
    if self.mixer == "diag":
      return resolvent.causal_diag(v, hopping=hopping, z=z, carry=res, method=self.method)
    if self.hybrid:
      return green_selective_mix(
          v, inputs["q"], inputs["k"], inputs["x"], inputs["delta"], inputs["rate"],
          inputs["ward_scale"], hopping=hopping, z=z, eta=eta, carry=res,
          green_heads=self.n_heads - self.sel_heads, method=self.method,
          mix_method=self.mix_method, modulus=self.modulus, write_form=self.write_form)
    if self.mixer == "ward_selective":
      return selective_mix(v, inputs["q"], inputs["k"], inputs["x"], inputs["delta"],
                           inputs["rate"], inputs["ward_scale"], hopping=hopping, z=z, eta=eta,
                           carry=res, method=self.method, mix_method=self.mix_method,
                           write_form=self.write_form)
    return green_mix(v, inputs["vals"], inputs["q"], inputs["k"], hopping=hopping, z=z, carry=res,
                     method=self.method, mix_method=self.mix_method, modulus=self.modulus)

  def _monitored_mix(self, v, inputs, res, hopping, z, eta):
    """`mix` plus the Birman–Schwinger monitors and the precision-upgrade decision."""
    vs, ts, zs = jax.lax.stop_gradient((v, hopping, z))
    bound = birman_schwinger.condition_bound(vs, hopping=ts, z=zs)  # (B, H)
    flagged = jnp.max(bound) > self.precision_threshold
    (y, res), upgraded = birman_schwinger.with_precision_upgrade(
        self.mix, (v, inputs, res, hopping, z, eta), flagged=flagged)
    stats = {
        "bk/schatten_s1": jnp.mean(birman_schwinger.schatten_s1_window(
            vs, hopping=ts, z=zs, window=self.bs_window)),
        "bk/schatten_s2": jnp.mean(birman_schwinger.schatten_s2(vs, hopping=ts, z=zs)),
        "bk/condition_number": jnp.max(bound),
        "bk/precision_flags": flagged.astype(jnp.int32),
        "bk/precision_upgrades": upgraded.astype(jnp.int32),
    }
    return y, res, stats

  def features(self, y: jax.Array, eta) -> jax.Array:
    """The mixer's output as the features W_o reads (bounded, DESIGN §2.8 and §2.10)."""
    if self.mixer == "diag":
      return diag_features(y, eta)
    if self.hybrid:  # the Green heads' features (scaled by their eta), then the selective heads'
      hg = self.n_heads - self.sel_heads
      return jnp.concatenate([value_features(y[0], eta[..., :hg]), value_features(y[1], None)],
                             axis=-1)
    return value_features(y, None if self.mixer == "ward_selective" else eta)

  def mix_args(self, x: jax.Array, carry: BKCarry, bias: jax.Array | None):
    """The normed input, the arguments of `mix` and the new conv state of one chunk.

    Args:
      x: (B, N, d_model) residual stream; carry: the previous chunk's (`init_carry` for a fresh
        sequence); bias: (N,) potential bias or None.

    Returns:
      (u, (v, inputs, res, hopping, z, eta), conv'): u the normed input; the mixer's arguments
      as `mix` takes them (v, hopping, z, eta None for the control).
    """
    u = self.norm(x)
    uc, new_conv, v = self.potentials(u, carry.conv)
    hopping = z = eta = None
    if self.resolvent:
      if bias is not None:  # prime_bump: refused by validation for the control (no potentials)
        v = v + bias[:, None]
      hopping, z, eta = self.operator(uc)
    return u, (v, self.mixer_inputs(u, uc), carry.res, hopping, z, eta), new_conv

  def __call__(self, x: jax.Array, carry: BKCarry | None, pos: jax.Array,
               bias: jax.Array | None):
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
    u, args, new_conv = self.mix_args(x, carry, bias)
    if self.monitors:
      y, res, aux = self._monitored_mix(*args)
    else:
      (y, res), aux = self.mix(*args), {}
    x, ffn_aux = self.residual(x, u, y, args[-1])
    aux = {**aux, **ffn_aux}
    if self.sel_heads and (self.step_threshold or self.step_penalty):
      # the step's dead zone and its lasso (model.bk_step_threshold, bk_step_penalty)
      delta = args[1]["delta"].astype(jnp.float32)
      aux["aux_loss"] = aux["aux_loss"] + self.step_penalty * jnp.mean(delta)
      aux["bk/step_mean"] = jnp.mean(delta)
      aux["bk/step_skip_fraction"] = jnp.mean((delta == 0).astype(jnp.float32))
    return x, BKCarry(res=res, conv=new_conv), aux

  def residual(self, x: jax.Array, u: jax.Array, y: jax.Array, eta):
    """The block's output from the mixer's: x + ffn(u) + (gated) W_o features(y).

    Args:
      x: (B, N, d_model) residual stream; u: its normed form (`mix_args`); y: `mix`'s output;
      eta: `operator`'s (None for the control), which the features read.

    Returns:
      (x', aux) with aux = {"aux_loss": scalar, ...MoE statistics}.
    """
    scale = self.scale[...].astype(self.dtype)
    mix = per_token(lambda f: scale * self.w_o(f), self.features(y, eta).astype(self.dtype))
    if self.use_gate:
      mix = mix * jax.nn.silu(per_token(self.w_gate, u))
    if isinstance(self.ffn, MoE):
      # the scattering router reads the resolvent's amplitude mean_h eta g ("diag" only)
      out, aux = self.ffn(u, jnp.mean(y * eta, axis=-1) if self.mixer == "diag" else None)
    else:
      out, aux = self.ffn(u), {"aux_loss": jnp.zeros((), jnp.float32)}
    return x + out + mix, aux

"""ResNet-BK block variants: the Green's-function mixer, selectivity, conv and gate.

Built by `bk.make_bk_block` when any of the model-config flags below departs from the seed
block (`bk.BKBlock`, which stays unchanged). Per block, with u = RMSNorm(x) (B, N, d_model):

    u' = silu(causal depthwise conv_4(u))   if `bk_conv` (Mamba/H3's short conv), else u
    v  = W_v u'                              (B, N, H) real potentials
    t  = softplus(t_h + W_t u')  per position if `selective_coupling`, else softplus(t_h)
    z  = E_h + W_E u' + i (eta_min + softplus(eta_h + W_eta u'))  per position if
         `selective_shift` (DESIGN §2.9: Im z_i >= eta_min for every input), else per head
    "diag"  (bk_mixer):  g = causal_diag(v; t, z),          f = [Re eta g, Im eta g]   (2H)
    "green" (bk_mixer):  y = causal_green(v, W_x u'; t, z), f = [Re eta y, Im eta y]   (2 H d_head)
      with `bk_key_dim` n > 0 the values are outer products k_j (x) x_j (keys k = W_k u', n per
      head) and the row is read by queries q = W_q u':  o_i = q_i . y_i = sum_{j<=i} G_ij
      (q_i . k_j) x_j,  f = [Re eta o, Im eta o]  (2 H d_head): the Green's function is the
      causal, data-dependent decay and q . k chooses what is recalled (Mamba's B_t / C_t role;
      a state of n x d_head per head)
    "green_modulus" (bk_mixer): the same with the kernel |G_ij| instead of G_ij, f = eta o
      (H d_head, real): |G_ij| = |g_j| prod_{j<k<=i} |t_k g_k|, so o is the real affine scan
      y_i = |t_i g_i| y_{i-1} + |g_i| x_i over g = causal_diag(v; t, z). A stored value comes back
      without the gap-dependent phase of G's in-band decay (DESIGN §2.10, the memory bound)
    "ward_selective" (bk_mixer, needs bk_key_dim n > 0): a selective step on the resolvent
      (DESIGN §2.12). By the Ward identity Im g_j = |g_j|^2 (eta_j + t_j^2 Im g_{j-1}),
      lam_bk_j = log1p(eta_j / (t_j^2 Im g_{j-1})) >= 0 is BK's log-decay of the resolvent row, and
        Delta_j = softplus(w_Delta . u'_j + b_h),  lam_j = A_h + s_h lam_bk_j  (s_h = 0 without
        `bk_ward_decay`: the scalar-decay control),  a_j = exp(-Delta_j lam_j)
        S_j = a_j S_{j-1} + (1 - a_j) k_j x_j^T,   o_i = q_i^T S_i,   f = o   (H d_head, real)
      Delta_j -> 0 keeps S and ignores token j, which the Green mixers cannot (their write |g_j|
      and decay |t_j g_j| are tied through g_j); |o_i| <= max |q| |k| |x| (S is an average)
    m  = W_o f,  times silu(W_gate u) if `bk_gate`
    x' = x + FFN(u) + scale * m

DESIGN §2.10: y_i = sum_{j<=i} G^{(i)}_{ij} x_j is the prefix resolvent's last row applied to
per-head values x_j (d_head of them), so the state is a vector of d_head per head instead of one
number; ||r_i|| <= 1/eta bounds y for bounded values. With a per-position shift the scale is the
per-position eta_i (|eta_i g_i| <= eta_i / eta_min). Streaming state: the resolvent carry
(g_last (B, H) for "diag", (g_last, y_last (B, H, n * d_head)) for "green*" and "ward_selective",
n = 1 without keys) and, with `bk_conv`, the
last CONV_WIDTH - 1 block inputs (B, 3, d_model). Nothing depends on the sequence length.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from bk_jax.models.config import resolve_mix_method
from bk_jax.models.layers import FFN, RMSNorm, dense, per_token
from bk_jax.ops import resolvent
from bk_jax.ops.chunkwise import chunkwise
from bk_jax.ops.linear_scan import linear_scan

CONV_WIDTH = 4  # as Mamba's d_conv
#: "ward_selective": Delta's per-head bias spreads Delta over this range at init (Mamba's dt init),
#: memories of 1 / (Delta A) = 10 ... 1000 tokens at A = 1
DELTA_INIT = (1e-3, 1e-1)
V_SCALE_LONG_MEMORY = 1e-4  # bk_init "long_memory" / "mimetic": fan-in variance scale of W_v (std ~0.01)


class BKVariantCarry(NamedTuple):
  """Streaming state of one variant block."""
  res: Any  # resolvent carry: g (B, H) complex, or resolvent.GreenCarry for bk_mixer="green"
  conv: jax.Array | None = None  # (B, CONV_WIDTH - 1, d_model) with bk_conv, else None


def _inv_softplus(y: np.ndarray) -> np.ndarray:
  return y + np.log(-np.expm1(-y))


def initial_eta(n_heads: int, eta_min: float, init: str) -> np.ndarray:
  """Per-head Im z at initialisation, paired with the energies linspace(-3.5, -0.5, H), t = 1.

  Every energy lies in the band [-4, 0] of H0 (diagonal -2, DESIGN §2), where a head's memory
  1 / (1 - |t g|) at v = 0 grows like 1 / eta (DESIGN §2.10's memory bound).
  "seed": geomspace(0.1, 1) rising with the energy, as the seed block: memories of 2.2 to 13.8
    tokens, so almost no gradient reaches a gap of hundreds of tokens (induction heads at 256
    stayed at chance).
  "long_memory": geomspace(1, 2 eta_min) falling as the energy rises: memories spread
    geometrically from 2.2 tokens to ~0.66 / eta_min (eta_min 1e-3: 2.2 ... 659 tokens), the
    span of Mamba's dt init (1e-3 .. 1e-1 at A = 1). `tests/test_models_bk_variants.py` measures
    both spans.
  """
  if init == "seed":
    return np.geomspace(0.1, 1.0, n_heads)  # "long_memory" and "mimetic" below
  return np.geomspace(1.0, 2.0 * eta_min, n_heads)


def causal_conv(u: jax.Array, w: jax.Array, b: jax.Array, state: jax.Array):
  """Causal depthwise convolution with a streaming state.

  Args:
    u: (B, N, D) inputs; w: (K, D) taps (w[K-1] multiplies the current input); b: (D,) bias.
    state: (B, K-1, D) the K-1 inputs before u[:, 0] (zeros for a fresh sequence).

  Returns:
    (out (B, N, D), new state (B, K-1, D) = the last K-1 inputs seen).
  """
  k, n = w.shape[0], u.shape[1]
  upad = jnp.concatenate([state.astype(u.dtype), u], axis=1)  # (B, K-1+N, D)
  out = sum(upad[:, i:i + n] * w[i] for i in range(k)) + b
  return out, upad[:, n:]


class BKVariantBlock(nnx.Module):
  """Pre-norm ResNet-BK block with the variant options (see the module docstring).

  Args (constructor):
    cfg: the model ConfigDict (d_model, n_heads, d_ff, n_layers, eta_min, resolvent_method,
      bk_mixer, bk_head_dim, bk_key_dim, selective_shift, selective_coupling, bk_conv, bk_gate).
  """

  def __init__(self, cfg: Any, *, rngs: nnx.Rngs, dtype=jnp.float32, param_dtype=jnp.float32):
    d, h = cfg.d_model, cfg.n_heads
    out_scale = 1.0 / (2 * cfg.n_layers)
    kw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype)
    self.n_heads, self.eta_min, self.method, self.dtype = h, cfg.eta_min, cfg.resolvent_method, dtype
    self.green = cfg.bk_mixer in ("green", "green_modulus")
    self.modulus = cfg.bk_mixer == "green_modulus"  # real kernel |G_ij|, real features
    self.selective_step = cfg.bk_mixer == "ward_selective"  # real state, decay apart from write
    # the scalar-decay control of "ward_selective" (bk_ward_decay=False) uses no resolvent at all
    self.resolvent = not self.selective_step or bool(cfg.bk_ward_decay)
    self.valued = self.green or self.selective_step  # a vector state per head, not one g
    self.head_dim = int(cfg.bk_head_dim) if self.valued else 0
    self.key_dim = int(cfg.bk_key_dim) if self.valued else 0
    # values per head inside the resolvent: k (x) x when keyed, else x itself
    self.state_dim = self.head_dim * max(self.key_dim, 1)
    self.use_conv, self.use_gate = bool(cfg.bk_conv), bool(cfg.bk_gate)
    self.sel_shift, self.sel_coupling = bool(cfg.selective_shift), bool(cfg.selective_coupling)
    self.d_model = d
    self.mix_method = resolve_mix_method(cfg.bk_mix_method)

    def param(values: np.ndarray, axes) -> nnx.Param:
      init = lambda *_: jnp.asarray(values, param_dtype)
      return nnx.Param(nnx.with_partitioning(init, axes)(None, values.shape, param_dtype))

    # per-head parameters: energies and hopping as the seed block's (DESIGN §2.8); eta by bk_init
    energy = np.linspace(-3.5, -0.5, h)
    eta0 = initial_eta(h, cfg.eta_min, cfg.bk_init)
    if self.resolvent:
      self.hopping_raw = param(np.full(h, _inv_softplus(1.0)), ("heads",))
      self.energy = param(energy, ("heads",))
      self.eta_raw = param(_inv_softplus(np.maximum(eta0 - cfg.eta_min, min(1e-3, cfg.eta_min))),
                           ("heads",))
    self.norm = RMSNorm(d, param_dtype=param_dtype)
    if self.use_conv:
      conv_init = jax.nn.initializers.variance_scaling(1.0, "fan_in", "normal", in_axis=0,
                                                       out_axis=1)  # as MambaBlock's conv
      self.conv_w = nnx.Param(nnx.with_partitioning(conv_init, ("conv", "embed"))(
          rngs.params(), (CONV_WIDTH, d), param_dtype))
      self.conv_b = param(np.zeros(d), ("embed",))
    # "long_memory" / "mimetic": potentials start near zero, since a random potential of std s localizes the
    # Green's function within ~8 / s^2 tokens (Anderson localization) whatever eta is
    v_scale = 1.0 if cfg.bk_init == "seed" else V_SCALE_LONG_MEMORY
    # selective deltas start at zero: the variant begins as the per-head block
    zero = dict(scale=1e-8, **kw)
    if self.resolvent:
      self.w_v = dense(d, h, ("embed", "heads"), scale=v_scale, **kw)
      if self.sel_coupling:
        self.w_t = dense(d, h, ("embed", "heads"), **zero)
      if self.sel_shift:
        self.w_e = dense(d, h, ("embed", "heads"), **zero)
        self.w_eta = dense(d, h, ("embed", "heads"), **zero)
    n_feat = 2 * h
    if self.selective_step:
      self.w_delta = dense(d, h, ("embed", "heads"), **kw)
      self.delta_bias = param(_inv_softplus(np.geomspace(*DELTA_INIT, h)), ("heads",))
      self.a_log = param(np.zeros(h), ("heads",))  # A_h = 1
      if self.resolvent:
        self.ward_scale_raw = param(np.full(h, _inv_softplus(1.0)), ("heads",))  # s_h = 1
    if self.valued:
      self.w_x = dense(d, h * self.head_dim, ("embed", "heads"), **kw)
      n_feat = (1 if self.modulus or self.selective_step else 2) * h * self.head_dim
      if self.key_dim:
        self.w_k = dense(d, h * self.key_dim, ("embed", "heads"), **kw)
        self.w_q = dense(d, h * self.key_dim, ("embed", "heads"), **kw)
        if cfg.bk_init == "mimetic":  # q . k starts as a similarity of the two positions' inputs
          self.w_q.kernel[...] = self.w_k.kernel[...]
    self.w_o = dense(n_feat, d, ("heads", "embed"), scale=out_scale, **kw)
    if self.use_gate:
      self.w_gate = dense(d, d, ("embed", "mlp"), **kw)
    self.scale = param(np.ones(d), ("embed",))
    self.ffn = FFN(d, cfg.d_ff, out_scale=out_scale, **kw)

  def init_carry(self, batch_size: int):
    """Fresh-sequence streaming state BKVariantCarry(res, conv)."""
    g = jnp.zeros((batch_size, self.n_heads), jnp.complex64)
    y_dtype = jnp.float32 if self.modulus or self.selective_step else jnp.complex64
    res = resolvent.GreenCarry(
        g, jnp.zeros((batch_size, self.n_heads, self.state_dim), y_dtype)) if self.valued else g
    conv = (jnp.zeros((batch_size, CONV_WIDTH - 1, self.d_model), self.dtype) if self.use_conv
            else None)
    return BKVariantCarry(res=res, conv=conv)

  def potentials(self, u: jax.Array, conv_state: jax.Array | None):
    """The block input after the optional conv, and the potentials from it.

    Args:
      u: (B, N, d_model) normed block input.
      conv_state: (B, CONV_WIDTH - 1, d_model) with bk_conv (None otherwise).

    Returns:
      (uc (B, N, d_model), new conv state or None, v (B, N, H) float32; None for the
      scalar-decay control, which has no resolvent).
    """
    uc, new_conv = u, None
    if self.use_conv:
      uc, new_conv = causal_conv(u, self.conv_w[...].astype(u.dtype),
                                 self.conv_b[...].astype(u.dtype), conv_state)
      uc = jax.nn.silu(uc)
    v = per_token(self.w_v, uc).astype(jnp.float32) if self.resolvent else None
    return uc, new_conv, v

  def _operator(self, uc: jax.Array):
    """Hopping, shift and eta, per head (H,) or per position (B, N, H) (DESIGN §2.9)."""
    f32 = lambda a: a.astype(jnp.float32)
    t_raw, e, eta_raw = f32(self.hopping_raw[...]), f32(self.energy[...]), f32(self.eta_raw[...])
    if self.sel_coupling:
      t_raw = t_raw + f32(per_token(self.w_t, uc))
    if self.sel_shift:
      e = e + f32(per_token(self.w_e, uc))
      eta_raw = eta_raw + f32(per_token(self.w_eta, uc))
    if self.sel_shift and not self.sel_coupling:
      t_raw = jnp.broadcast_to(t_raw, e.shape)  # one layout for the ops: all per position
    eta = self.eta_min + jax.nn.softplus(eta_raw)
    hopping = jax.nn.softplus(t_raw)
    if self.sel_coupling and not self.sel_shift:
      e, eta = jnp.broadcast_to(e, hopping.shape), jnp.broadcast_to(eta, hopping.shape)
    return hopping, jax.lax.complex(e, eta), eta

  def green_mix(self, uc: jax.Array, v: jax.Array, hopping: jax.Array, z: jax.Array, res_carry):
    """The Green's-function mixer: values (or keyed values, read by queries) mixed by G.

    Args:
      uc: (B, N, d_model) block input after the optional conv.
      v: (B, N, H) potentials; hopping, z: per head (H,) or per position (B, N, H).
      res_carry: GreenCarry from the previous chunk (state (B, H, n * d_head) when keyed).

    Returns:
      (o (B, N, H, d_head), new GreenCarry): o_i = sum_{j<=i} G_ij x_j, or
      sum_{j<=i} G_ij (q_i . k_j) x_j with keys; complex, or real with |G_ij| for
      "green_modulus".
    """
    heads = lambda w, k: per_token(w, uc).astype(jnp.float32).reshape(
        *uc.shape[:-1], self.n_heads, k)
    vals = heads(self.w_x, self.head_dim)  # (B, N, H, d_head)
    if self.key_dim and self.mix_method == "chunkwise":
      return self._chunkwise_mix(v, heads(self.w_q, self.key_dim), heads(self.w_k, self.key_dim),
                                 vals, hopping, z, res_carry)
    if self.key_dim:
      keys = heads(self.w_k, self.key_dim)  # (B, N, H, n)
      vals = (keys[..., :, None] * vals[..., None, :]).reshape(*vals.shape[:-1], -1)
    if self.modulus:
      y, res_carry = self._modulus_mix(v, vals, hopping, z, res_carry)
    else:
      y, res_carry = resolvent.causal_green(v, vals, hopping=hopping, z=z, carry=res_carry,
                                            method=self.method)
    if self.key_dim:  # read each head's (n, d_head) state with its query
      q = heads(self.w_q, self.key_dim)
      y = jnp.einsum("...hn,...hnd->...hd", q, y.reshape(*y.shape[:-1], self.key_dim,
                                                          self.head_dim))
    return y, res_carry

  def _chunkwise_mix(self, v, q, k, vals, hopping, z, res_carry):
    """The keyed mixer by the chunkwise kernel: o_i = sum_{j<=i} K_ij (q_i . k_j) x_j.

    K_ij = g_j prod_{j<u<=i} c_u with c_u = -t_u g_u (G), or |g_j| prod |c_u| (|G|), is the
    scalar-decay form of `ops.chunkwise` (DESIGN §2.11) with log c = log t + log(-g) and write
    weight g (or their moduli). The (n, d_head) state per head exists once per chunk, not once
    per token. Same carry layout as the recurrent path (state flattened key-major).
    """
    g, g_last = resolvent.causal_diag(v, hopping=hopping, z=z, carry=res_carry.g,
                                      method=self.method)
    log_t = jnp.log(jnp.asarray(hopping, jnp.float32))
    if self.modulus:
      log_c, weight = log_t + jnp.log(jnp.abs(g)), jnp.abs(g)
    else:
      log_c, weight = log_t + jnp.log(-g), g
    log_c = jnp.broadcast_to(log_c, g.shape)
    state = res_carry.y.reshape(*res_carry.y.shape[:-1], self.key_dim, self.head_dim)
    o, state = chunkwise(q, k, vals, log_c, weight, state)
    return o, resolvent.GreenCarry(g_last, state.reshape(res_carry.y.shape))

  def _modulus_mix(self, v, vals, hopping, z, res_carry):
    """y_i = sum_{j<=i} |G_ij| x_j as y_i = |t_i g_i| y_{i-1} + |g_i| x_i (real affine scan).

    |G_ij| = |g_j| prod_{j<k<=i} |c_k| with c_k = -t_k g_k (DESIGN §2.10), so the row norm bound
    ||r_i|| <= 1/eta holds as for G. g comes from causal_diag (its sequence-parallel path
    included); the value scan is linear_scan over the sequence axis.
    """
    g, g_last = resolvent.causal_diag(v, hopping=hopping, z=z, carry=res_carry.g,
                                      method=self.method)
    decay = jnp.abs(hopping * g)[..., None]  # (B, N, H, 1); hopping[i]: the bond i-1 -- i
    time = lambda a: jnp.moveaxis(a, -3, 0)  # (N, B, H, .): linear_scan is time-major
    y, y_last = linear_scan(time(decay), time(jnp.abs(g)[..., None] * vals), res_carry.y,
                            method=self._value_scan_method())
    return jnp.moveaxis(y, 0, -3), resolvent.GreenCarry(g_last, y_last)

  def _value_scan_method(self) -> str:
    """linear_scan's method for a per-token value scan, from the resolvent method."""
    return {"scan": "sequential", "auto": "auto"}.get(self.method, "associative")

  def selective_mix(self, uc: jax.Array, v, hopping, z, eta, res_carry):
    """The "ward_selective" mixer (DESIGN §2.12): S_j = a_j S_{j-1} + (1 - a_j) k_j x_j^T.

    Args:
      uc: (B, N, d_model) block input after the optional conv.
      v, hopping, z, eta: the potentials (B, N, H) and the operator, per head (H,) or per
        position (B, N, H); all None for the scalar-decay control (bk_ward_decay=False).
      res_carry: GreenCarry(g_last (B, H), state (B, H, n * d_head) key-major) of the last chunk.

    Returns:
      (o (B, N, H, d_head) real, new GreenCarry).
    """
    acc = jnp.promote_types(self.dtype, jnp.float32)  # float32 (float64 for float64 models)
    f = lambda a: a.astype(acc)
    heads = lambda w, k: f(per_token(w, uc)).reshape(*uc.shape[:-1], self.n_heads, k)
    delta = jax.nn.softplus(f(per_token(self.w_delta, uc)) + f(self.delta_bias[...]))
    lam = jnp.exp(f(self.a_log[...]))
    g_last, fresh = res_carry.g, False
    if self.resolvent:
      g, g_last = resolvent.causal_diag(v, hopping=hopping, z=z, carry=res_carry.g,
                                        method=self.method)
      im_prev = jnp.imag(jnp.concatenate([res_carry.g[..., None, :].astype(g.dtype),
                                          g[..., :-1, :]], axis=-2))
      # Ward: Im g_j = |g_j|^2 (eta_j + x_j) with x_j = t_j^2 Im g_{j-1}, so the past's share of
      # Im g_j is 1 - ratio_j = x_j / (eta_j + x_j) and lam_bk = -log of it = log1p(eta_j / x_j).
      # x_j = 0 only where nothing was written yet (Im g_{-1} = 0 of a fresh sequence; S is empty
      # there): ratio is 1, a_j = 0 multiplies the empty state and the write 1 - a_j is exactly 1.
      # Any finite decay is exact there, so lam_bk is set to 0 and the write to 1 below.
      fresh = im_prev <= 0
      x_prev = jnp.square(f(hopping)) * jnp.where(fresh, 1.0, im_prev)
      lam_bk = jnp.where(fresh, 0.0, jnp.log1p(f(eta) / x_prev))
      lam = lam + jax.nn.softplus(f(self.ward_scale_raw[...])) * lam_bk
    log_a = -delta * lam  # <= 0: |a_j| <= 1
    write = jnp.where(fresh, 1.0, -jnp.expm1(log_a))  # 1 - a_j without cancellation at small steps
    q, k, x = heads(self.w_q, self.key_dim), heads(self.w_k, self.key_dim), heads(self.w_x, self.head_dim)
    state = res_carry.y.reshape(*res_carry.y.shape[:-1], self.key_dim, self.head_dim)
    if self.mix_method == "chunkwise":
      o, state = chunkwise(q, k, x, log_a, write, state)
    else:  # the reference form: the (n, d_head) state at every token, by linear_scan
      time = lambda a: jnp.moveaxis(a, -4, 0)  # (N, B, H, n, d): linear_scan is time-major
      kx = write[..., None, None] * k[..., :, None] * x[..., None, :]  # (B, N, H, n, d)
      s_all, state = linear_scan(time(jnp.exp(log_a)[..., None, None]), time(kx), state,
                                 method=self._value_scan_method())
      o = jnp.einsum("...hn,...hnd->...hd", q, jnp.moveaxis(s_all, 0, -4))
    return o, resolvent.GreenCarry(g_last, state.reshape(res_carry.y.shape))

  def __call__(self, x: jax.Array, carry, pos: jax.Array, bias: jax.Array | None):
    """One block over a chunk.

    Args:
      x: (B, N, d_model) residual stream.
      carry: streaming state from the previous chunk, or None for a fresh sequence.
      pos: unused (position lives in the recurrence).
      bias: (N,) potential bias (prime bump) or None.

    Returns:
      (x', new carry, {"aux_loss": 0}).
    """
    del pos
    if carry is None:
      carry = self.init_carry(x.shape[0])
    u = self.norm(x)
    uc, new_conv, v = self.potentials(u, carry.conv)
    if bias is not None:  # prime_bump: refused by validation for the control (v is None)
      v = v + bias[:, None]
    hopping, z, eta = self._operator(uc) if self.resolvent else (None, None, None)
    if self.selective_step:
      y, new_res = self.selective_mix(uc, v, hopping, z, eta, carry.res)
      feats = y.reshape(*y.shape[:-2], -1)
    elif self.green:
      y, new_res = self.green_mix(uc, v, hopping, z, carry.res)
      ey = y * eta[..., None]
      if not self.modulus:  # (B, N, H, 2 d_head); the modulus mixer's y is real already
        ey = jnp.concatenate([jnp.real(ey), jnp.imag(ey)], axis=-1)
      feats = ey.reshape(*ey.shape[:-2], -1)
    else:
      g, new_res = resolvent.causal_diag(v, hopping=hopping, z=z, carry=carry.res,
                                         method=self.method)
      eg = g * eta
      feats = jnp.concatenate([jnp.real(eg), jnp.imag(eg)], axis=-1)
    mix = per_token(self.w_o, feats.astype(self.dtype))
    if self.use_gate:
      mix = mix * jax.nn.silu(per_token(self.w_gate, u))
    mix = self.scale[...].astype(self.dtype) * mix
    return (x + self.ffn(u) + mix, BKVariantCarry(res=new_res, conv=new_conv),
            {"aux_loss": jnp.zeros((), jnp.float32)})

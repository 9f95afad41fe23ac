"""The token mixers of the ResNet-BK block (`bk.BKBlock`), as pure functions of arrays.

Every mixer reads the block's projected inputs and returns its output and new state; the block
owns the parameters, the projections, the features and the residual. With g = causal_diag(v; t, z)
the resolvent's diagonal (DESIGN §2.2) and c_u = -t_u g_u:

    "diag"           g itself: f = [Re eta g, Im eta g]                    (DESIGN §2.8)
    "green"          y_i = sum_{j<=i} G_ij x_j, G_ij = g_j prod_{j<u<=i} c_u   (DESIGN §2.10)
    "green_modulus"  the same with the real kernel |G_ij|                 (DESIGN §2.10)
    keyed ("green*" with bk_key_dim n > 0): values k_j (x) x_j, read by queries:
                     o_i = sum_{j<=i} K_ij (q_i . k_j) x_j by the chunkwise kernel
                     (DESIGN §2.11), or the (n, d_head) state at every token (reference form)
    "ward_selective" S_j = a_j S_{j-1} + (1 - a_j) k_j x_j^T, o_i = q_i^T S_i with
                     a_j = exp(-Delta_j (A_h + s_h lam_bk_j)), lam_bk BK's Ward log-decay
                     (DESIGN §2.12); with a rate per key dimension a_j is a vector over S's rows
    keyed "green*" with selective heads (bk_selective_heads H_s > 0): heads of both kinds in
                     one block, the first H - H_s by G (or |G|), the last H_s by the selective
                     step (`green_selective_mix`, DESIGN §2.13)

Each value scan takes the resolvent method's meaning from `bk_jax.ops.green` (one meaning of
"scan", "associative" and "chunked" for every mixer).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from bk_jax.ops import green as green_ops
from bk_jax.ops import resolvent
from bk_jax.ops.chunkwise import chunkwise
from bk_jax.ops.resolvent_kernels import resolve_method

CONV_WIDTH = 4  # as Mamba's d_conv
#: "ward_selective": Delta's per-head bias spreads Delta geometrically from model.bk_delta_min_init
#: (1e-3 by default, Mamba's dt init) up to this at init: memories of 1 / (Delta A) = 10 ... 1000
#: tokens at A = 1
DELTA_MAX_INIT = 1e-1
#: bk_init "long_memory" / "mimetic": fan-in variance scale of W_v (std ~0.01)
V_SCALE_LONG_MEMORY = 1e-4


def inv_softplus(y: np.ndarray) -> np.ndarray:
  """x with softplus(x) = y (y > 0), for initialising softplus-parameterised values."""
  return y + np.log(-np.expm1(-y))


def initial_eta(n_heads: int, eta_min: float, init: str) -> np.ndarray:
  """Per-head Im z at initialisation, paired with the energies linspace(-3.5, -0.5, H), t = 1.

  Every energy lies in the band [-4, 0] of H0 (diagonal -2, DESIGN §2), where a head's memory
  1 / (1 - |t g|) at v = 0 grows like 1 / eta (DESIGN §2.10's memory bound).
  "short_memory": geomspace(0.1, 1) rising with the energy (the default): memories of 2.2 to
    13.8 tokens, so almost no gradient reaches a gap of hundreds of tokens (induction heads at
    256 stay at chance).
  "long_memory" and "mimetic": geomspace(1, 2 eta_min) falling as the energy rises: memories
    spread geometrically from 2.2 tokens to ~0.66 / eta_min (eta_min 1e-3: 2.2 ... 659 tokens),
    the span of Mamba's dt init (1e-3 .. 1e-1 at A = 1). `tests/test_models_bk_variants.py`
    measures both spans.
  """
  if init == "short_memory":
    return np.geomspace(0.1, 1.0, n_heads)
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


def value_scan(decay: jax.Array, b: jax.Array, y_prev: jax.Array, method: str):
  """y_i = decay_i y_{i-1} + b_i over the sequence, as the resolvent method `method` scans.

  Args:
    decay: (B, N, H); b: (B, N, H, D); y_prev: (B, H, D) the state before b[:, 0].
    method: a resolvent method ("auto" resolved for this backend, as ops.green does).

  Returns:
    (y (B, N, H, D), y_last (B, H, D)).
  """
  return green_ops.mix(decay, b, y_prev, method=resolve_method(method))


def _read(q: jax.Array, y: jax.Array) -> jax.Array:
  """o_i = q_i^T S_i per head: q (B, N, H, n), y (B, N, H, n * d) key-major -> (B, N, H, d)."""
  n = q.shape[-1]
  return jnp.einsum("...hn,...hnd->...hd", q, y.reshape(*y.shape[:-1], n, y.shape[-1] // n))


def green_mix(v, vals, q, k, *, hopping, z, carry: resolvent.GreenCarry, method: str,
              mix_method: str, modulus: bool):
  """The Green's-function mixers: values (or keyed values read by queries) mixed by G or |G|.

  Args:
    v: (B, N, H) potentials; hopping, z: per head (H,) or per position (B, N, H).
    vals: (B, N, H, d_head) values; q, k: (B, N, H, n) queries and keys, or None (unkeyed).
    carry: GreenCarry(g_last (B, H), y_last (B, H, n * d_head), key-major).
    method: the resolvent method; mix_method: "chunkwise" | "recurrent" (keyed only).
    modulus: the real kernel |G_ij| in place of G_ij.

  Returns:
    (o (B, N, H, d_head), new GreenCarry): o_i = sum_{j<=i} G_ij x_j, or
    sum_{j<=i} G_ij (q_i . k_j) x_j with keys; complex, or real with |G_ij|.
  """
  if k is not None and mix_method == "chunkwise":
    return _chunkwise_green(v, q, k, vals, hopping=hopping, z=z, carry=carry, method=method,
                            modulus=modulus)
  if k is not None:
    vals = (k[..., :, None] * vals[..., None, :]).reshape(*vals.shape[:-1], -1)
  if modulus:
    # |G_ij| = |g_j| prod_{j<u<=i} |c_u|: the real affine scan y_i = |t_i g_i| y_{i-1} + |g_i| x_i
    g, g_last = resolvent.causal_diag(v, hopping=hopping, z=z, carry=carry.g, method=method)
    y, y_last = value_scan(jnp.abs(hopping * g), jnp.abs(g)[..., None] * vals, carry.y, method)
    carry = resolvent.GreenCarry(g_last, y_last)
  else:
    y, carry = resolvent.causal_green(v, vals, hopping=hopping, z=z, carry=carry, method=method)
  return (y if k is None else _read(q, y)), carry


def _chunkwise_green(v, q, k, vals, *, hopping, z, carry, method, modulus):
  """The keyed Green mixers by the chunkwise kernel: o_i = sum_{j<=i} K_ij (q_i . k_j) x_j.

  K_ij = g_j prod_{j<u<=i} c_u (G), or |g_j| prod |c_u| (|G|), is the scalar-decay form of
  `ops.chunkwise` (DESIGN §2.11) with log c = log t + log(-g) and write weight g (or their
  moduli). The (n, d_head) state per head exists once per chunk, not once per token. Same carry
  layout as the recurrent form (state flattened key-major).
  """
  g, g_last = resolvent.causal_diag(v, hopping=hopping, z=z, carry=carry.g, method=method)
  log_t = jnp.log(jnp.asarray(hopping, jnp.float32))
  if modulus:
    log_c, weight = log_t + jnp.log(jnp.abs(g)), jnp.abs(g)
  else:
    log_c, weight = log_t + jnp.log(-g), g
  log_c = jnp.broadcast_to(log_c, g.shape)
  state = carry.y.reshape(*carry.y.shape[:-1], k.shape[-1], vals.shape[-1])
  o, state = chunkwise(q, k, vals, log_c, weight, state)
  return o, resolvent.GreenCarry(g_last, state.reshape(carry.y.shape))


def selective_decay(v, delta, rate, ward_scale, *, hopping, z, eta, g_prev, method: str,
                    write_form: str):
  """The decay and the write of the "ward_selective" step: log a_j and w_j of
  S_j = a_j S_{j-1} + w_j k_j x_j^T (DESIGN §2.12).

  Args:
    v, delta, rate, ward_scale, hopping, z, eta, method, write_form: as `selective_mix`.
    g_prev: (B, H) the resolvent's g at the token before the chunk (zeros for a fresh sequence).

  Returns:
    (log_a, write, g_last): log a_j <= 0 and w_j, (B, N, H) or, with a rate or a step per key
    dimension, (B, N, H, n); g_last (B, H) the resolvent's g at the chunk's last token (g_prev
    for the control).
  """
  per_key = rate.ndim == 2 or delta.ndim == 4
  # per key dimension every per-head quantity gains a trailing key axis (B, N, H, n)
  by_key = (lambda a: a[..., None]) if per_key else (lambda a: a)
  # a per-head rate or step then broadcasts over the key axis of the other
  lam = rate[:, None] if per_key and rate.ndim == 1 else rate
  step = delta if delta.ndim == 4 else by_key(delta)
  g_last, fresh = g_prev, False
  if v is not None:
    g, g_last = resolvent.causal_diag(v, hopping=hopping, z=z, carry=g_prev, method=method)
    im_prev = jnp.imag(jnp.concatenate([g_prev[..., None, :].astype(g.dtype), g[..., :-1, :]],
                                       axis=-2))
    # Ward: Im g_j = |g_j|^2 (eta_j + x_j) with x_j = t_j^2 Im g_{j-1}, so the past's share of
    # Im g_j is 1 - ratio_j = x_j / (eta_j + x_j) and lam_bk = -log of it = log1p(eta_j / x_j),
    # evaluated as softplus(log eta_j - 2 log t_j - log Im g_{j-1}): its derivatives are a
    # sigmoid times 1/eta, 2/t, 1/Im g. log1p(eta / x) itself differentiates through eta / x^2,
    # which overflows once x < ~1e-19 (a hopping t_j near 0 gets there), and a step Delta_j = 0
    # (the dead zone) then multiplies that inf by 0: NaN gradients with a finite loss.
    # x_j = 0 only where nothing was written yet (Im g_{-1} = 0 of a fresh sequence; S is empty
    # there): ratio is 1, a_j = 0 multiplies the empty state and the write 1 - a_j is exactly 1.
    # Any finite decay is exact there, so lam_bk is set to 0 and the write to 1 below.
    empty = im_prev <= 0
    fresh = by_key(empty)
    f = lambda a: a.astype(delta.dtype)
    log_x = 2 * jnp.log(f(hopping)) + jnp.log(jnp.where(empty, 1.0, f(im_prev)))
    lam_bk = jnp.where(empty, 0.0, jax.nn.softplus(jnp.log(f(eta)) - log_x))
    lam = lam + by_key(ward_scale * lam_bk)
  log_a = -step * lam  # <= 0: |a_j| <= 1; (B, N, H) or per key (B, N, H, n)
  if write_form == "step":
    # a_0 of a fresh sequence multiplies the empty state: no special case
    write = jnp.broadcast_to(step, log_a.shape)
  else:
    write = jnp.where(fresh, 1.0, -jnp.expm1(log_a))  # 1 - a_j, no cancellation at small steps
  return log_a, write, g_last


def selective_mix(v, q, k, x, delta, rate, ward_scale, *, hopping, z, eta,
                  carry: resolvent.GreenCarry, method: str, mix_method: str, write_form: str):
  """The "ward_selective" mixer (DESIGN §2.12): S_j = a_j S_{j-1} + w_j k_j x_j^T.

  Args:
    v: (B, N, H) potentials, or None for the scalar-decay control (no resolvent).
    q, k: (B, N, H, n); x: (B, N, H, d_head); delta: (B, N, H) steps Delta_j > 0, or
      (B, N, H, n) a step per key dimension (a diagonal decay).
    rate: (H,) A_h > 0, or (H, n) A_{h,i} > 0: a rate per key dimension (a diagonal decay);
    ward_scale: (H,) s_h >= 0, or None for the control.
    hopping, z, eta: the operator, per head (H,) or per position (B, N, H); None for the control.
    carry: GreenCarry(g_last (B, H), state (B, H, n * d_head) key-major) of the last chunk.
    method: the resolvent method; mix_method: "chunkwise" | "recurrent".
    write_form: the write weight w_j: "complement" (1 - a_j: S is a convex combination of the
      writes) or "step" (Delta_j, Mamba-2's write Delta_j B_j x_j).

  Returns:
    (o (B, N, H, d_head) real, new GreenCarry).
  """
  log_a, write, g_last = selective_decay(v, delta, rate, ward_scale, hopping=hopping, z=z,
                                         eta=eta, g_prev=carry.g, method=method,
                                         write_form=write_form)
  per_key = log_a.ndim == 4
  n, d = k.shape[-1], x.shape[-1]
  state = carry.y.reshape(*carry.y.shape[:-1], n, d)
  if mix_method == "chunkwise" and per_key:
    # S's row i decays by its own a_{j,i}: row i is a head of key dimension 1 (query q_i, key
    # k_i, the head's values), and o sums the rows' reads: n heads per head, one kernel
    lead = x.shape[:-2]
    rows = lambda a: a.reshape(*lead, -1, 1)  # (B, N, H, n) -> (B, N, H n, 1)
    xs = jnp.broadcast_to(x[..., None, :], (*x.shape[:-1], n, d)).reshape(*lead, -1, d)
    o, state = chunkwise(rows(q), rows(k), xs, rows(log_a)[..., 0], rows(write)[..., 0],
                         state.reshape(*state.shape[:-3], -1, 1, d))
    o = o.reshape(*lead, -1, n, d).sum(axis=-2)
    return o, resolvent.GreenCarry(g_last, state.reshape(carry.y.shape))
  if mix_method == "chunkwise":
    o, state = chunkwise(q, k, x, log_a, write, state)
    return o, resolvent.GreenCarry(g_last, state.reshape(carry.y.shape))
  # the reference form: the (n, d_head) state at every token
  kx = ((write if per_key else write[..., None]) * k)[..., :, None] * x[..., None, :]
  if per_key:  # every state entry its own decay: a scan of H n d heads of one value each
    decay = jnp.broadcast_to(jnp.exp(log_a)[..., None], kx.shape).reshape(*x.shape[:-2], -1)
    s_all, y_last = value_scan(decay, kx.reshape(*x.shape[:-2], -1, 1),
                               carry.y.reshape(*carry.y.shape[:-2], -1, 1), method)
    s_all = s_all.reshape(*x.shape[:-1], n * d)
    return _read(q, s_all), resolvent.GreenCarry(g_last, y_last.reshape(carry.y.shape))
  s_all, y_last = value_scan(jnp.exp(log_a), kx.reshape(*x.shape[:-1], -1), carry.y, method)
  return _read(q, s_all), resolvent.GreenCarry(g_last, y_last)


def green_selective_mix(v, q, k, x, delta, rate, ward_scale, *, hopping, z, eta, carry,
                        green_heads: int, method: str, mix_method: str, modulus: bool,
                        write_form: str):
  """Heads of both kinds in one block (DESIGN §2.13): the first `green_heads` heads mix keyed
  values by G (or |G|), as `green_mix`; the others by the selective step, as `selective_mix`.

  Heads are independent in both mixers (each has its own resolvent), so the block is the two
  mixers on the two slices of its heads; the features W_o reads concatenate both outputs.

  Args:
    v: (B, N, H) potentials; q, k: (B, N, H, n); x: (B, N, H, d_head); hopping, z, eta: per
      head (H,) or per position (B, N, H), for every head.
    delta, rate, ward_scale: the selective heads' steps (B, N, H_s[, n]), rates (H_s[, n]) and
      Ward scales (H_s,), H_s = H - green_heads.
    carry: (GreenCarry of the Green heads, GreenCarry of the selective heads).
    green_heads: H - H_s; method, mix_method, modulus, write_form: as the two mixers take them.

  Returns:
    ((o_green (B, N, H - H_s, d_head) complex, or real with |G|; o_selective
    (B, N, H_s, d_head) real), (GreenCarry, GreenCarry)).
  """
  h = green_heads
  per_head = lambda a: (a[..., :h], a[..., h:])  # v and the operator: heads last
  per_head_vec = lambda a: (a[..., :h, :], a[..., h:, :])  # q, k, x: heads before the vector
  (v_g, v_s), (t_g, t_s), (z_g, z_s), (_, eta_s) = map(per_head, (v, hopping, z, eta))
  (q_g, q_s), (k_g, k_s), (x_g, x_s) = map(per_head_vec, (q, k, x))
  carry_g, carry_s = carry
  o_g, carry_g = green_mix(v_g, x_g, q_g, k_g, hopping=t_g, z=z_g, carry=carry_g, method=method,
                           mix_method=mix_method, modulus=modulus)
  o_s, carry_s = selective_mix(v_s, q_s, k_s, x_s, delta, rate, ward_scale, hopping=t_s, z=z_s,
                               eta=eta_s, carry=carry_s, method=method, mix_method=mix_method,
                               write_form=write_form)
  return (o_g, o_s), (carry_g, carry_s)


def diag_features(g: jax.Array, eta: jax.Array) -> jax.Array:
  """[Re eta g, Im eta g] (..., 2H): |eta g| <= 1, features with no normalisation (DESIGN §2.8)."""
  eg = g * eta
  return jnp.concatenate([jnp.real(eg), jnp.imag(eg)], axis=-1)


def value_features(y: jax.Array, eta: Any | None) -> jax.Array:
  """Per-head outputs (..., H, d) as features (..., F): scaled by eta for the Green mixers
  (||r_i|| <= 1/eta bounds y), complex ones split into real and imaginary parts."""
  if eta is not None:
    y = y * eta[..., None]
  if jnp.iscomplexobj(y):
    y = jnp.concatenate([jnp.real(y), jnp.imag(y)], axis=-1)
  return y.reshape(*y.shape[:-2], -1)

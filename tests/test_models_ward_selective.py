"""The "ward_selective" mixer (DESIGN §2.12): the Ward identity, a numpy loop, bounds, gradients."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from bk_jax.models import build_model
import dense_reference as ref
from test_models_interface import tiny_config, tokens

KW = dict(bk_mixer="ward_selective", bk_head_dim=3, bk_key_dim=2)


def _operator_inputs(per_position: bool, n: int = 9, h: int = 4, seed: int = 0):
  rng = np.random.default_rng(seed)
  shape = (2, n, h) if per_position else (h,)
  v = rng.normal(size=(2, n, h))
  t = rng.uniform(0.3, 1.5, size=shape)
  z = rng.uniform(-3.5, -0.5, size=shape) + 1j * rng.uniform(0.01, 1.0, size=shape)
  return v, t, z


@pytest.mark.parametrize("per_position", [False, True])
def test_ward_identity_and_the_bk_log_decay_against_dense_inverses(per_position):
  """Im g_i = sum_{j<=i} eta_j |G_ij|^2 for the prefix resolvent (dense float64 inverses), and the
  mixer's lam_bk = log1p(eta_i / (t_i^2 Im g_{i-1})) equals -log(1 - eta_i |g_i|^2 / Im g_i)."""
  v, t, z = _operator_inputs(per_position)
  rows = ref.prefix_rows(v, t, z)  # (B, i, j, H)
  g = np.diagonal(rows, axis1=1, axis2=2).swapaxes(-1, -2)  # (B, N, H)
  eta = np.broadcast_to(np.imag(z), v.shape)
  np.testing.assert_allclose(np.imag(g), np.einsum("bjh,bijh->bih", eta, np.abs(rows) ** 2),
                             rtol=1e-12)
  ratio = eta * np.abs(g) ** 2 / np.imag(g)
  assert np.all((ratio > 0) & (ratio <= 1 + 1e-12)) and np.allclose(ratio[:, 0], 1.0)
  tt = np.broadcast_to(t, v.shape)
  lam_bk = np.log1p(eta[:, 1:] / (tt[:, 1:] ** 2 * np.imag(g[:, :-1])))
  np.testing.assert_allclose(lam_bk, -np.log1p(-ratio[:, 1:]), rtol=1e-10)


def _numpy_mixer(blk, uc, v, hopping, z, eta):
  """S_j = a_j S_{j-1} + w_j k_j x_j^T, o_i = q_i^T S_i, token by token in float64, with
  lam_bk from the Ward ratio of dense inverses (independent of the mixer's log1p form),
  w_j = 1 - a_j ("complement") or Delta_j ("step"), and a rate per head or per key dimension
  (then a_j is a vector over the rows of S); for the block's selective heads (all of
  "ward_selective"'s, the last bk_selective_heads of a keyed Green block)."""
  f64 = lambda a: np.asarray(a, np.float64)
  b, n, h = uc.shape[0], uc.shape[1], blk.sel_heads
  first = blk.n_heads - h  # the selective heads are the last h
  heads = lambda w, k: (f64(uc) @ f64(w.kernel[...])).reshape(b, n, blk.n_heads, k)[:, :, first:]
  q, k, x = heads(blk.w_q, blk.key_dim), heads(blk.w_k, blk.key_dim), heads(blk.w_x, blk.head_dim)
  if blk.resolvent:  # the operator of the selective heads
    v, hopping, z, eta = (np.asarray(a)[..., first:] for a in (v, hopping, z, eta))
  sp = lambda a: np.log1p(np.exp(a))
  bias = f64(blk.delta_bias[...])  # (H,) or, a step per key dimension, (H, n)
  delta = sp((f64(uc) @ f64(blk.w_delta.kernel[...])).reshape(b, n, *bias.shape) + bias)
  delta = np.maximum(delta - blk.step_threshold, 0.0)  # the dead zone: exactly 0 below tau
  delta = delta if delta.ndim == 4 else delta[..., None]  # (B, N, H, n) or (B, N, H, 1)
  rate = np.exp(f64(blk.a_log[...]))
  rate = rate if rate.ndim == 2 else rate[:, None]  # (H, n) or (H, 1)
  lam = np.broadcast_to(rate, delta.shape[:-1] + (max(rate.shape[-1], delta.shape[-1]),)).copy()
  if blk.resolvent:
    g = ref.causal_diag_jacobi(f64(v), f64(hopping), np.asarray(z, np.complex128))
    ratio = np.broadcast_to(f64(eta), g.shape) * np.abs(g) ** 2 / np.imag(g)
    lam_bk = np.zeros_like(ratio)  # ratio is 1 at the first token: a_0 = 0 (set below), write 1
    lam_bk[:, 1:] = -np.log1p(-ratio[:, 1:])
    lam = lam + (sp(f64(blk.ward_scale_raw[...])) * lam_bk)[..., None]
  a = np.exp(-delta * lam)  # (B, N, H, n) or (B, N, H, 1)
  if blk.resolvent:  # the first token multiplies the empty state: a_0 = 0 at any step, even 0
    a[:, 0] = 0.0
  w = np.broadcast_to(delta, a.shape) if blk.write_form == "step" else 1 - a
  s = np.zeros((b, h, blk.key_dim, blk.head_dim))
  out = np.zeros((b, n, h, blk.head_dim))
  for i in range(n):
    s = a[:, i, :, :, None] * s + w[:, i, :, :, None] * (
        k[:, i, :, :, None] * x[:, i, :, None, :])
    out[:, i] = np.einsum("bhn,bhnd->bhd", q[:, i], s)
  return out


@pytest.mark.parametrize("mix_method", ["chunkwise", "recurrent"])
@pytest.mark.parametrize("extra", [dict(), dict(selective_shift=True, selective_coupling=True),
                                   dict(bk_ward_decay=False), dict(bk_write="step"),
                                   dict(bk_write="step", bk_ward_decay=False),
                                   dict(bk_decay="key"),
                                   dict(bk_decay="key", bk_write="step", bk_ward_decay=False),
                                   dict(bk_step="key"),
                                   dict(bk_step="key", bk_write="step", bk_ward_decay=False),
                                   dict(bk_step="key", bk_decay="key"),
                                   dict(bk_step_threshold=0.05),
                                   dict(bk_step_threshold=0.05, bk_step="key", bk_write="step")],
                         ids=["per_head", "per_position", "control", "step_write",
                              "step_write_control", "key_decay", "key_decay_step_control",
                              "key_step", "key_step_step_control", "key_step_key_decay",
                              "step_threshold", "step_threshold_key_step_write"])
def test_mixer_matches_a_numpy_loop(mix_method, extra):
  blk = build_model(tiny_config("resnet_bk", bk_mix_method=mix_method, **KW, **extra)).blocks[0]
  if extra.get("selective_shift"):  # make the per-position operator really vary
    for w in (blk.w_e, blk.w_eta, blk.w_t):
      w.kernel[...] = 0.3 * jax.random.normal(jax.random.key(1), w.kernel[...].shape)
  uc = jax.random.normal(jax.random.key(0), (2, 11, blk.d_model))
  v = jax.random.normal(jax.random.key(2), (2, 11, blk.n_heads)) if blk.resolvent else None
  hopping, z, eta = blk.operator(uc) if blk.resolvent else (None, None, None)
  mix = jax.jit(lambda uc, v, hopping, z, eta: blk.mix(v, blk.mixer_inputs(uc, uc),
                                                        blk.init_carry(2).res, hopping, z, eta))
  got, _ = mix(uc, v, hopping, z, eta)
  want = _numpy_mixer(blk, uc, v, hopping, z, eta)
  if blk.step_threshold:  # the dead zone is exercised: some tokens skipped, some written
    delta = np.asarray(blk.mixer_inputs(uc, uc)["delta"])
    assert 0.1 < np.mean(delta == 0.0) < 0.9
  assert got.dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(got), want, rtol=2e-4, atol=2e-5 * np.abs(want).max())


def test_output_is_bounded_and_a_zero_step_keeps_the_state():
  """|o_i| <= |q_i| max_j |k_j| |x_j| (S is a convex combination of writes) at extreme steps;
  Delta -> 0 for every token after the first keeps the first token's write whole."""
  blk = build_model(tiny_config("resnet_bk", **KW)).blocks[0]
  blk.w_delta.kernel[...] = 40.0 * jax.random.normal(jax.random.key(3), blk.w_delta.kernel[...].shape)
  uc = 3.0 * jax.random.normal(jax.random.key(0), (2, 64, blk.d_model))
  v = 5.0 * jax.random.normal(jax.random.key(2), (2, 64, blk.n_heads))
  hopping, z, eta = blk.operator(uc)
  o, _ = blk.mix(v, blk.mixer_inputs(uc, uc), blk.init_carry(2).res, hopping, z, eta)
  heads = lambda w, k: np.asarray(uc @ w.kernel[...]).reshape(2, 64, blk.n_heads, k)
  q, k, x = heads(blk.w_q, 2), heads(blk.w_k, 2), heads(blk.w_x, 3)
  kx = np.linalg.norm(k, axis=-1) * np.linalg.norm(x, axis=-1)  # (B, N, H)
  bound = np.linalg.norm(q, axis=-1) * np.maximum.accumulate(kx, axis=1)
  assert np.all(np.isfinite(np.asarray(o)))
  assert np.all(np.linalg.norm(np.asarray(o), axis=-1) <= bound * (1 + 1e-5) + 1e-6)
  # a zero step after the first token: S_i = (1 - a_0) k_0 x_0^T for every i
  blk.w_delta.kernel[...] = jnp.zeros_like(blk.w_delta.kernel[...])
  blk.delta_bias[...] = jnp.full_like(blk.delta_bias[...], -80.0)  # Delta = softplus(-80) ~ 2e-35
  o, carry = blk.mix(v, blk.mixer_inputs(uc, uc), blk.init_carry(2).res, hopping, z, eta)
  s0 = carry.y.reshape(2, blk.n_heads, 2, 3)
  np.testing.assert_allclose(np.asarray(o), np.einsum("bihn,bhnd->bihd", q, np.asarray(s0)),
                             rtol=1e-5, atol=1e-30)


def test_gradients_match_finite_differences_in_float64():
  """The mixer in float64 (a float64 model computes it in float64): d loss along a random
  direction of (inputs, potentials, per-position operator) by central differences equals the
  autodiff gradient's projection, the fresh first token (where the write is exactly 1) included;
  for both the chunkwise and the recurrent form."""
  with jax.enable_x64(True):
    for mix_method in ("chunkwise", "recurrent"):
      cfg = tiny_config("resnet_bk", **KW, bk_mix_method=mix_method, dtype="float64",
                        param_dtype="float64")
      blk = build_model(cfg).blocks[0]
      v, t, z = _operator_inputs(True, n=13, h=blk.n_heads, seed=1)
      uc = np.random.default_rng(2).normal(size=(2, 13, blk.d_model))
      args = tuple(jnp.asarray(a) for a in (uc, v, t, z.real, z.imag))

      @jax.jit
      def loss(uc, v, t, e, eta):
        o, _ = blk.mix(v, blk.mixer_inputs(uc, uc), blk.init_carry(2).res, t,
                       jax.lax.complex(e, eta), eta)
        assert o.dtype == jnp.float64
        return jnp.sum(jnp.tanh(o) ** 2)

      grads = jax.jit(jax.grad(loss, argnums=tuple(range(5))))(*args)
      rng = np.random.default_rng(3)
      direction = [jnp.asarray(rng.normal(size=a.shape)) for a in args]
      step = lambda e: [a + e * d for a, d in zip(args, direction)]
      eps = 1e-6
      fd = (loss(*step(eps)) - loss(*step(-eps))) / (2 * eps)
      ad = sum(jnp.vdot(g, d) for g, d in zip(grads, direction))
      np.testing.assert_allclose(float(fd), float(ad), rtol=1e-7)


@pytest.mark.parametrize("delta_min,rate_max", [(1e-3, 1.0), (1e-5, 16.0)])
def test_initial_steps_and_rates_span_their_configured_ranges(delta_min, rate_max):
  """At init (input-dependent part ~0) the heads' steps Delta_h = softplus(bias_h) spread
  geometrically from model.bk_delta_min_init to DELTA_MAX_INIT, and the rates A_h from 1 to
  model.bk_rate_max_init in the same order (all 1 by default)."""
  from bk_jax.models.bk_mixers import DELTA_MAX_INIT

  blk = build_model(tiny_config("resnet_bk", **KW, n_heads=4, bk_delta_min_init=delta_min,
                                bk_rate_max_init=rate_max)).blocks[0]
  delta = np.asarray(jax.nn.softplus(blk.delta_bias[...]))
  np.testing.assert_allclose(delta, np.geomspace(delta_min, DELTA_MAX_INIT, 4), rtol=1e-6)
  np.testing.assert_allclose(np.exp(np.asarray(blk.a_log[...])), np.geomspace(1.0, rate_max, 4),
                             rtol=1e-6)
  # a rate per key dimension: A_{h,i} = (i + 1) A_h, Mamba-1's rates 1..n within each head
  blk = build_model(tiny_config("resnet_bk", **KW, n_heads=4, bk_rate_max_init=rate_max,
                                bk_decay="key")).blocks[0]
  np.testing.assert_allclose(np.exp(np.asarray(blk.a_log[...])),
                             np.geomspace(1.0, rate_max, 4)[:, None] * np.arange(1, 3)[None, :],
                             rtol=1e-6)
  # a step per key dimension: every key dimension of a head starts at the head's step
  blk = build_model(tiny_config("resnet_bk", **KW, n_heads=4, bk_delta_min_init=delta_min,
                                bk_step="key")).blocks[0]
  np.testing.assert_allclose(np.asarray(jax.nn.softplus(blk.delta_bias[...])),
                             np.repeat(np.geomspace(delta_min, DELTA_MAX_INIT, 4)[:, None], 2, 1),
                             rtol=1e-6)
  assert blk.w_delta.kernel[...].shape == (blk.d_model, 4 * 2)
  # a step threshold tau shifts the biases, not the initial steps: softplus(bias) - tau = Delta_h
  blk = build_model(tiny_config("resnet_bk", **KW, n_heads=4, bk_delta_min_init=delta_min,
                                bk_step_threshold=0.01)).blocks[0]
  np.testing.assert_allclose(np.asarray(jax.nn.softplus(blk.delta_bias[...])) - 0.01,
                             np.geomspace(delta_min, DELTA_MAX_INIT, 4), rtol=1e-4,
                             atol=1e-9)



def test_step_penalty_is_the_mean_step_summed_over_layers():
  """aux_loss = beta * sum over layers of mean_{b,j,h} Delta_j (the steps the layers use), and
  bk/step_skip_fraction the share of steps in the dead zone; without either option neither figure
  exists and the aux loss is 0."""
  from bk_jax.eval.recall_memory import layer_decays

  tokens = jax.random.randint(jax.random.key(1), (2, 20), 0, 16)
  model = build_model(tiny_config("resnet_bk", **KW, vocab_size=16, bk_step_threshold=0.05,
                                  bk_step_penalty=0.1))
  aux = model.forward(tokens).aux
  _, per_layer = layer_decays(model, tokens)
  deltas = [np.asarray(layer.delta, np.float64) for layer in per_layer]
  assert any(np.any(d == 0) for d in deltas) and any(np.any(d > 0) for d in deltas)
  np.testing.assert_allclose(float(aux["aux_loss"]), 0.1 * sum(d.mean() for d in deltas),
                             rtol=1e-5)
  np.testing.assert_allclose(float(aux["bk/step_skip_fraction"]),
                             np.mean([np.mean(d == 0) for d in deltas]), rtol=1e-6)
  plain = build_model(tiny_config("resnet_bk", **KW, vocab_size=16)).forward(tokens).aux
  assert float(plain["aux_loss"]) == 0.0 and "bk/step_mean" not in plain


@pytest.mark.parametrize("mix_method", ["chunkwise", "recurrent"])
@pytest.mark.parametrize("mixer", ["green", "green_modulus"])
def test_heads_of_both_kinds_match_float64_references(mixer, mix_method):
  """A keyed Green block with selective heads (bk_selective_heads): its Green heads against dense
  Jacobi inverses, o_i = sum_{j<=i} K_ij (q_i . k_j) x_j, and its selective heads against the
  float64 loop, on a per-position operator with the step's dead zone exercised; the features
  are the Green heads' (eta-scaled) then the selective heads'."""
  cfg = tiny_config("resnet_bk", bk_mixer=mixer, bk_head_dim=3, bk_key_dim=2,
                    bk_selective_heads=3, n_heads=5, selective_shift=True,
                    selective_coupling=True, bk_step_threshold=0.05, bk_mix_method=mix_method)
  blk = build_model(cfg).blocks[0]
  for w in (blk.w_e, blk.w_eta, blk.w_t):  # make the per-position operator really vary
    w.kernel[...] = 0.3 * jax.random.normal(jax.random.key(1), w.kernel[...].shape)
  uc = jax.random.normal(jax.random.key(0), (2, 11, cfg.d_model))
  v = jax.random.normal(jax.random.key(2), (2, 11, cfg.n_heads))
  hopping, z, eta = blk.operator(uc)
  inputs = blk.mixer_inputs(uc, uc)
  assert 0.1 < np.mean(np.asarray(inputs["delta"]) == 0.0) < 0.9  # some skipped, some written
  (got_g, got_s), _ = blk.mix(v, inputs, blk.init_carry(2).res, hopping, z, eta)
  heads = lambda w, k: np.asarray(uc @ w.kernel[...], np.float64).reshape(2, 11, 5, k)[:, :, :2]
  x, k, q = heads(blk.w_x, 3), heads(blk.w_k, 2), heads(blk.w_q, 2)
  rows = ref.prefix_rows(*(np.asarray(a)[..., :2] for a in (v, hopping, z)))  # (B, i, j, H)
  rows = np.abs(rows) if mixer == "green_modulus" else rows
  want_g = np.einsum("bijh,bihn,bjhn,bjhd->bihd", rows, q, k, x)
  want_s = _numpy_mixer(blk, uc, v, hopping, z, eta)
  assert got_g.shape == (2, 11, 2, 3) and got_s.shape == (2, 11, 3, 3)
  assert np.iscomplexobj(np.asarray(got_g)) == (mixer == "green") and got_s.dtype == jnp.float32
  for got, want in ((got_g, want_g), (got_s, want_s)):
    np.testing.assert_allclose(np.asarray(got), want, rtol=2e-4, atol=2e-5 * np.abs(want).max())
  feats = np.asarray(blk.features((got_g, got_s), eta))
  eta_g = np.asarray(eta)[..., :2, None]
  green_feats = np.asarray(got_g) * eta_g  # per head [Re, Im] of eta y for G, eta |y| for |G|
  if mixer == "green":
    green_feats = np.concatenate([green_feats.real, green_feats.imag], -1)
  want = np.concatenate([green_feats.reshape(2, 11, -1), np.asarray(got_s).reshape(2, 11, -1)], -1)
  np.testing.assert_allclose(feats, want, rtol=1e-6)
  assert feats.shape[-1] == blk.w_o.kernel[...].shape[0]


@pytest.mark.parametrize("method", ["scan", "associative"])
def test_the_bk_log_decay_has_finite_gradients_where_the_hopping_nears_zero(method):
  """A per-position hopping t_j near 0 makes x_j = t_j^2 Im g_{j-1} ~ 1e-24: lam_bk is ~55 and
  its derivatives ~1/t and ~1/Im g stay finite, also where the step is exactly 0 (the dead zone
  multiplies them by 0). log1p(eta / x) differentiated through eta / x^2 gave inf there, and
  0 * inf NaN gradients with a finite loss. The values match float64 log1p(eta / x)."""
  from bk_jax.models.bk_mixers import selective_decay

  v, t, z = _operator_inputs(per_position=True, n=7, h=3)
  t[:, 3, 0] = 1e-12  # x_3 = t_3^2 Im g_2 ~ 1e-24 in head 0
  delta = np.full(v.shape, 0.1)
  delta[:, 3, 0] = 0.0  # the step's dead zone at that token
  f32 = lambda a: jnp.asarray(a, jnp.float32)
  rate, scale = f32(np.ones(3)), f32(np.full(3, 0.7))

  def decay(v, delta, t, eta):
    zz = jax.lax.complex(f32(np.real(z)), eta)
    return selective_decay(v, delta, rate, scale, hopping=t, z=zz, eta=eta,
                           g_prev=jnp.zeros((2, 3), jnp.complex64), method=method,
                           write_form="complement")

  args = (f32(v), f32(delta), f32(t), f32(np.imag(z)))
  total = lambda *a: sum(jnp.sum(x) for x in decay(*a)[:2])  # log a_j and the write w_j
  grads = jax.grad(total, argnums=(0, 1, 2, 3))(*args)
  for g in grads:
    assert np.all(np.isfinite(np.asarray(g)))
  log_a = np.asarray(decay(*args)[0], np.float64)
  g64 = np.diagonal(ref.prefix_rows(v, t, z), axis1=1, axis2=2).swapaxes(-1, -2)
  lam_bk = np.log1p(np.imag(z)[:, 1:] / (t[:, 1:] ** 2 * np.imag(g64[:, :-1])))
  assert lam_bk[:, 2, 0].min() > 50  # the near-zero hopping's token
  live = delta[:, 1:] > 0
  np.testing.assert_allclose((-log_a[:, 1:][live] / delta[:, 1:][live] - 1.0) / 0.7,
                             lam_bk[live], rtol=2e-4)

"""ResNet-BK block variants: causality, streaming == full, config validation, bounds."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from bk_jax.models import build_model, validate_model_config
from bk_jax.models.bk import BKBlock
from bk_jax.models.bk_mixers import causal_conv, initial_eta
from bk_jax.models.config import BK_BLOCKS, use_bk_block
from bk_jax.ops import resolvent
import dense_reference as ref
from test_models_interface import V, tiny_config, tokens

VARIANTS = {
    "conv": dict(bk_conv=True),
    "gate": dict(bk_gate=True),
    "sel_shift": dict(selective_shift=True),
    "sel_coupling": dict(selective_coupling=True),
    "green": dict(bk_mixer="green", bk_head_dim=4),
    "green_conv_gate": dict(bk_mixer="green", bk_head_dim=4, bk_conv=True, bk_gate=True),
    "green_all": dict(bk_mixer="green", bk_head_dim=4, bk_conv=True, bk_gate=True,
                      selective_shift=True, selective_coupling=True),
    "green_keyed": dict(bk_mixer="green", bk_head_dim=4, bk_key_dim=3, bk_conv=True, bk_gate=True),
    "green_modulus_keyed": dict(bk_mixer="green_modulus", bk_head_dim=4, bk_key_dim=3,
                                bk_conv=True, bk_gate=True, selective_shift=True,
                                selective_coupling=True),
    "green_keyed_recurrent": dict(bk_mixer="green", bk_head_dim=4, bk_key_dim=3, bk_conv=True,
                                  bk_mix_method="recurrent"),
    "green_scan_layers": dict(bk_mixer="green", bk_head_dim=4, bk_conv=True, scan_layers=True),
    "ward_selective": dict(bk_mixer="ward_selective", bk_head_dim=4, bk_key_dim=3, bk_conv=True,
                           bk_gate=True, selective_shift=True, selective_coupling=True),
    "ward_selective_recurrent": dict(bk_mixer="ward_selective", bk_head_dim=4, bk_key_dim=3,
                                     bk_mix_method="recurrent"),
    "ward_selective_control": dict(bk_mixer="ward_selective", bk_head_dim=4, bk_key_dim=3,
                                   bk_conv=True, bk_ward_decay=False),
    "ward_selective_key_decay": dict(bk_mixer="ward_selective", bk_head_dim=4, bk_key_dim=3,
                                     bk_conv=True, bk_decay="key"),
    "ward_selective_key_step": dict(bk_mixer="ward_selective", bk_head_dim=4, bk_key_dim=3,
                                    bk_conv=True, bk_step="key"),
    # heads of both kinds: Green heads and selective heads (with the step's dead zone and lasso)
    "green_selective": dict(bk_mixer="green", bk_head_dim=4, bk_key_dim=3, bk_selective_heads=2,
                            bk_conv=True, bk_gate=True, selective_shift=True,
                            selective_coupling=True, bk_step_threshold=1e-3, bk_step_penalty=0.03),
    "green_modulus_selective_recurrent": dict(bk_mixer="green_modulus", bk_head_dim=4,
                                              bk_key_dim=3, bk_selective_heads=1,
                                              bk_mix_method="recurrent", bk_step="key"),
    # every mixer takes the block's other options: MoE (learned router), monitors, semiseparable
    "green_keyed_moe_monitors": dict(bk_mixer="green", bk_head_dim=4, bk_key_dim=3, use_moe=True,
                                     router="learned", use_birman_schwinger=True),
    "diag_semiseparable_conv_long_memory": dict(use_semiseparable=True, semiseparable_rank=2,
                                                bk_conv=True, bk_init="long_memory"),
}


def make(variant: str):
  return build_model(tiny_config("resnet_bk", **VARIANTS[variant]))


def test_one_block_class_for_every_mixer():
  assert type(build_model(tiny_config("resnet_bk")).blocks[0]) is BKBlock
  for v in VARIANTS:  # scan_layers stacks the layers into one block
    blocks = make(v).blocks
    assert type(blocks if isinstance(blocks, BKBlock) else blocks[0]) is BKBlock, v


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_causal(variant):
  model = make(variant)
  t = tokens()
  j = 13
  t2 = t.at[:, j].set((t[:, j] + 7) % V)
  fwd = nnx.jit(lambda m, x: m(x))
  a, b = fwd(model, t), fwd(model, t2)
  assert a.shape == (2, 24, V) and a.dtype == jnp.float32
  np.testing.assert_array_less(np.abs(np.asarray(a[:, :j] - b[:, :j])).max(), 1e-6)
  assert np.abs(np.asarray(a[:, j:] - b[:, j:])).max() > 1e-4


@pytest.mark.slow
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_streaming_chunks_equal_full(variant):
  model = make(variant)
  n = 21
  t = tokens(n=n)
  full = model(t)
  cache = model.init_cache(2)
  shapes = jax.tree.map(jnp.shape, cache)
  outs = []
  for s, e in ((0, 1), (1, 3), (3, 11), (11, n)):  # chunks shorter than the conv window too
    y, cache = model(t[:, s:e], cache=cache)
    outs.append(y)
    assert jax.tree.map(jnp.shape, cache) == shapes  # flat state
  np.testing.assert_allclose(np.concatenate(outs, 1), np.asarray(full), rtol=2e-4, atol=2e-5)


@pytest.mark.parametrize("mix_method", ["chunkwise", "recurrent"])
@pytest.mark.parametrize("mixer", ["green", "green_modulus"])
@pytest.mark.parametrize("selective", [False, True])
def test_keyed_green_mixer_matches_dense_float64(selective, mixer, mix_method):
  """o_i = sum_{j<=i} K_ij (q_i . k_j) x_j against dense Jacobi inverses, with the kernel
  K = [(H_{0..i} - z)^{-1}]_{ij} ("green") or its modulus ("green_modulus"), by the chunkwise
  kernel and by the per-token recurrence."""
  cfg = tiny_config("resnet_bk", bk_mixer=mixer, bk_head_dim=3, bk_key_dim=2,
                    selective_shift=selective, selective_coupling=selective,
                    bk_mix_method=mix_method)
  blk = build_model(cfg).blocks[0]
  if selective:  # make the per-position operator really vary
    for w in (blk.w_e, blk.w_eta, blk.w_t):
      w.kernel[...] = 0.3 * jax.random.normal(jax.random.key(1), w.kernel[...].shape)
  uc = jax.random.normal(jax.random.key(0), (2, 9, cfg.d_model))
  v = jax.random.normal(jax.random.key(2), (2, 9, cfg.n_heads))
  hopping, z, eta = blk.operator(uc)
  got, _ = blk.mix(v, blk.mixer_inputs(uc, uc), blk.init_carry(2).res, hopping, z, eta)
  heads = lambda w, k: np.asarray(uc @ w.kernel[...], np.float64).reshape(2, 9, cfg.n_heads, k)
  x, k, q = heads(blk.w_x, 3), heads(blk.w_k, 2), heads(blk.w_q, 2)
  rows = ref.prefix_rows(np.asarray(v), np.asarray(hopping), np.asarray(z))  # (B, i, j, H)
  if mixer == "green_modulus":
    rows = np.abs(rows)
    assert not np.iscomplexobj(np.asarray(got))
  want = np.einsum("bijh,bihn,bjhn,bjhd->bihd", rows, q, k, x)
  np.testing.assert_allclose(np.asarray(got), want, rtol=2e-4, atol=2e-5 * np.abs(want).max())


@pytest.mark.parametrize("mixer,decay,sel", [("green", "head", 0), ("green_modulus", "head", 0),
                                             ("ward_selective", "head", 0),
                                             ("ward_selective", "key", 0), ("green", "key", 2)])
def test_chunkwise_and_recurrent_keyed_mixers_agree_with_gradients(mixer, decay, sel):
  """The keyed block by the chunkwise kernel and by the per-token recurrence, same parameters:
  logits and every parameter gradient agree to float32 rounding (the same maths); `sel`
  selective heads beside the Green heads."""
  kw = dict(bk_mixer=mixer, bk_head_dim=4, bk_key_dim=3, bk_conv=True, bk_gate=True,
            selective_shift=True, selective_coupling=True, eta_min=1e-3, bk_decay=decay,
            bk_selective_heads=sel)
  models = {m: build_model(tiny_config("resnet_bk", bk_mix_method=m, **kw))
            for m in ("chunkwise", "recurrent")}
  t = tokens(n=40)

  def loss_and_grads(model):
    graphdef, params = nnx.split(model, nnx.Param)
    loss = lambda p: jnp.mean(nnx.merge(graphdef, p)(t) ** 2)
    return jax.jit(jax.value_and_grad(loss))(params)

  (l_c, g_c), (l_r, g_r) = map(loss_and_grads, models.values())
  np.testing.assert_allclose(float(l_c), float(l_r), rtol=1e-5)
  for a, b in zip(jax.tree.leaves(g_c), jax.tree.leaves(g_r)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-4,
                               atol=2e-5 * float(np.abs(np.asarray(b)).max()) + 1e-12)


def test_causal_conv_matches_numpy_and_streams():
  rng = np.random.default_rng(0)
  u = rng.normal(size=(2, 9, 3)).astype(np.float32)
  w = rng.normal(size=(4, 3)).astype(np.float32)
  b = rng.normal(size=(3,)).astype(np.float32)
  upad = np.concatenate([np.zeros((2, 3, 3), np.float32), u], 1)
  want = np.stack([sum(upad[:, i + k] * w[k] for k in range(4)) + b for i in range(9)], 1)
  out, st = causal_conv(jnp.asarray(u), jnp.asarray(w), jnp.asarray(b), jnp.zeros((2, 3, 3)))
  np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(st, u[:, -3:])
  o1, s1 = causal_conv(jnp.asarray(u[:, :2]), jnp.asarray(w), jnp.asarray(b), jnp.zeros((2, 3, 3)))
  o2, _ = causal_conv(jnp.asarray(u[:, 2:]), jnp.asarray(w), jnp.asarray(b), s1)
  np.testing.assert_allclose(np.concatenate([o1, o2], 1), want, rtol=1e-5, atol=1e-5)


def test_selective_shift_keeps_im_z_above_eta_min_at_extreme_inputs():
  cfg = tiny_config("resnet_bk", selective_shift=True, selective_coupling=True)
  blk = build_model(cfg).blocks[0]
  for w in (blk.w_e, blk.w_eta, blk.w_t):
    w.kernel[...] = 1e3 * jnp.ones_like(w.kernel[...])
  u = jnp.concatenate([jnp.full((1, 3, cfg.d_model), 50.0), jnp.full((1, 3, cfg.d_model), -50.0)], 1)
  hopping, z, eta = blk.operator(u)
  assert hopping.shape == z.shape == (1, 6, cfg.n_heads)
  assert float(jnp.min(jnp.imag(z))) >= cfg.eta_min and float(jnp.min(hopping)) >= 0.0
  assert bool(jnp.all(jnp.isfinite(jnp.abs(z))))


def _memories_at_init(cfg, n: int = 4000) -> np.ndarray:
  """Per-head memory -1 / mean log|t_i g_i| of a built block at init, on the potentials
  and operator the block itself makes from random unit-RMS inputs (as after its RMSNorm)."""
  blk = build_model(cfg).blocks[0]
  u = jax.random.normal(jax.random.key(1), (2, n, cfg.d_model))
  uc, _, v = blk.potentials(u, blk.init_carry(2).conv)
  hopping, z, _ = blk.operator(uc)
  hopping = jnp.broadcast_to(hopping, v.shape)
  g, _ = resolvent.causal_diag(v, hopping=hopping, z=jnp.broadcast_to(z, v.shape), method="scan")
  log_decay = np.log(np.abs(np.asarray(hopping * g)))[:, n // 4:]  # past the start-up
  return -1.0 / log_decay.mean(axis=(0, 1))


def test_long_memory_init_spans_mamba_like_memories():
  """bk_init="long_memory": memories at init spread from a few tokens to hundreds, rising head by
  head; "short_memory" (the default): every head forgets within ~15 tokens, both because eta >= 0.1 and because the
  random potentials localize the Green's function (what kept induction at 256 at chance)."""
  base = dict(bk_mixer="green_modulus", bk_head_dim=4, bk_conv=True, selective_shift=True,
              selective_coupling=True, eta_min=1e-3, n_heads=16)
  short = _memories_at_init(tiny_config("resnet_bk", **base))
  long = _memories_at_init(tiny_config("resnet_bk", bk_init="long_memory", **base))
  assert short.max() < 15
  assert long.min() < 3 and long.max() > 400  # eta_min 1e-3: up to ~660 tokens at v = 0
  assert np.all(np.diff(long) > 0)  # each head remembers longer than the last
  np.testing.assert_allclose(initial_eta(16, 1e-3, "long_memory")[[0, -1]], [1.0, 2e-3])


def test_mimetic_init_ties_queries_to_keys_and_keeps_long_memories():
  """bk_init="mimetic": long_memory's operator, and W_q = W_k so q_i . k_i = |k_i|^2 >= 0 (each
  position's query matches its own key best on average); training moves them apart freely."""
  kw = dict(bk_mixer="green_modulus", bk_head_dim=4, bk_key_dim=3, bk_conv=True, eta_min=1e-3,
            n_heads=16)
  mim = build_model(tiny_config("resnet_bk", bk_init="mimetic", **kw)).blocks[0]
  np.testing.assert_array_equal(np.asarray(mim.w_q.kernel[...]), np.asarray(mim.w_k.kernel[...]))
  assert mim.w_q.kernel is not mim.w_k.kernel  # two parameters, not one shared
  np.testing.assert_allclose(_memories_at_init(tiny_config("resnet_bk", bk_init="mimetic", **kw)),
                             _memories_at_init(tiny_config("resnet_bk", bk_init="long_memory", **kw)),
                             rtol=1e-5)
  other = build_model(tiny_config("resnet_bk", bk_init="long_memory", **kw)).blocks[0]
  assert not np.allclose(np.asarray(other.w_q.kernel[...]), np.asarray(other.w_k.kernel[...]))


@pytest.mark.parametrize("bad,msg", [
    (dict(bk_mixer="dense"), "bk_mixer"),
    (dict(bk_head_dim=0), "bk_head_dim"),
    (dict(bk_key_dim=2), "bk_key_dim"),
    (dict(bk_mixer="green", bk_key_dim=-1), "bk_key_dim"),
    (dict(bk_mixer="green", use_semiseparable=True), "use_semiseparable"),
    (dict(selective_shift=True, use_semiseparable=True), "use_semiseparable"),
    (dict(selective_coupling=True, use_birman_schwinger=True), "use_birman_schwinger"),
    (dict(bk_mixer="ward_selective", bk_key_dim=2, bk_ward_decay=False,
          use_birman_schwinger=True), "use_birman_schwinger"),
    (dict(bk_mixer="green", use_moe=True, router="scattering"), "router='scattering'"),
    (dict(bk_mixer="green", bk_init="long"), "bk_init"),
    (dict(bk_init="seed"), "bk_init"),  # the RNG seed is `seed`; the default init is short_memory
    (dict(bk_mixer="green", bk_key_dim=2, bk_mix_method="fast"), "bk_mix_method"),
    (dict(bk_mixer="ward_selective"), "needs bk_key_dim > 0"),
    (dict(bk_mixer="ward_selective", bk_key_dim=2, bk_delta_min_init=0.0), "bk_delta_min_init"),
    (dict(bk_mixer="ward_selective", bk_key_dim=2, bk_delta_min_init=0.5), "bk_delta_min_init"),
    (dict(bk_mixer="ward_selective", bk_key_dim=2, bk_rate_max_init=0.5), "bk_rate_max_init"),
    (dict(bk_mixer="green", bk_key_dim=2, bk_ward_decay=False), "bk_ward_decay"),
    (dict(bk_mixer="ward_selective", bk_key_dim=2, bk_write="delta"), "bk_write"),
    (dict(bk_mixer="green", bk_key_dim=2, bk_write="step"), "needs bk_mixer='ward_selective'"),
    (dict(bk_mixer="ward_selective", bk_key_dim=2, bk_decay="state"), "bk_decay"),
    (dict(bk_mixer="green", bk_key_dim=2, bk_decay="key"), "needs bk_mixer='ward_selective'"),
    (dict(bk_mixer="ward_selective", bk_key_dim=2, bk_step="value"), "bk_step"),
    (dict(bk_mixer="green", bk_key_dim=2, bk_step="key"), "needs bk_mixer='ward_selective'"),
    (dict(bk_mixer="ward_selective", bk_key_dim=2, bk_step_threshold=-1e-3), "bk_step_threshold"),
    (dict(bk_mixer="green", bk_key_dim=2, bk_step_threshold=1e-3),
     "needs bk_mixer='ward_selective'"),
    (dict(bk_mixer="ward_selective", bk_key_dim=2, bk_ward_decay=False, selective_shift=True),
     "no resolvent"),
    (dict(bk_mixer="green", bk_key_dim=2, bk_selective_heads=4), r"in \[0, n_heads\)"),
    (dict(bk_mixer="green", bk_key_dim=2, bk_selective_heads=-1), r"in \[0, n_heads\)"),
    (dict(bk_selective_heads=2), "needs a keyed Green block"),
    (dict(bk_mixer="green", bk_selective_heads=2), "needs a keyed Green block"),
    (dict(bk_mixer="ward_selective", bk_key_dim=2, bk_selective_heads=2),
     "needs a keyed Green block"),
    (dict(bk_mixer="green", bk_key_dim=2, bk_step_penalty=0.1), "or bk_selective_heads > 0"),
])
def test_config_validation(bad, msg):
  with pytest.raises(ValueError, match=msg):
    validate_model_config(tiny_config("resnet_bk", **bad))


@pytest.mark.parametrize("name", list(BK_BLOCKS))
def test_named_blocks_set_their_options_and_build(name):
  c = use_bk_block(tiny_config("mamba", n_heads=16), name)  # the named blocks' head count
  assert c.kind == "resnet_bk"
  assert all(c[k] == v for k, v in BK_BLOCKS[name].items())
  validate_model_config(c)
  logits = build_model(c)(tokens(2, 16))
  assert logits.shape == (2, 16, V) and bool(jnp.isfinite(logits).all())


def test_unknown_named_block_is_one_clear_error():
  with pytest.raises(ValueError, match="unknown ResNet-BK block 'fast'; expected one of green_keyed"):
    use_bk_block(tiny_config("resnet_bk"), "fast")


@pytest.mark.slow
@pytest.mark.parametrize("mixer,key_dim,sel", [("green", 0, 0), ("green", 2, 0),
                                               ("green_modulus", 2, 0), ("ward_selective", 2, 0),
                                               ("green", 2, 2)])
def test_green_mixer_trains_the_same_on_a_sequence_parallel_mesh(mixer, key_dim, sel):
  """Green, keyed G or keyed |G| (the chunkwise kernel's sequence-parallel combine) + conv +
  gate: 3 train steps on mesh sequence=8 (and data 2 x sequence 4) equal one device
  (tests/sharding_checks.py, 8 fake CPU devices)."""
  import json

  from sharding_checks import run_check

  ov = dict(bk_mixer=mixer, bk_head_dim=4, bk_key_dim=key_dim, bk_conv=True, bk_gate=True,
            bk_selective_heads=sel)
  res = run_check("train_variant_meshes", json.dumps(ov), "1,1,1,8", "2,1,1,4")
  for spec in ("1,1,1,8", "2,1,1,4"):
    assert res[spec]["loss"] <= 1e-5 and res[spec]["params"] <= 1e-5, (spec, res[spec])

"""The recall-memory probe (bk_jax.eval.recall_memory): a unit's hold of a write equals what the
real mixer or scan reads of that single write, the probe's walk is the model's forward, and bad
inputs are one error."""

from __future__ import annotations

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from bk_jax.data import default_synthetic_config
from bk_jax.eval.loading import EvalError
from bk_jax.eval.recall_memory import (MambaDecays, SelectiveDecays, format_positions, format_table,
                                       kept_writes, layer_decays, layer_units, memory_table,
                                       parse_filler, parse_rate_scales, scale_rates)
from bk_jax.models import build_model
from bk_jax.models.bk_mixers import selective_decay
from test_models_interface import tiny_config

KW = dict(bk_mixer="ward_selective", bk_head_dim=3, bk_key_dim=2)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("extra", [dict(), dict(bk_decay="key"),
                                   pytest.param(dict(bk_write="step"), marks=pytest.mark.slow),
                                   dict(bk_ward_decay=False), dict(bk_step="key")],
                         ids=["per_head", "key_decay", "step_write", "control", "key_step"])
def test_share_is_what_the_mixer_reads_of_one_write(extra):
  """Write a single value (x = 1 at position p + 1, 0 elsewhere, keys all 1) through the real
  mixer (chunkwise kernel) and read it with a one-hot query: o at the read is the share."""
  blk = build_model(tiny_config("resnet_bk", **KW, **extra)).blocks[0]
  b, n, h, nk = 2, 37, blk.n_heads, blk.key_dim
  uc = jax.random.normal(jax.random.key(0), (b, n, blk.d_model))
  v = jax.random.normal(jax.random.key(2), (b, n, h)) if blk.resolvent else None
  hopping, z, eta = blk.operator(uc) if blk.resolvent else (None, None, None)
  inputs = blk.mixer_inputs(uc, uc)
  res = blk.init_carry(b).res
  log_a, write, _ = selective_decay(v, inputs["delta"], inputs["rate"], inputs["ward_scale"],
                                    hopping=hopping, z=z, eta=eta, g_prev=res.g,
                                    method=blk.method, write_form=blk.write_form)
  write_pos, read = np.array([3, 20]), n - 1
  units = layer_units(SelectiveDecays(log_a, write, inputs["delta"]), write_pos, read)
  got = units["score"]  # (B, heads): log10 of the share
  x = np.zeros((b, n, h, blk.head_dim), np.float32)
  x[np.arange(b), write_pos] = 1.0
  k = jnp.ones((b, n, h, nk))
  for i in range(nk):  # query key dimension i: the read of row i of S
    q = jax.nn.one_hot(jnp.full((b, n, h), i), nk)
    o, _ = blk.mix(v, dict(inputs, q=q, k=k, x=jnp.asarray(x)), res, hopping, z, eta)
    seen = np.asarray(o)[:, read, :, 0]  # (B, H)
    per_key = extra.get("bk_decay") == "key" or extra.get("bk_step") == "key"
    want = 10.0 ** (got.reshape(b, h, nk)[..., i] if per_key else got)
    np.testing.assert_allclose(seen, want, rtol=1e-4, atol=1e-7)


def test_mamba_contribution_is_what_the_scan_reads_of_one_write():
  """Mamba: one write (x = 0 except at the write), read through state s alone (C one-hot): the
  scan's output at the read, times the model's C_{read,s}, is the unit's contribution C R dt B x."""
  from bk_jax.models.mamba import selective_scan

  blk = build_model(tiny_config("mamba")).blocks[0]
  b, n = 2, 29
  x = jax.random.normal(jax.random.key(0), (b, n, 32))
  xc, _, dt, a, bb, cc, _ = blk.scan_inputs(x, blk.init_carry(b).conv)
  write_pos, read = np.array([2, 15]), n - 1
  units = layer_units(MambaDecays(dt, a, bb, cc, xc), write_pos, read)
  d, st = a.shape
  one = np.zeros(xc.shape, np.float32)
  one[np.arange(b), write_pos] = np.asarray(xc)[np.arange(b), write_pos]
  for s_ in (0, st - 1):
    c1 = jax.nn.one_hot(jnp.full(cc.shape[:2], s_), st)
    y, _ = selective_scan(jnp.asarray(one), dt, a, bb, c1, blk.init_carry(b).ssm, chunk=8,
                          method="sequential")
    seen = np.abs(np.asarray(y)[:, read] * np.asarray(cc)[:, read, s_, None])  # (B, D)
    want = 10.0 ** units["score"].reshape(b, d, st)[..., s_]
    np.testing.assert_allclose(seen, want, rtol=1e-4, atol=1e-9)
    # the retention alone: exp(A_cs * sum of dt after the write)
    a64, dt64 = np.asarray(a, np.float64), np.asarray(dt, np.float64)
    kept = np.exp(a64[None, :, s_] * np.stack(
        [dt64[i, write_pos[i] + 1:read + 1].sum(axis=0) for i in range(b)]))
    np.testing.assert_allclose(10.0 ** units["retention"].reshape(b, d, st)[..., s_], kept,
                               rtol=1e-5)


def _selective_model(**extra):
  c = tiny_config("resnet_bk", **KW, **extra)
  c.vocab_size = 16
  return build_model(c, rngs=nnx.Rngs(5))


def test_layer_decays_walk_is_the_models_forward():
  model = _selective_model(prime_bump=True)
  tokens = jax.random.randint(jax.random.key(1), (2, 50), 0, 16)
  logits, per_layer = layer_decays(model, tokens)
  np.testing.assert_allclose(np.asarray(logits), np.asarray(model(tokens)), rtol=1e-5, atol=1e-5)
  assert len(per_layer) == 2
  for log_a, write, delta in per_layer:
    assert log_a.shape == write.shape == delta.shape == (2, 50, model.blocks[0].n_heads)
    assert np.all(np.asarray(log_a) <= 0) and np.all(np.asarray(write) > 0)
    assert np.all(np.asarray(delta) > 0)
  # the control's decay is the step times the head's rate: -log a_j = Delta_j A_h
  control = _selective_model(bk_ward_decay=False)
  _, per_layer = layer_decays(control, tokens)
  for (log_a, _, delta), blk in zip(per_layer, control.blocks):
    np.testing.assert_allclose(-np.asarray(log_a), np.asarray(delta) * np.exp(blk.a_log[...]),
                               rtol=1e-6)


def test_kept_writes_are_the_answers_window_and_the_recent_positions():
  keep = kept_writes(np.array([3, 10]), 20, recent=2)
  assert np.flatnonzero(keep[0]).tolist() == [3, 4, 5, 6, 18, 19]  # CONV_WIDTH 4 from p + 1
  assert np.flatnonzero(keep[1]).tolist() == [10, 11, 12, 13, 18, 19]


@pytest.mark.parametrize("mode", ["drop", "skip"])
@pytest.mark.parametrize("extra", [dict(), dict(bk_step="key")], ids=["per_head", "key_step"])
def test_filler_is_a_state_without_it(extra, mode):
  """A filler layer reads S_j = a_j S_{j-1} + w_j k_j x_j^T at the kept positions and, at the
  filler, S_j = a_j S_{j-1} ("drop") or S_j = S_{j-1} ("skip"): the last layer's output, rebuilt
  from a float64 loop over positions with the trained decays and writes, gives the logits the
  walk returns; with every position kept the walk is the model's forward."""
  model = _selective_model(prime_bump=True, **extra)
  b, n = 2, 33
  tokens = jax.random.randint(jax.random.key(1), (b, n), 0, 16)
  every = jnp.ones((b, n), bool)
  logits, _ = layer_decays(model, tokens, every, ((0, mode), (1, mode)))
  np.testing.assert_allclose(np.asarray(logits), np.asarray(model(tokens)), rtol=1e-5, atol=1e-5)
  keep = kept_writes(np.array([4, 12]), n, recent=5)
  logits, _ = layer_decays(model, tokens, jnp.asarray(keep), ((1, mode),))
  # the reference: layer 0 as trained, layer 1's decays and writes as trained, its read a loop
  _, trained = layer_decays(model, tokens)
  pos, bias = jnp.zeros((), jnp.int32), model.position_bias(jnp.zeros((), jnp.int32), n)
  x, _, _ = model.blocks[0](model.embed(tokens), None, pos, bias)
  blk = model.blocks[1]
  u, (v, inputs, res, hopping, z, eta), _ = blk.mix_args(x, blk.init_carry(b), bias)
  f64 = lambda a: np.asarray(a, np.float64)
  q, k, xv = f64(inputs["q"]), f64(inputs["k"]), f64(inputs["x"])
  a, w = np.exp(f64(trained[1].log_a)), f64(trained[1].write)
  if a.ndim == 3:  # one decay per head: the same for every key dimension
    a, w = a[..., None], w[..., None]
  state = np.zeros((b, blk.n_heads, blk.key_dim, blk.head_dim))
  y = np.zeros(xv.shape)
  for j in range(n):
    kept = keep[:, j, None, None, None]
    decay = np.where(kept, a[:, j, :, :, None], 1.0 if mode == "skip" else a[:, j, :, :, None])
    state = decay * state + kept * (w[:, j] * k[:, j])[..., None] * xv[:, j, :, None, :]
    y[:, j] = np.einsum("bhn,bhnd->bhd", q[:, j], state)
  out, _ = blk.residual(x, u, jnp.asarray(y, jnp.float32), eta)
  np.testing.assert_allclose(np.asarray(logits), np.asarray(model.logits(out)), rtol=2e-4,
                             atol=2e-5)
  # the intervention changes the read: the filler was not nothing
  assert not np.allclose(np.asarray(logits), np.asarray(model(tokens)), atol=1e-3)


def test_memory_table_treats_filler_of_selective_layers_only():
  tc = default_synthetic_config()
  rows = memory_table(_selective_model(), tc, [64], samples=2, batch_size=2,
                      filler=[(0, "skip"), (1, "drop")], keep_recent=8, log=None)
  assert rows[0]["samples"] == 2 and 0.0 <= rows[0]["accuracy"] <= 1.0
  # a skipping layer's carrier does not decay over the filler: its memory prints as such
  rows[0]["layers"][0]["by_position"][0]["rate"] = 0.0
  assert "| no decay |" in format_positions(rows[0])
  mamba = build_model(tiny_config("mamba", vocab_size=16), rngs=nnx.Rngs(5))
  with pytest.raises(EvalError, match="selective ResNet-BK"):
    memory_table(mamba, tc, [64], filler=[(0, "drop")], log=None)
  with pytest.raises(EvalError, match="2 and one of drop, skip"):
    memory_table(_selective_model(), tc, [64], filler=[(2, "drop")], log=None)
  with pytest.raises(EvalError, match="keep_recent"):
    memory_table(_selective_model(), tc, [64], filler=[(0, "skip")], keep_recent=0, log=None)
  assert parse_filler(["0=skip", "1=drop"]) == ((0, "skip"), (1, "drop"))
  for bad in ("1", "x=skip", "1=keep", "-1=drop"):
    with pytest.raises(EvalError, match="LAYER=drop or LAYER=skip"):
      parse_filler([bad])


def test_memory_table_on_induction_sequences():
  tc = default_synthetic_config()  # induction_heads, vocabulary 16
  mamba = build_model(tiny_config("mamba", vocab_size=16), rngs=nnx.Rngs(5))
  rows = memory_table(mamba, tc, [64, 128], samples=4, batch_size=2, log=None)
  assert [len(r["layers"]) for r in rows] == [2, 2]
  assert all(x["carrier"].startswith("channel ") and x["retention_log10"] <= 0
             for r in rows for x in r["layers"])
  rows = memory_table(_selective_model(), tc, [64, 128], samples=4, batch_size=2, log=None)
  assert [r["length"] for r in rows] == [64, 128] and all(r["samples"] == 4 for r in rows)
  for r in rows:
    assert 0.0 <= r["accuracy"] <= 1.0 and len(r["layers"]) == 2
    for layer in r["layers"]:
      # the complement write keeps a convex combination: no write holds more than all of it
      assert layer["score_log10"] <= 1e-12 and layer["retention_log10"] <= 1e-12
      spans = [(b["start"], b["end"]) for b in layer["by_position"]]
      assert spans == ([(0, 64)] if r["length"] == 64 else [(0, 64), (64, 128)])
      assert all(b["rate"] > 0 and b["step"] > 0 for b in layer["by_position"])
  assert "| 128 | 4 |" in format_table(rows)
  assert "| 64-128 |" in format_positions(rows[-1])


def test_bad_models_and_tasks_are_one_error():
  tc = default_synthetic_config()
  plain = build_model(tiny_config("resnet_bk", vocab_size=16))
  with pytest.raises(EvalError, match="ward_selective"):
    memory_table(plain, tc, [64], log=None)
  with pytest.raises(EvalError, match="scan_layers"):
    memory_table(_selective_model(scan_layers=True), tc, [64], log=None)
  attention = build_model(tiny_config("transformer", vocab_size=16))
  with pytest.raises(EvalError, match="kind transformer"):
    memory_table(attention, tc, [64], log=None)
  tc.task = "mqar"
  with pytest.raises(EvalError, match="induction_heads"):
    memory_table(_selective_model(), tc, [64], log=None)


@pytest.mark.parametrize("extra", [dict(prime_bump=True), dict(bk_decay="key"),
                                   dict(bk_ward_decay=False)],
                         ids=["per_head", "key_decay", "control"])
def test_scaled_rates_scale_the_chosen_units_log_decay_exactly(extra):
  """scale_rates multiplies lambda = A_h + s_h lam_bk of the chosen heads by F: their log a_j
  scale by F at every position; the other heads and every step stay as they were (the scaled
  layer's output changes, so only that layer and those before it are compared)."""
  tokens = jax.random.randint(jax.random.key(1), (2, 40), 0, 16)
  for spec, layer, factor in (("1.2=0.1", 1, np.array([1.0, 1.0, 0.1, 1.0])),
                              ("0=3", 0, np.full(4, 3.0))):
    model = _selective_model(**extra)
    _, before = layer_decays(model, tokens)
    scale_rates(model, parse_rate_scales([spec]))
    _, after = layer_decays(model, tokens)
    for i in range(layer + 1):
      b, a = before[i], after[i]
      f = factor if i == layer else np.ones(4)
      f = f[:, None] if b.log_a.ndim == 4 else f
      np.testing.assert_allclose(np.asarray(a.log_a), f * np.asarray(b.log_a), rtol=1e-5)
      np.testing.assert_array_equal(np.asarray(a.delta), np.asarray(b.delta))


def test_scaled_rates_of_a_mamba_channel():
  """For Mamba the unit is a channel: A_{c,s} of every state of channel c scales by F."""
  mamba = build_model(tiny_config("mamba", vocab_size=16), rngs=nnx.Rngs(5))
  tokens = jax.random.randint(jax.random.key(1), (2, 40), 0, 16)
  _, before = layer_decays(mamba, tokens)
  scale_rates(mamba, parse_rate_scales(["0.5=0.01"]))
  _, after = layer_decays(mamba, tokens)
  want = np.asarray(before[0].a).copy()
  want[5] *= 0.01
  np.testing.assert_allclose(np.asarray(after[0].a), want, rtol=1e-6)
  np.testing.assert_array_equal(np.asarray(after[1].a), np.asarray(before[1].a))
  np.testing.assert_array_equal(np.asarray(after[0].dt), np.asarray(before[0].dt))


@pytest.mark.parametrize("spec,match", [("1", "LAYER=F"), ("a=0.1", "LAYER=F"), ("1=0", "F > 0"),
                                        ("1.x=2", "LAYER=F"), ("-1=2", "LAYER=F")])
def test_bad_rate_scales_are_one_error(spec, match):
  with pytest.raises(EvalError, match=match):
    parse_rate_scales([spec])


def test_rate_scales_out_of_range_are_one_error():
  with pytest.raises(EvalError, match="has 2 layers"):
    scale_rates(_selective_model(), [(2, None, 0.5)])
  with pytest.raises(EvalError, match="units"):
    scale_rates(_selective_model(), [(0, 99, 0.5)])


def test_script_without_a_checkpoint_is_one_line(tmp_path):
  env = dict(os.environ, PYTHONPATH=ROOT)
  r = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "recall_memory.py"),
                      "--checkpoint_dir", str(tmp_path / "none")],
                     capture_output=True, text=True, env=env, timeout=300)
  assert r.returncode == 2
  lines = r.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("recall_memory.py: error:"), r.stderr

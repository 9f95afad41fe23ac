"""Generation with the streaming cache: greedy equals re-running the full forward on the growing
sequence (every kind), the top-k / top-p / temperature rule against numpy, seeds, and the script."""

import math
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from bk_jax.models import build_model, default_model_config
from bk_jax.models.kinds import KINDS
from bk_jax.models.sampling import filter_logits, generate, sample_logits

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _tiny(kind, **overrides):
  c = default_model_config()
  c.kind, c.vocab_size = kind, 259
  for k, v in overrides.items():
    c[k] = v
  c.d_model, c.n_layers, c.n_heads, c.d_ff = 32, 2, 4, 64
  # the Transformer's streaming cache equals full attention while the length fits its window
  c.transformer.cache_window = 16  # >= 5 prompt + 8 new tokens
  return build_model(c, rngs=nnx.Rngs(1))


# every kind, plus the variants whose NNX transforms run inside the per-token scan body
CASES = [(k, {}) for k in KINDS] + [("resnet_bk", dict(scan_layers=True, remat="full")),
                                    ("resnet_bk", dict(use_moe=True, router="learned"))]


@pytest.mark.slow
@pytest.mark.parametrize("kind,overrides", CASES)
def test_greedy_equals_argmax_of_full_forward(kind, overrides):
  model = _tiny(kind, **overrides)
  prompt = np.random.default_rng(0).integers(0, 259, (2, 5)).astype(np.int32)
  new = np.asarray(generate(model, prompt, max_new_tokens=8, temperature=0.0))
  seq = prompt
  for _ in range(8):  # the O(N^2) reference: full forward on the growing sequence
    logits = np.asarray(model(jnp.asarray(seq)))[:, -1]
    seq = np.concatenate([seq, logits.argmax(-1).astype(np.int32)[:, None]], axis=1)
  np.testing.assert_array_equal(new, seq[:, 5:])


def _np_filter(logits, temperature, top_k, top_p):
  x = logits / temperature
  keep = np.ones_like(x, bool)
  if top_k:
    keep &= x >= np.sort(x)[-top_k]
  if top_p < 1:
    order = np.argsort(-np.where(keep, x, -np.inf))
    p = np.exp(x[order] - x[order].max()) * keep[order]
    p /= p.sum()
    mass, chosen = 0.0, np.zeros_like(keep)
    for i, o in enumerate(order):
      chosen[o] = True
      mass += p[i]
      if mass >= top_p:
        break
    keep &= chosen
  return keep


@pytest.mark.parametrize("temperature,top_k,top_p", [(1.0, 3, 1.0), (0.5, 0, 0.6), (2.0, 5, 0.9),
                                                     (1.0, 0, 0.999), (0.7, 1, 1.0)])
def test_filter_keeps_exactly_the_numpy_set(temperature, top_k, top_p):
  rng = np.random.default_rng(int(temperature * 10) + top_k)
  logits = rng.normal(size=(4, 11)).astype(np.float32) * 3
  got = np.asarray(filter_logits(jnp.asarray(logits), temperature=temperature, top_k=top_k, top_p=top_p))
  for row, g in zip(logits, got):
    keep = _np_filter(row.astype(np.float64), temperature, top_k, top_p)
    np.testing.assert_array_equal(np.isfinite(g), keep)
    np.testing.assert_allclose(g[keep], row[keep] / temperature, rtol=1e-6)


def test_sampling_frequencies_follow_the_filtered_softmax():
  logits = jnp.asarray([2.0, 1.0, 0.5, 0.0, -1.0, -3.0], jnp.float32)
  n = 40_000
  keys = jax.random.split(jax.random.key(0), n)
  for temperature, top_k, top_p in ((1.0, 0, 1.0), (0.5, 4, 1.0), (1.5, 0, 0.8)):
    draws = np.asarray(jax.vmap(lambda k: sample_logits(k, logits, temperature=temperature, top_k=top_k,
                                                        top_p=top_p))(keys))
    keep = _np_filter(np.asarray(logits, np.float64), temperature, top_k, top_p)
    p = np.where(keep, np.exp(np.asarray(logits, np.float64) / temperature), 0.0)
    p /= p.sum()
    freq = np.bincount(draws, minlength=6) / n
    assert np.all(freq[~keep] == 0)
    sigma = np.sqrt(p * (1 - p) / n)
    assert np.all(np.abs(freq - p) <= 5 * sigma + 1e-12), (temperature, top_k, top_p, freq, p)


def test_same_seed_same_tokens_other_seed_other_tokens():
  model = _tiny("resnet_bk")
  prompt = np.zeros((1, 3), np.int32)
  a = np.asarray(generate(model, prompt, max_new_tokens=24, temperature=1.0, seed=3))
  b = np.asarray(generate(model, prompt, max_new_tokens=24, temperature=1.0, seed=3))
  c = np.asarray(generate(model, prompt, max_new_tokens=24, temperature=1.0, seed=4))
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, c)


def test_bad_arguments_are_one_line_errors():
  model = _tiny("resnet_bk")
  for kw, msg in ((dict(max_new_tokens=0), "max_new_tokens"), (dict(temperature=-1.0), "temperature"),
                  (dict(top_k=-2), "top_k"), (dict(top_p=0.0), "top_p")):
    args = dict(max_new_tokens=2) | kw
    with pytest.raises(ValueError, match=msg):
      generate(model, np.zeros((1, 2), np.int32), **args)
  with pytest.raises(ValueError, match="prompt"):
    generate(model, np.zeros((1, 0), np.int32), max_new_tokens=2)


@pytest.mark.slow
def test_generate_script_on_a_trained_run(tmp_path, capsys):
  from bk_jax.eval.generate import generate_text
  from bk_jax.eval.loading import load_checkpoint
  from bk_jax.train.loop import run
  from tiny_configs import tiny_config, write_pattern_corpus

  corpus = write_pattern_corpus(str(tmp_path / "p.txt"))
  cfg = tiny_config(str(tmp_path / "run"), corpus, str(tmp_path / "cache"), lengths=(32,), steps=2)
  cfg.logging.console = False
  run(cfg)
  sys.path.insert(0, os.path.join(REPO, "scripts"))
  import generate as script

  assert script.main(["--checkpoint_dir", cfg.save_dir, "--checkpoint", "checkpoint_final",
                      "--prompt", "alpha beta", "--max_new_tokens", "6", "--temperature", "0"]) == 0
  printed = capsys.readouterr().out
  out = generate_text(cfg.save_dir, "alpha beta", max_new_tokens=6, temperature=0.0,
                      checkpoint="checkpoint_final")
  assert printed == "alpha beta" + out["samples"][0] + "\n"
  model = load_checkpoint(cfg.save_dir, "checkpoint_final").model
  seq = np.frombuffer(b"alpha beta", np.uint8).astype(np.int32)[None]
  for _ in range(6):
    seq = np.concatenate([seq, np.asarray(model(jnp.asarray(seq)))[:, -1].argmax(-1)[:, None]], 1)
  assert out["tokens"][0] == seq[0, 10:].tolist()
  with pytest.raises(SystemExit) as e:
    script.main(["--checkpoint_dir", str(tmp_path / "none"), "--prompt", "x"])
  assert e.value.code == 2 and "generate.py: error: no checkpoint" in capsys.readouterr().err

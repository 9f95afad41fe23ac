"""Perplexity by position, passkey retrieval and the MQAR grid against hand-made models whose
answers are known: a model that copies (perfect retrieval) and one that guesses (chance), both
real modules with the streaming interface (tests/probe_models.py); and a real ResNet-BK against
its own full-sequence forward."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from bk_jax.data import ByteTokenizer, default_synthetic_config
from bk_jax.data.tokenizers import BPETokenizer
from bk_jax.eval.loading import EvalError
from bk_jax.eval.mqar import mqar_cells, mqar_table
from bk_jax.eval.passkey import TEMPLATES, passkey_prompt, passkey_table
from bk_jax.eval.plots import plot_heatmaps
from bk_jax.eval.position import doubling_edges, position_table
from probe_models import CopyModel, GuessModel

V = ByteTokenizer.vocab_size
DIGITS = (ord("0"), ord("9") + 1)


def _binomial_ok(hits: float, n: float, p: float, z: float = 5.0) -> bool:
  return abs(hits - n * p) <= z * math.sqrt(n * p * (1 - p)) + 1


def _letters(n: int, seed: int = 0) -> np.ndarray:
  """Random lower-case letters, spaces and newlines as byte ids (no digits, no '=')."""
  alphabet = np.frombuffer(b"abcdefghijklmnopqrstuvwxyz  \n", np.uint8)
  return np.random.default_rng(seed).choice(alphabet, n).astype(np.int32)


# ----------------------------------------------------------------------- perplexity by position

def test_doubling_edges():
  assert doubling_edges(256, 4096) == (0, 256, 512, 1024, 2048)
  assert doubling_edges(100, 100) == (0,)


def test_position_guess_is_log_vocab_in_every_bucket():
  docs = [np.random.default_rng(i).integers(0, 256, 700).astype(np.int32) for i in range(3)]
  out = position_table(GuessModel(V), docs, doc_tokens=512, edges=(0, 64, 128, 256),
                       chunk_size=128, batch_size=2)  # 3 documents: one padded, masked row
  assert out["documents"] == 3 and out["tokens"] == 3 * 512
  assert [b["tokens"] for b in out["buckets"]] == [3 * 64, 3 * 64, 3 * 128, 3 * 256]
  for b in out["buckets"]:
    assert abs(b["loss"] - math.log(V)) < 2e-3
  assert len(out["per_document_loss"]) == 3


def test_position_copy_falls_to_zero_after_the_first_period():
  period = np.random.default_rng(0).integers(0, 256, 64).astype(np.int32)
  docs = [np.tile(np.roll(period, 7 * i), 9)[:513] for i in range(2)]
  out = position_table(CopyModel(V, context=4, max_len=1024), docs, doc_tokens=512,
                       edges=(0, 64, 67, 128, 256), chunk_size=128, batch_size=2)
  first, seam, *later = out["buckets"]
  assert first["bucket"] == "0-64" and first["loss"] > 5.0  # nothing to copy from yet
  # the 4-grams that straddle the first repeat (x61 x62 x63 x0 ...) were never seen
  assert seam["tokens"] == 6 and abs(seam["loss"] - math.log(V)) < 1e-6
  assert [b["bucket"] for b in later] == ["67-128", "128-256", "256+"]
  assert all(b["loss"] < 1e-6 and b["accuracy"] == 1.0 for b in later)


def test_position_of_a_real_model_equals_its_full_forward():
  from bk_jax.models import build_model, default_model_config

  cfg = default_model_config()
  cfg.update(d_model=32, n_layers=1, n_heads=4, d_ff=64)
  model = build_model(cfg, rngs=nnx.Rngs(0))
  docs = [np.random.default_rng(i).integers(0, 256, 300).astype(np.int32) for i in range(2)]
  out = position_table(model, docs, doc_tokens=256, edges=(0, 32, 128), chunk_size=64,
                       batch_size=2, sub_chunk=None)
  x = jnp.asarray(np.stack(docs))[:, :257]
  logits = model(x[:, :-1])
  nll = np.asarray(jax.nn.logsumexp(logits, -1) -
                   jnp.take_along_axis(logits, x[:, 1:, None], -1)[..., 0], np.float64)
  want = [nll[:, 0:32].mean(), nll[:, 32:128].mean(), nll[:, 128:].mean()]
  np.testing.assert_allclose([b["loss"] for b in out["buckets"]], want, rtol=2e-5)


def test_position_needs_long_enough_documents():
  with pytest.raises(EvalError, match="at least 513 tokens"):
    position_table(GuessModel(V), [np.zeros(400, np.int32)], doc_tokens=512, edges=(0,),
                   chunk_size=128)


# ----------------------------------------------------------------------------------- passkey

def test_passkey_prompt_layout():
  tok = ByteTokenizer()
  filler = _letters(2000)
  for depth in (0.0, 0.5, 1.0):
    p = passkey_prompt(tok, filler, 1000, depth, "48213", TEMPLATES["python"])
    assert p["inputs"].shape == p["targets"].shape == p["mask"].shape == (1000,)
    text = tok.decode(np.concatenate([p["inputs"], p["targets"][-1:]]))
    assert text.endswith("PASS_KEY = 48213") and text.count("48213") == 2
    assert tok.decode(p["targets"][p["mask"] > 0]) == "48213"
    assert text.index("PASS_KEY = 48213  #") == p["needle_at"] + 1  # after the needle's "\n"
  assert passkey_prompt(tok, filler, 1000, 1.0, "1", TEMPLATES["prose"])["needle_at"] > 900
  with pytest.raises(EvalError, match="shorter than the needle"):
    passkey_prompt(tok, filler, 20, 0.5, "48213", TEMPLATES["python"])


def test_passkey_prompt_with_bpe_scores_only_the_answer_pieces():
  lines = [f"value_{i} = {i * 7919 % 100000}" for i in range(400)] + ["PASS_KEY = 1"] * 20
  tok = BPETokenizer.train(lines, 120)
  filler = tok.encode("\n".join(lines[:300]))  # no PASS_KEY line in the filler
  p = passkey_prompt(tok, filler, 600, 0.3, "48213", TEMPLATES["python"])
  assert tok.decode(p["targets"][p["mask"] > 0]).strip() == "48213"
  prompt = tok.decode(np.concatenate([p["inputs"], p["targets"][-1:]]))
  assert prompt.count("PASS_KEY") == 2 and prompt.replace(" ", "").endswith("PASS_KEY=48213")


def test_passkey_copy_model_retrieves_at_every_depth_and_length():
  rows = passkey_table(CopyModel(V, context=8, max_len=1024), ByteTokenizer(), _letters(5000),
                       lengths=[128, 512, 1024], depths=[0.0, 0.25, 0.5, 0.75, 1.0], samples=4,
                       template="python", chunk_size=256, batch_size=2, sub_chunk=None)
  assert [(r["length"], r["depth"]) for r in rows[:6]] == [
      (128, 0.0), (128, 0.25), (128, 0.5), (128, 0.75), (128, 1.0), (512, 0.0)]
  assert all(r["accuracy"] == 1.0 and r["digit_accuracy"] == 1.0 and r["samples"] == 4
             for r in rows)


def test_passkey_guess_model_is_at_chance():
  rows = passkey_table(GuessModel(V, low=DIGITS[0], high=DIGITS[1]), ByteTokenizer(),
                       _letters(3000), lengths=[256], depths=[0.0, 0.5, 1.0], samples=40,
                       template="prose", chunk_size=256, batch_size=8, sub_chunk=None)
  digits = sum(r["digit_accuracy"] * r["samples"] * 5 for r in rows)
  assert _binomial_ok(digits, 3 * 40 * 5, 0.1)  # one digit in ten
  assert all(r["accuracy"] <= 0.05 for r in rows)  # all five digits: 1e-5
  assert all(abs(r["answer_loss"] - math.log(10)) < 2e-3 for r in rows)


# -------------------------------------------------------------------------------------- MQAR

def _mqar_task(vocab: int) -> ml_collections.ConfigDict:
  t = default_synthetic_config()
  t.update(task="mqar", vocab_size=vocab)
  return t


def test_mqar_cells_need_room_for_the_pairs():
  assert mqar_cells([64, 256], [8, 16, 64]) == [(64, 8), (64, 16), (256, 8), (256, 16), (256, 64)]


def test_mqar_copy_model_recalls_every_query():
  rows = mqar_table(CopyModel(300, context=1, max_len=512), _mqar_task(300),
                    lengths=[64, 256, 512], kv_pairs=[4, 16, 64, 128], samples=4,
                    chunk_size=256, batch_size=2, sub_chunk=None)
  assert [(r["length"], r["kv_pairs"]) for r in rows] == mqar_cells([64, 256, 512],
                                                                    [4, 16, 64, 128])
  assert all(r["accuracy"] == 1.0 and r["scored"] == 4 * r["kv_pairs"] for r in rows)


def test_mqar_guess_model_is_at_chance():
  vocab = 64
  rows = mqar_table(GuessModel(vocab, low=vocab // 2, high=vocab), _mqar_task(vocab),
                    lengths=[128, 256], kv_pairs=[8, 16], samples=16, chunk_size=256,
                    batch_size=4, sub_chunk=None)
  hits = sum(r["accuracy"] * r["scored"] for r in rows)
  assert _binomial_ok(hits, sum(r["scored"] for r in rows), 2 / vocab)
  with pytest.raises(EvalError, match="no MQAR cell"):
    mqar_table(GuessModel(vocab), _mqar_task(vocab), lengths=[16], kv_pairs=[8], samples=1)


def test_heatmaps_png(tmp_path):
  rows = [dict(length=n, depth=d, accuracy=d) for n in (128, 256) for d in (0.0, 0.5, 1.0)]
  path = plot_heatmaps(str(tmp_path / "h.png"), {"a": rows, "b": rows[:3]}, x="length", y="depth")
  assert (tmp_path / "h.png").stat().st_size > 1000 and path.endswith("h.png")


# ------------------------------------------------------------- scripts/eval_long_context.py

def test_eval_long_context_script_on_a_trained_checkpoint(tmp_path):
  import importlib.util
  import json
  import os
  import subprocess
  import sys

  from bk_jax.train import loop
  from tiny_configs import tiny_config, write_pattern_corpus

  corpus = write_pattern_corpus(str(tmp_path / "corpus.txt"), n_chars=200_000)
  c = tiny_config(str(tmp_path / "run"), corpus, str(tmp_path / "cache"), lengths=(64,), steps=2)
  c.logging.console = c.logging.tensorboard = False
  loop.run(c)
  root = os.path.join(os.path.dirname(__file__), "..")
  spec = importlib.util.spec_from_file_location("elc", os.path.join(root, "scripts",
                                                                    "eval_long_context.py"))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  out_json = tmp_path / "lc.json"
  assert mod.main(["--checkpoint_dir", str(tmp_path / "run"), "--position", "--doc_tokens", "512",
                   "--max_docs", "1", "--first_edge", "64", "--passkey", "--passkey_lengths",
                   "128,256", "--depths", "0,1", "--samples", "2", "--batch_size", "2",
                   "--chunk_size", "128", "--output", str(out_json)]) == 0
  out = json.loads(out_json.read_text())
  assert out["machine"]["backend"] == "cpu" and out["model_kind"] == "resnet_bk"
  assert out["position"]["tokens"] == 512 and out["position"]["buckets"][0]["bucket"] == "0-64"
  assert [(r["length"], r["depth"]) for r in out["passkey"]] == [(128, 0.0), (128, 1.0),
                                                                  (256, 0.0), (256, 1.0)]
  assert "| model | 0-64 |" in out["table"]
  assert "| model | length | depth 0 | depth 1 |" in out["table"]
  assert (tmp_path / "lc_passkey.png").stat().st_size > 1000
  # MQAR on a text checkpoint: one line, exit status 2, before any model is built
  p = subprocess.run([sys.executable, os.path.join(root, "scripts", "eval_long_context.py"),
                      "--checkpoint_dir", str(tmp_path / "run"), "--mqar"], capture_output=True,
                     text=True, env={**os.environ, "PYTHONPATH": os.path.abspath(root)},
                     timeout=300)
  lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
  assert p.returncode == 2 and len(lines) == 1, p.stderr
  assert lines[0].startswith("eval_long_context.py: error: the MQAR grid needs")

"""Streaming evaluation: chunked == full loss, flat memory to 1M tokens, checkpoint loading and
its errors, short splits, the script's one-line errors."""

import json
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from bk_jax.eval.loading import EvalError, load_checkpoint, resolve_checkpoint
from bk_jax.eval.streaming import StreamingEvaluator, run_streaming_eval, text_chunks
from bk_jax.models import build_model, default_model_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_model(kind="resnet_bk", vocab=50):
  c = default_model_config()
  c.kind, c.vocab_size = kind, vocab
  c.d_model, c.n_layers, c.n_heads, c.d_ff = 32, 2, 4, 64
  c.transformer.cache_window, c.transformer.block_size = 512, 64
  c.mamba.chunk = 32
  return build_model(c, rngs=nnx.Rngs(1))


def full_loss(model, toks):
  logits = nnx.jit(lambda m, t: m(t))(model, jnp.asarray(toks[None, :-1]))
  tl = jnp.take_along_axis(logits, jnp.asarray(toks[None, 1:, None]), axis=-1)[..., 0]
  return np.asarray(jax.nn.logsumexp(logits, -1) - tl, np.float64)[0]


def stream(toks, chunk):
  return text_chunks(toks[s:s + chunk + 1] for s in range(0, len(toks) - 1, chunk))


@pytest.mark.parametrize("kind,chunks", [("resnet_bk", [(300, None), (64, None), (100, 50), (7, None)]),
                                         ("mamba", [(64, None), (100, 50)]),
                                         ("transformer", [(64, None), (100, 50)]),
                                         ("mamba2", [(64, None), (100, 50)])])
def test_streaming_equals_full_sequence(kind, chunks):
  model = tiny_model(kind)
  toks = np.random.default_rng(0).integers(0, 50, size=301).astype(np.int32)
  per_tok = full_loss(model, toks)
  edges = (0, 100, 200)
  for chunk, sub in chunks:
    ev = StreamingEvaluator(model, chunk_size=chunk, edges=edges, sub_chunk=sub)
    r = ev.run(stream(toks, chunk), progress=False, log=None)
    assert r.tokens == 300 and r.chunks == -(-300 // chunk)
    assert abs(r.loss - per_tok.mean()) <= 1e-5, (kind, chunk, sub)
    # position buckets: [0,100), [100,200), [200,300)
    for b, (lo, hi) in zip(r.buckets(), [(0, 100), (100, 200), (200, 300)]):
      assert b["tokens"] == hi - lo
      assert abs(b["loss"] - per_tok[lo:hi].mean()) <= 1e-5


def test_padded_last_chunk_and_accuracy():
  model = tiny_model()
  toks = np.random.default_rng(1).integers(0, 50, size=130).astype(np.int32)
  logits = model(jnp.asarray(toks[None, :-1]))
  acc = float(np.mean(np.asarray(jnp.argmax(logits, -1))[0] == toks[1:]))
  r = StreamingEvaluator(model, chunk_size=50, edges=(0,)).run(stream(toks, 50), progress=False, log=None)
  assert r.tokens == 129 and r.chunks == 3 and abs(r.accuracy - acc) < 1e-9


MEMORY_SCRIPT = textwrap.dedent("""
    import json, sys
    import numpy as np
    from flax import nnx
    from bk_jax.runtime.memory import memory_usage
    from bk_jax.eval.streaming import StreamingEvaluator
    from bk_jax.models import build_model, default_model_config
    n, chunk = int(sys.argv[1]), 4096
    c = default_model_config()
    c.vocab_size, c.d_model, c.n_layers, c.n_heads, c.d_ff = 64, 16, 1, 2, 32
    model = build_model(c, rngs=nnx.Rngs(0))
    def chunks():
      rng = np.random.default_rng(0)
      for s in range(0, n, chunk):
        w = rng.integers(0, 64, size=(1, chunk + 1), dtype=np.int32)
        yield w[:, :-1], w[:, 1:], None
    r = StreamingEvaluator(model, chunk_size=chunk).run(chunks(), progress=False, log=None)
    m = memory_usage()
    print(json.dumps(dict(tokens=r.tokens, kind=m.peak_kind, peak_gb=m.peak_gb)))
""")


@pytest.mark.slow
def test_peak_memory_flat_from_100k_to_1m(tmp_path):
  script = tmp_path / "mem.py"
  script.write_text(MEMORY_SCRIPT)
  env = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu")
  peaks = {}
  for n in (100_000, 1_000_000):
    p = subprocess.run([sys.executable, str(script), str(n)], capture_output=True, text=True, env=env,
                       timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    out = json.loads(p.stdout.strip().splitlines()[-1])
    assert out["tokens"] >= n and out["kind"] == "host_peak_rss_since_start"
    peaks[n] = out["peak_gb"]
  assert peaks[1_000_000] <= 1.10 * peaks[100_000], peaks


# ------------------------------------------------------------------ checkpoints
@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
  """A run directory in the trainer's checkpoint format (untrained tiny model, no steps)."""
  from bk_jax.train.checkpoint import Checkpoints
  from bk_jax.train.loop import prepare
  from bk_jax.train.state import create_train_state
  from bk_jax.train.step import make_optimizer
  from tiny_configs import tiny_config, write_pattern_corpus

  d = tmp_path_factory.mktemp("evalrun")
  corpus = write_pattern_corpus(str(d / "pattern.txt"), n_chars=40_000)
  config = tiny_config(str(d / "run"), corpus, str(d / "cache"), lengths=(32, 64))
  config.logging.console = config.logging.progress_bar = False
  cfg, _, _ = prepare(config)
  model = build_model(cfg.model, rngs=nnx.Rngs(cfg.seed))
  _, state = create_train_state(model, make_optimizer(cfg.train))
  ck = Checkpoints(cfg.save_dir, keep=3)
  for name in ("checkpoint_seq32_final", "checkpoint_seq64_final", "checkpoint_final"):
    ck.save_named(name, state, None, dict(config=cfg.to_dict(), position=[0, 0]))
  ck.close()
  return config, model


def test_run_streaming_eval_matches_model_and_reports(run_dir):
  from bk_jax import data as bk_data
  config, model = run_dir
  config = ml_collections.ConfigDict(config.to_dict())
  config.eval.split, config.eval.eval_tokens, config.eval.chunk_size = "valid", 1500, 256
  out = run_streaming_eval(config, "checkpoint_seq64_final")
  toks = np.asarray(bk_data.load_corpus(config.data).splits["valid"][:1501], np.int32)
  assert out["tokens"] == 1500 and out["chunks"] == 6 and not out["truncated_split"]
  assert abs(out["loss"] - full_loss(model, toks).mean()) <= 1e-5
  for k in ("perplexity", "bits_per_byte", "tokens_per_s", "peak_memory_gb", "memory_kind", "buckets"):
    assert k in out
  assert out["buckets"][0]["bucket"] == "0-1k" and out["buckets"][1]["tokens"] == 500
  assert json.load(open(out["output"]))["tokens"] == 1500


def test_short_split_stops_at_end(run_dir):
  from bk_jax import data as bk_data
  config, _ = run_dir
  config = ml_collections.ConfigDict(config.to_dict())
  config.eval.split, config.eval.eval_tokens, config.eval.chunk_size = "test", 10_000_000, 1024
  n = len(bk_data.load_corpus(config.data).splits["test"]) - 1
  out = run_streaming_eval(config)
  assert out["tokens"] == n < 10_000_000 and out["truncated_split"] and str(n) in out["note"].replace(",", "")


def test_missing_and_mismatched_checkpoint(run_dir, tmp_path):
  config, _ = run_dir
  with pytest.raises(EvalError, match="no checkpoint in"):
    resolve_checkpoint(str(tmp_path))
  with pytest.raises(EvalError, match="not found.*available: checkpoint_final"):
    resolve_checkpoint(config.save_dir, "checkpoint_seq999_final")
  bad = ml_collections.ConfigDict(config.to_dict())
  bad.model.d_model, bad.model.n_layers = 64, 3
  with pytest.raises(EvalError) as e:
    load_checkpoint(bad.save_dir, None, bad)
  msg = str(e.value)
  assert "\n" not in msg and "model.d_model=64 (checkpoint 32)" in msg and "model.n_layers=3" in msg
  assert load_checkpoint(config.save_dir, "checkpoint_final", config).model is not None


def test_script_errors_are_one_line(run_dir, tmp_path, capsys):
  sys.path.insert(0, os.path.join(REPO, "scripts"))
  import eval_streaming
  config, _ = run_dir
  cfg_file = tmp_path / "cfg.py"
  cfg_file.write_text(textwrap.dedent(f"""
      from tiny_configs import tiny_config
      def get_config():
        c = tiny_config({config.save_dir!r}, {config.data.path!r}, {config.data.cache_dir!r})
        c.model.d_model = 48
        return c
  """))
  for argv, want in ((["--checkpoint_dir", str(tmp_path / "none")], "no checkpoint in"),
                     (["--config", str(cfg_file)], "does not match checkpoint"),
                     (["--checkpoint_dir", config.save_dir, "--checkpoint", "nope"], "not found")):
    with pytest.raises(SystemExit) as e:
      eval_streaming.main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1 and err[0].startswith("eval_streaming.py: error: ")
    assert want in err[0]


def test_script_per_length_writes_json_and_plot(run_dir, tmp_path):
  config, _ = run_dir
  sys.path.insert(0, os.path.join(REPO, "scripts"))
  import eval_streaming
  out = tmp_path / "r.json"
  assert eval_streaming.main(["--checkpoint_dir", config.save_dir, "--eval_tokens", "600",
                              "--chunk_size", "128", "--per_length", "--no_progress",
                              "--output", str(out), "--split", "valid"]) == 0
  r = json.load(open(out))
  assert r["split"] == "valid" and r["tokens"] == 600
  assert [p["train_len"] for p in r["per_length"]] == [32, 64]
  assert os.path.getsize(str(out).replace(".json", ".png")) > 1000

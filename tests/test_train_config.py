"""Config files, overrides, the reference CLI mapping, and one clear error before any compile."""

import glob
import json
import os
import subprocess
import sys

import pytest

from bk_jax.data import DataError
from bk_jax.train.cli import apply_override, load_config, parse_config_args, reference_config
from bk_jax.train.config_validation import ConfigError, validate_config
from bk_jax.train.loop import run
from tiny_configs import tiny_config, write_pattern_corpus

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = sorted(glob.glob(os.path.join(REPO, "configs", "*.py")))


@pytest.mark.parametrize("path", [p for p in CONFIGS if not p.endswith("__init__.py")],
                         ids=os.path.basename)
def test_every_config_file_is_valid(path):
  c = load_config(path)
  validate_config(c)
  for field in ("save_dir", "seed", "model.kind", "model.use_semiseparable", "train.tokens_per_batch",
                "train.steps_per_length", "data.tokenizer", "eval.chunk_size", "mesh.sequence"):
    node = c
    for part in field.split("."):
      node = node[part]


def test_overrides_keep_types():
  c, rest = parse_config_args(["--config", os.path.join(REPO, "configs", "base.py"),
                               "--config.train.lr=1e-4", "--config.train.sequence_lengths=(64,128)",
                               "--config.train.multi_length", "true", "--config.model.kind=mamba",
                               "--extra"])
  assert c.train.lr == 1e-4 and c.train.sequence_lengths == (64, 128) and c.train.multi_length
  assert c.model.kind == "mamba" and rest == ["--extra"]
  with pytest.raises(ConfigError, match="unknown config field config.train.nope"):
    apply_override(c, "train.nope", "1")
  with pytest.raises(ConfigError, match="config.train.batch_size"):
    apply_override(c, "train.batch_size", "eight")


def test_reference_flags_map_onto_the_config():
  c = reference_config(["--seq_len", "512", "--multi_length", "--sequence_lengths", "128", "512",
                        "--epochs", "2", "--batch_size", "4", "--lr", "3e-4", "--weight_decay", "0.1",
                        "--grad_clip", "0.5", "--d_model", "64", "--n_layers", "2", "--n_heads", "8",
                        "--d_ff", "128", "--dataset", "wikitext2", "--data_limit", "1000",
                        "--eval_only", "--streaming", "--eval_tokens", "5000", "--log_interval", "5",
                        "--save_dir", "/tmp/x", "--device", "cpu", "--seed", "7",
                        "--use_birman_schwinger", "--use_scattering_router", "--use_semiseparable",
                        "--use_wandb"])
  t, m = c.train, c.model
  assert (t.seq_len, t.multi_length, t.sequence_lengths, t.epochs, t.batch_size) == (512, True, (128, 512), 2, 4)
  assert (t.lr, t.weight_decay, t.grad_clip, t.log_interval) == (3e-4, 0.1, 0.5, 5)
  assert (m.d_model, m.n_layers, m.n_heads, m.d_ff) == (64, 2, 8, 128)
  assert m.use_birman_schwinger and m.use_moe and m.use_semiseparable
  assert (c.data.dataset, c.data.data_limit) == ("wikitext2", 1000)
  assert c.eval.eval_only and c.eval.streaming and c.eval.eval_tokens == 5000
  assert (c.save_dir, c.device, c.seed, c.logging.tensorboard) == ("/tmp/x", "cpu", 7, True)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
  d = tmp_path_factory.mktemp("corpus")
  return write_pattern_corpus(str(d / "p.txt")), str(d / "cache")


@pytest.mark.parametrize("change, error, match", [
    (lambda c: setattr(c.train, "lr", -1.0), ConfigError, "train.lr"),
    (lambda c: setattr(c.model, "kind", "rnn"), ConfigError, "unknown kind 'rnn'"),
    (lambda c: (setattr(c.mesh, "sequence", 2), setattr(c.train, "seq_len", 33),
                setattr(c.train, "sequence_lengths", (33,))), ConfigError, "not divisible by mesh.sequence"),
    (lambda c: (setattr(c.train, "tokens_per_batch", 100)), ConfigError, "not divisible by sequence length"),
    (lambda c: setattr(c.data, "path", "/nonexistent/corpus.txt"), DataError, "nonexistent"),
    (lambda c: setattr(c.mesh, "fsdp", 3), ConfigError, "number of devices"),
], ids=["negative-lr", "unknown-kind", "indivisible-length", "tokens-per-batch", "missing-data", "mesh"])
def test_bad_config_fails_before_anything_is_built(corpus, tmp_path, change, error, match):
  save = tmp_path / "run"
  c = tiny_config(str(save), *corpus)
  change(c)
  with pytest.raises(error, match=match) as e:
    run(c)
  assert "\n" not in str(e.value)
  assert not save.exists()  # nothing written, nothing compiled


def test_script_prints_one_line_and_exits_2(tmp_path):
  p = subprocess.run([sys.executable, os.path.join(REPO, "scripts", "train.py"), "--config",
                      os.path.join(REPO, "configs", "quickstart.py"), "--config.train.lr=-0.5",
                      f"--config.save_dir={tmp_path}/r"], capture_output=True, text=True, timeout=120)
  assert p.returncode == 2
  assert p.stderr.strip().splitlines() == ["train.py: error: train.lr must be finite and >= 0, got -0.5"]
  p = subprocess.run([sys.executable, os.path.join(REPO, "scripts", "train_long_context.py"),
                      "--dataset", "text", "--save_dir", f"{tmp_path}/r"], capture_output=True,
                     text=True, timeout=120)
  assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1
  assert "error:" in p.stderr


def test_mamba_baseline_script_is_the_reference_cli_with_mamba(tmp_path):
  """scripts/train_mamba_baseline.py: the seed's flags, model.kind mamba, the seed's record."""
  corpus = write_pattern_corpus(str(tmp_path / "pattern.txt"))
  save = tmp_path / "mamba"
  p = subprocess.run([sys.executable, os.path.join(REPO, "scripts", "train_mamba_baseline.py"),
                      "--dataset", "text", "--seq_len", "32", "--batch_size", "4", "--d_model", "32",
                      "--n_layers", "1", "--epochs", "1", "--data_limit", "2000", "--log_interval", "2",
                      "--save_dir", str(save), f"--config.data.path={corpus}",
                      f"--config.data.cache_dir={tmp_path / 'cache'}",
                      "--config.logging.progress_bar=False"],
                     capture_output=True, text=True, timeout=600)
  assert p.returncode == 0, p.stderr[-3000:]
  with open(save / "long_context_results.json") as f:
    res = json.load(f)
  assert res["args"]["model"]["kind"] == "mamba" and res["status"] == {"32": "trained"}
  h = res["metrics_history"][0]
  assert list(h)[:6] == ["step", "epoch", "seq_len", "loss", "perplexity", "gradient_norm"]
  assert h["loss"] > 0 and h["mean_schatten_s1"] is None  # no Birman-Schwinger monitors in Mamba

"""config.eval.sub_chunk is a real config field: accepted on the command line, validated, used by
the streaming evaluator, and filled in for checkpoints whose stored config predates it."""

import os

import pytest
from flax import nnx

from bk_jax.data import TINY_SHAKESPEARE
from bk_jax.eval.streaming import DEFAULT_SUB_CHUNK, evaluate_model
from bk_jax.models import build_model
from bk_jax.eval.loading import fill_missing_fields
from bk_jax.train.cli import DEFAULT_CONFIG, apply_override, load_config, split_config_args
from bk_jax.train.config_validation import ConfigError, validate_config


def _config(tmp_path, argv):
  path, overrides, rest = split_config_args(argv, DEFAULT_CONFIG)
  assert rest == []
  config = load_config(path)
  for k, v in overrides:
    apply_override(config, k, v)
  config.data.dataset, config.data.path = "text", TINY_SHAKESPEARE
  config.data.cache_dir, config.data.data_limit = str(tmp_path / "cache"), 20_000
  m = config.model
  m.d_model, m.n_layers, m.n_heads, m.d_ff, m.vocab_size = 16, 1, 2, 32, 259
  return config


def test_default_is_the_streaming_default():
  assert load_config(DEFAULT_CONFIG).eval.sub_chunk == DEFAULT_SUB_CHUNK


@pytest.mark.parametrize("sub, expected", [("512", 2), ("0", 1), ("1024", 1)])
def test_override_is_accepted_and_used(tmp_path, sub, expected):
  config = _config(tmp_path, [f"--config.eval.sub_chunk={sub}", "--config.eval.chunk_size=1024",
                              "--config.eval.eval_tokens=2048", "--config.eval.split=valid"])
  assert config.eval.sub_chunk == int(sub)
  validate_config(config)
  model = build_model(config.model, rngs=nnx.Rngs(0))
  out = evaluate_model(model, config, progress=False, log=None)
  assert out["sub_chunks"] == expected and out["tokens"] == 2048


def test_negative_is_rejected(tmp_path):
  config = _config(tmp_path, ["--config.eval.sub_chunk=-1"])
  with pytest.raises(ConfigError, match="eval.sub_chunk"):
    validate_config(config)


def test_old_checkpoint_config_gets_the_field():
  """A stored config without eval.sub_chunk (written before the field existed) is filled."""
  stored = load_config(DEFAULT_CONFIG).to_dict()
  del stored["eval"]["sub_chunk"]
  stored["eval"]["chunk_size"] = 512
  import ml_collections
  config = ml_collections.ConfigDict(stored)
  with pytest.raises(ConfigError, match="unknown config field"):
    apply_override(config, "eval.sub_chunk", "256")
  fill_missing_fields(config, load_config(DEFAULT_CONFIG))
  assert config.eval.sub_chunk == DEFAULT_SUB_CHUNK and config.eval.chunk_size == 512
  apply_override(config, "eval.sub_chunk", "256")
  assert config.eval.sub_chunk == 256

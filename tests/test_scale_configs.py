"""The 1B / 7B configs: parameter counts (from shapes only) and Mamba/Mamba-2/Transformer parity."""

import os

import pytest

from bk_jax.models import count_params
from bk_jax.train.cli import load_config
from bk_jax.train.config_validation import validate_config

CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")
#: the baselines must be within this relative distance of the ResNet-BK count
PARITY_TOL = 0.10
RANGES = {"1b": (1.0e9, 1.3e9), "7b": (6.5e9, 7.5e9)}


def _cfg(name):
  return load_config(os.path.join(CONFIGS, f"{name}.py"))


@pytest.mark.parametrize("size", sorted(RANGES))
def test_parameter_counts_in_range_and_baselines_match(size):
  lo, hi = RANGES[size]
  bk = count_params(_cfg(f"bk_{size}").model)
  assert lo <= bk <= hi, bk
  for kind in ("mamba", "transformer", "mamba2"):
    c = _cfg(f"{kind}_{size}")
    assert c.model.kind == kind
    n = count_params(c.model)
    assert abs(n - bk) / bk <= PARITY_TOL, (kind, n, bk)


def test_count_params_matches_a_built_model():
  """count_params (eval_shape) == the sizes of a really initialised small model."""
  import jax
  from flax import nnx

  from bk_jax.models import build_model

  for kind in ("resnet_bk", "mamba", "transformer", "mamba2"):
    c = _cfg("bk_1b").model
    c.kind, c.d_model, c.n_layers, c.n_heads, c.d_ff, c.vocab_size = kind, 32, 2, 4, 48, 50
    c.transformer.n_heads = 4
    real = sum(x.size for x in jax.tree.leaves(nnx.state(build_model(c), nnx.Param)))
    assert count_params(c) == real > 0


@pytest.mark.parametrize("name", ["bk_1b", "bk_7b", "mamba_1b", "transformer_1b", "mamba_7b",
                                  "transformer_7b", "mamba2_1b", "mamba2_7b"])
def test_configs_validate(name):
  c = _cfg(name)
  validate_config(c)
  assert c.model.dtype == "bfloat16" and c.model.param_dtype == "float32"
  assert tuple(c.train.sequence_lengths) == (32768, 131072) and c.train.multi_length
  assert c.model.vocab_size == c.data.vocab_size == 32768 and c.data.tokenizer == "bpe"

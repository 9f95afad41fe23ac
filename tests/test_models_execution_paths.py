"""The "auto" method defaults, their resolution per platform, and old checkpoints' configs."""

import glob
import importlib
import os

import jax
import pytest
from ml_collections import ConfigDict

from bk_jax.eval.loading import merged_config
from bk_jax.models import default_model_config, execution_paths, validate_model_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def cfg(kind, **kw):
  c = default_model_config()
  c.kind = kind
  for k, v in kw.items():
    *path, leaf = k.split(".")
    node = c
    for p in path:
      node = node[p]
    node[leaf] = v
  return c


def test_auto_is_the_default_and_resolves_by_platform():
  c = default_model_config()
  assert c.resolvent_method == "auto" and c.mamba.scan_method == "auto"
  assert execution_paths(cfg("resnet_bk"), "cpu") == {"dtype": "float32",
                                                      "resolvent_method": "scan"}
  assert execution_paths(cfg("resnet_bk"), "gpu")["resolvent_method"] == "associative"
  assert execution_paths(cfg("resnet_bk"), "tpu")["resolvent_method"] == "associative"
  assert execution_paths(cfg("mamba"), "cpu") == {"dtype": "float32", "mamba_scan": "sequential"}
  assert execution_paths(cfg("mamba"), "gpu")["mamba_scan"] == "associative"
  assert execution_paths(cfg("transformer"), "gpu")["attention"] == "auto"  # shape unknown
  # shape known: the Transformer's own rule (blockwise on the CPU, cuDNN for bf16 on a GPU)
  assert execution_paths(cfg("transformer"), "cpu", batch=2, seq_len=8192)["attention"] == (
      "blockwise")
  assert execution_paths(cfg("transformer", dtype="bfloat16"), "gpu", batch=2, seq_len=8192)[
      "attention"] == "cudnn"
  # explicit choices win on every platform
  assert execution_paths(cfg("resnet_bk", resolvent_method="chunked"), "gpu")[
      "resolvent_method"] == "chunked"
  assert execution_paths(cfg("mamba", **{"mamba.scan_method": "sequential"}), "gpu")[
      "mamba_scan"] == "sequential"
  assert execution_paths(cfg("resnet_bk"))["resolvent_method"] == (
      "scan" if jax.default_backend() == "cpu" else "associative")
  # Mamba-2 names the chunk length its SSD kernel runs (0 = mamba2.SSD_CHUNK, 64 everywhere)
  assert c.mamba2.chunk == 0
  assert execution_paths(cfg("mamba2"), "cpu") == {"dtype": "float32", "ssd_chunk": "64"}
  assert execution_paths(cfg("mamba2"), "gpu")["ssd_chunk"] == "64"
  assert execution_paths(cfg("mamba2", **{"mamba2.chunk": 32}), "cpu")["ssd_chunk"] == "32"


def test_scan_method_validated():
  validate_model_config(cfg("mamba", vocab_size=11, **{"mamba.scan_method": "associative"}))
  with pytest.raises(ValueError, match="mamba.scan_method 'parallel' not in"):
    validate_model_config(cfg("mamba", vocab_size=11, **{"mamba.scan_method": "parallel"}))


@pytest.mark.parametrize("fields,msg", [
    ({"mamba2.headdim": 48},
     r"mamba2.headdim \(48\) must divide d_inner = expand \* d_model \(256\)"),
    ({"mamba2.ngroups": 3}, r"mamba2.ngroups \(3\) must divide the 4 heads"),
    ({"mamba2.chunk": -1}, "mamba2.chunk must be >= 0"),
    ({"mamba2.d_state": 0}, "must be positive")])
def test_mamba2_fields_validated(fields, msg):
  validate_model_config(cfg("mamba2", vocab_size=11))
  with pytest.raises(ValueError, match=msg):
    validate_model_config(cfg("mamba2", vocab_size=11, **fields))


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(ROOT, "configs", "*.py"))))
def test_every_config_uses_auto(path):
  name = os.path.basename(path)[:-3]
  if name == "__init__":
    return
  c = importlib.import_module(f"configs.{name}").get_config()
  assert c.model.resolvent_method == "auto", name
  assert c.model.mamba.scan_method == "auto", name


def test_old_checkpoint_config_gets_runtime_defaults():
  """A config saved before mamba.scan_method existed, with the then-explicit 'chunked'."""
  old = default_model_config().to_dict()
  old["kind"], old["resolvent_method"] = "mamba", "chunked"
  del old["mamba"]["scan_method"]
  merged = merged_config({"model": old}, None)
  assert merged.model.mamba.scan_method == "auto"
  assert merged.model.resolvent_method == "chunked"  # what it was trained with still runs
  c = ConfigDict({"model": dict(old, resolvent_method="associative"), "save_dir": "x"})
  c.model.mamba.scan_method = "sequential"
  merged = merged_config({"model": old}, c)
  assert merged.model.resolvent_method == "associative"
  assert merged.model.mamba.scan_method == "sequential"

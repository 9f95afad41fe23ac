"""Sequence-parallel causal resolvent (bk_jax.ops.sharded_scan) on 8 fake CPU devices."""

import pytest

from sharding_checks import run_check


def _assert_close(res, tol_g, tol_grad):
  for key, r in res.items():
    assert r["g"] <= tol_g and r["carry"] <= tol_g, (key, r)
    assert r["grad"] <= tol_grad, (key, r)


@pytest.mark.slow
def test_sequence_sharded_causal_diag_matches_unsharded():
  """Forward, carry and gradients (v, hopping, z, carry) on mesh sequence=8, float32."""
  res = run_check("scan", "float32", "quick")
  assert any(k.endswith("_chained") for k in res)
  _assert_close(res, 2e-5, 2e-5)


@pytest.mark.slow
def test_sequence_sharded_causal_diag_float64_all_meshes():
  """(data 2 x sequence 4) and (sequence 8), 5 and 16 positions per shard, in float64."""
  res = run_check("scan", "float64", "full")
  _assert_close(res, 1e-11, 1e-11)


def test_mesh_errors():
  """A mesh that does not cover the devices, and semiseparable with sequence > 1."""
  import ml_collections

  from bk_jax.sharding import MeshError, check_model_fits_mesh, mesh_shape
  from bk_jax.train.config_validation import ConfigError

  m = ml_collections.ConfigDict(dict(data=2, fsdp=2, tensor=1, sequence=1))
  assert mesh_shape(m, 4) == (2, 2, 1, 1)
  with pytest.raises(MeshError, match="must equal the number of devices, 8"):
    mesh_shape(m, 8)
  m.data = -1
  assert mesh_shape(m, 8) == (4, 2, 1, 1)
  with pytest.raises(ConfigError, match="number of devices"):
    mesh_shape(ml_collections.ConfigDict(dict(data=-1, fsdp=3, tensor=1, sequence=1)), 8)
  model = ml_collections.ConfigDict(dict(kind="resnet_bk", use_semiseparable=True))
  with pytest.raises(ConfigError, match="gathering the whole sequence"):
    check_model_fits_mesh(model, ml_collections.ConfigDict(dict(sequence=2)))
  check_model_fits_mesh(model, ml_collections.ConfigDict(dict(sequence=1)))


def test_logical_rules():
  import jax
  from jax.sharding import PartitionSpec as P

  from bk_jax.sharding import logical_to_spec

  class FakeMesh:  # only .shape is read
    shape = dict(data=2, fsdp=2, tensor=2, sequence=1)

  m = FakeMesh()
  assert logical_to_spec(("embed", "mlp"), (32, 64), m) == P("fsdp", "tensor")
  assert logical_to_spec(("vocab", "embed"), (259, 32), m) == P(None, "fsdp")  # 259 is odd
  assert logical_to_spec(("heads", "embed"), (8, 32), m) == P("tensor", "fsdp")
  assert logical_to_spec((None, "embed", "heads"), (4, 32, 8), m) == P(None, "fsdp", "tensor")
  assert logical_to_spec(("mlp", "heads"), (64, 8), m) == P("tensor", None)  # tensor used once
  assert logical_to_spec(None, (3,), m) == P()
  del jax


@pytest.mark.slow
def test_sequence_sharded_selective_causal_diag_matches_unsharded():
  """Per-position hopping and z, meshes (1 x 8) and (2 x 4): forward, carry and gradients."""
  _assert_close(run_check("selective", "diag", "float32"), 2e-5, 2e-5)


@pytest.mark.slow
def test_sequence_sharded_causal_green_matches_unsharded():
  """causal_green with per-position hopping and z on meshes (1 x 8) and (2 x 4): y, carry
  (g, y) and gradients w.r.t. v, hopping, z, x and the carry equal the single-device op."""
  _assert_close(run_check("selective", "green", "float32"), 2e-5, 2e-5)


@pytest.mark.slow
def test_sequence_sharded_chunkwise_matches_unsharded():
  """The chunkwise kernel's exclusive combine: complex and real decays (|c| down to 1e-30),
  fresh and carried, meshes (1 x 8) and (2 x 4), float64: outputs, final state, gradients."""
  res = run_check("chunkwise", "float64")
  assert len(res) == 8
  for key, r in res.items():
    assert r["o"] <= 1e-12 and r["carry"] <= 1e-12 and r["grad"] <= 1e-12, (key, r)

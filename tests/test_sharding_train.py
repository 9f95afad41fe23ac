"""Sharded training on 8 fake CPU devices: meshes vs one device, save 8 -> restore 4 / 1."""

import pytest

from sharding_checks import run_check

MESHES = ("8,1,1,1", "2,2,2,1", "1,1,1,8", "2,1,1,4")


@pytest.mark.slow
def test_train_step_on_meshes_equals_single_device():
  """3 train steps per mesh: every loss and every updated parameter within 1e-5."""
  res = run_check("train_meshes", *MESHES)
  for spec in MESHES:
    r = res[spec]
    assert r["loss"] <= 1e-5 and r["params"] <= 1e-5, (spec, r)
    if spec.split(",")[3] != "1":  # the BK core really ran sequence-parallel
      assert r["sequence_parallel_calls"] > 0, (spec, r)
  # fsdp/tensor really shard the parameters
  assert "P('fsdp', 'tensor')" in res["2,2,2,1"]["specs"]


@pytest.mark.slow
def test_dropout_masks_do_not_depend_on_the_mesh():
  """3 train steps at dropout 0.2 on sharded meshes == one device: the masks are drawn for the
  global arrays (threefry, partitionable), whatever shards them."""
  res = run_check("train_meshes_dropout", "2,2,2,1", "2,1,1,4")
  for spec in ("2,2,2,1", "2,1,1,4"):
    assert res[spec]["loss"] <= 1e-5 and res[spec]["params"] <= 1e-5, (spec, res[spec])
  # the masks are on: the losses are not those of the run without dropout
  plain = res["no_dropout_reference_losses"]
  assert max(abs(a - b) for a, b in zip(plain, res["reference_losses"])) > 1e-3


@pytest.mark.slow
def test_save_on_8_restore_on_4_and_1(tmp_path):
  ck = str(tmp_path / "ck")
  ref = run_check("save", ck, devices=8)
  for devices, mesh in ((4, "1,2,2,1"), (1, "1,1,1,1"), (4, "1,1,1,4")):
    r = run_check("restore", ck, mesh, devices=devices)
    assert r["devices"] == devices and r["on_mesh"]
    assert max(abs(a - b) for a, b in zip(r["losses"], ref["losses"])) <= 1e-5, (mesh, r, ref)


@pytest.mark.slow
def test_reduced_1b_on_fsdp_x_sequence_equals_single_device():
  """configs/bk_1b.py at 1/8 width, 2 layers: 3 steps on mesh fsdp=4 x sequence=2 == 1 device."""
  r = run_check("reduced_1b", "1,4,1,2")
  assert r["devices"] == 8 and r["sequence_parallel_calls"] > 0, r
  assert r["loss"] <= 1e-5 and r["params"] <= 1e-5, r
  assert r["reference_losses"][2] < r["reference_losses"][0], r  # it trained
  assert any("fsdp" in s for s in r["specs"]), r

"""Pure helpers of bk_jax.reports behind the scripts: override parsing, ablation
rows, memory-planner meshes. Fast: nothing is trained or compiled."""

import math

import pytest

from bk_jax.reports import ablations, induction


def test_parse_overrides_types():
  got = induction.parse_overrides("model.bk_mixer=green,model.bk_conv=True,model.bk_gate=false,"
                                  "model.bk_key_dim=8,model.eta_min=1e-3,,model.router=learned")
  assert got == {"model.bk_mixer": "green", "model.bk_conv": True, "model.bk_gate": False,
                 "model.bk_key_dim": 8, "model.eta_min": 1e-3, "model.router": "learned"}
  assert type(got["model.bk_key_dim"]) is int and type(got["model.eta_min"]) is float
  assert induction.parse_overrides("") == {}


def test_ablation_rows_follow_only_and_baselines():
  assert ablations.plan_rows([4], ["heads_4", "base"], [""]) == [
      ("resnet_bk", "heads_4", {"n_heads": 4}), ("resnet_bk", "base", {})]
  # "none": baselines only (the baseline command of docs/results.md)
  assert ablations.plan_rows([], ["none"], ["mamba", "transformer"]) == [
      ("mamba", "mamba", {}), ("transformer", "transformer", {})]
  every = ablations.plan_rows([4, 64], None, [])
  assert every[0] == ("resnet_bk", "base", {}) and len(every) == len(ablations.variants([4, 64]))
  assert {"heads_4", "heads_64", "green_keyed"} <= {name for _, name, _ in every}
  with pytest.raises(KeyError):
    ablations.plan_rows([], ["heads_4"], [])  # no such variant without --heads 4


def test_candidate_meshes_split_devices_between_fsdp_and_sequence():
  from bk_jax.reports.memory_plan import candidate_meshes
  meshes = list(candidate_meshes(global_batch=4, seq_len=1024, max_devices=64))
  assert [math.prod(m) for m in meshes] == [8, 16, 32, 64]
  assert meshes[0] == (1, 4, 1, 2) and meshes[-1] == (1, 4, 1, 16)
  # the sequence axis must divide N: 3 * 2^k tokens cannot go on 16 sequence shards with batch 1
  assert [m[3] for m in candidate_meshes(global_batch=1, seq_len=24, max_devices=16)] == [8]

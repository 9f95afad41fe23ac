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
  with pytest.raises(ValueError, match="unknown row 'heads_4'"):
    ablations.plan_rows([], ["heads_4"], [])  # no such variant without --heads 4


def test_candidate_meshes_split_devices_between_fsdp_and_sequence():
  from bk_jax.reports.memory_plan import candidate_meshes
  meshes = list(candidate_meshes(global_batch=4, seq_len=1024, max_devices=64))
  assert [math.prod(m) for m in meshes] == [8, 16, 32, 64]
  assert meshes[0] == (1, 4, 1, 2) and meshes[-1] == (1, 4, 1, 16)
  # the sequence axis must divide N: 3 * 2^k tokens cannot go on 16 sequence shards with batch 1
  assert [m[3] for m in candidate_meshes(global_batch=1, seq_len=24, max_devices=16)] == [8]


def test_benchmark_checks_take_the_fastest_baseline_of_each_family():
  from bk_jax.reports.benchmark import target_checks

  rows = [dict(kind=k, n=n, tokens_per_s=t, peak_bytes_per_token=1.0)
          for k, n, t in [("resnet_bk", 2048, 100.0), ("resnet_bk", 8192, 90.0),
                          ("mamba", 2048, 50.0), ("mamba", 8192, 30.0), ("mamba2", 2048, 120.0),
                          ("mamba2", 8192, 60.0), ("transformer", 8192, 20.0)]]
  got = {c["name"]: (round(c["value"], 3), c["ok"]) for c in target_checks(rows, [2048, 8192])}
  assert got == {"resnet_bk / attention (transformer) tokens/s at 8k >= 3": (4.5, True),
                 "resnet_bk / fastest state-space (mamba2) tokens/s at 2048 >= 1": (0.833, False),
                 "resnet_bk / fastest state-space (mamba2) tokens/s at 8192 >= 1": (1.5, True)}


def test_reports_fit_mamba2_heads_to_the_width():
  """The reference's 64 values per head wherever it divides d_inner; tiny --quick widths get
  the largest power of two that does, so every report builds Mamba-2 at every width."""
  from bk_jax.models import validate_model_config
  from bk_jax.reports import throughput

  assert [throughput.mamba2_headdim(d) for d in (16, 32, 48, 128, 512)] == [32, 64, 32, 64, 64]
  for d in (16, 48):
    validate_model_config(throughput.model_config("mamba2", d, 1, 259))

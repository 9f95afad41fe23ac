"""The GPU benchmark suite (bk_jax.reports.gpu_suite) in --quick mode on the CPU, and its
per-stage time bounds."""

import importlib.util
import json
import os

import pytest
import time

from bk_jax.reports import gpu_suite
from bk_jax.reports.stages import collect_rows

ROOT = os.path.join(os.path.dirname(__file__), "..")


def _benchmark_script():
  spec = importlib.util.spec_from_file_location("benchmark", os.path.join(ROOT, "scripts",
                                                                          "benchmark.py"))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod


@pytest.mark.slow
def test_gpu_suite_quick(tmp_path):
  _benchmark_script().main(["--suite", "gpu", "--quick", "--out", str(tmp_path)])
  with open(tmp_path / "gpu_suite.json") as f:
    out = json.load(f)
  assert [s["stage"] for s in out["stages"]] == list(gpu_suite.STAGES)
  assert all(s["status"] == "ok" for s in out["stages"]), out["stages"]
  assert out["device"] and out["jax"] and out["flax"] and out["machine"]["backend"] == "cpu"
  rows = out["rows"]
  assert all(r["status"] == "ok" for r in rows), [r for r in rows if r["status"] != "ok"]
  ops = {r["method"]: r for r in rows if r["stage"] == "ops"}
  assert set(ops) == {"associative", "scan", "chunked"}
  assert all(r["tokens_per_s"] > 0 and r["paths"]["resolvent_method"] == m
             for m, r in ops.items())
  models = {r["kind"]: r for r in rows if r["stage"].startswith("models:")}
  assert set(models) == {"resnet_bk", "resnet_bk:green_keyed", "mamba", "mamba2", "transformer"}
  # the CPU resolves "auto" to the sequential forms (Mamba-2: its chunk of 64); bf16 everywhere
  assert models["resnet_bk"]["paths"] == {"dtype": "bfloat16", "resolvent_method": "scan"}
  assert models["mamba"]["paths"] == {"dtype": "bfloat16", "mamba_scan": "sequential"}
  assert models["mamba2"]["paths"] == {"dtype": "bfloat16", "ssd_chunk": "64"}
  assert models["resnet_bk:green_keyed"]["paths"] == {"dtype": "bfloat16", "resolvent_method": "scan",
                                                      "bk_mix": "chunkwise"}
  assert models["resnet_bk:green_keyed"]["n_params"] > models["resnet_bk"]["n_params"]
  assert all(r["tokens_per_s"] > 0 and r["n_params"] > 0 for r in models.values())
  train, previous = [r for r in rows if r["stage"] == "train"]
  assert train["steps_done"] == 3 and train["tokens_per_s"] > 0 and train["tokens"] == 3 * 2 * 128
  # the previous default (chunked) is timed in the same stage, so the speed-up is one run's ratio
  assert previous["baseline"] and previous["paths"]["resolvent_method"] == "chunked"
  assert previous["steps_done"] == 2 and previous["tokens_per_s"] > 0
  (check,) = [c for c in gpu_suite.checks(rows) if c["name"].startswith("seq32k.py")]
  assert check["value"] == pytest.approx(train["tokens_per_s"] / previous["tokens_per_s"])
  (stream,) = [r for r in rows if r["stage"] == "stream"]
  assert stream["tokens"] == 2048 and stream["tokens_per_s"] > 0 and stream["loss"] > 0
  md = (tmp_path / "gpu_suite.md").read_text()
  assert "resolvent_method=scan" in md and "mamba_scan=sequential" in md and "ssd_chunk=64" in md
  assert os.path.getsize(tmp_path / "gpu_suite.png") > 0


def test_stage_over_budget_is_killed_and_the_suite_goes_on(tmp_path):
  quiet = lambda *_: None
  out = gpu_suite.run_suite(str(tmp_path / "a"), quick=True, stages=["models:resnet_bk", "ops"],
                            budgets={"models:resnet_bk": 0.5, "ops": 0.5}, grace_s=0.5, log=quiet)
  assert [s["stage"] for s in out["stages"]] == ["models:resnet_bk", "ops"]  # both attempted
  for s in out["stages"]:  # killed at budget + grace: far too early to import jax and compile
    assert s["status"] == "timed_out" and s["wall_s"] < 10, s
  assert os.path.getsize(tmp_path / "a" / "gpu_suite.md") > 0  # the report is still written
  # a stage that starts with no budget left skips its cells (recorded) and exits normally
  out = gpu_suite.run_suite(str(tmp_path / "b"), quick=True, stages=["ops"], budgets={"ops": 0.0},
                            grace_s=120.0, log=quiet)
  assert out["stages"][0]["status"] == "ok"
  ops = out["rows"]
  assert len(ops) == 3 and all(r["status"] == "skipped" for r in ops), ops


def test_collect_marks_the_running_cell():
  recs = [{"event": "start", "cell": "a", "stage": "s"},
          {"event": "row", "status": "ok", "cell": "a", "stage": "s", "tokens_per_s": 1.0},
          {"event": "start", "cell": "b", "stage": "s"}]
  rows = collect_rows("s", recs, "timed_out")
  assert [(r["cell"], r["status"]) for r in rows] == [("a", "ok"), ("b", "timed_out")]
  rows = collect_rows("s", recs[:2] + [{"event": "error", "error": "boom"}], "ok")
  assert [(r["cell"], r["status"]) for r in rows] == [("a", "ok"), ("s", "error")]


def test_checks_ratios():
  """ResNet-BK against the fastest baseline of each family at each N, named in the check."""
  rows = [dict(stage=f"models:{k}", status="ok", kind=k, n=n, tokens_per_s=t)
          for k, n, t in [("resnet_bk", 8, 100.0), ("resnet_bk", 32, 95.0), ("mamba", 8, 50.0),
                          ("mamba", 32, 120.0), ("mamba2", 8, 80.0), ("mamba2", 32, 60.0),
                          ("transformer", 8, 40.0), ("transformer", 32, 5.0),
                          ("resnet_bk:green_keyed", 8, 70.0)]]
  got = {c["name"]: (round(c["value"], 3), c["ok"]) for c in gpu_suite.checks(rows)}
  assert got == {
      "resnet_bk tokens/s N=32 / N=8 >= 0.9": (0.95, True),
      "resnet_bk / state-space (mamba2) tokens/s at N=8 >= 1": (1.25, True),  # the faster at 8
      "resnet_bk / state-space (mamba) tokens/s at N=32 >= 1": (round(95 / 120, 3), False),
      "mamba2 / resnet_bk tokens/s at N=8 >= 1/1.5": (0.8, True),
      "mamba2 / resnet_bk tokens/s at N=32 >= 1/1.5": (round(60 / 95, 3), False),
      "resnet_bk / attention (transformer) tokens/s at N=8 >= 3": (2.5, False),
      "resnet_bk / attention (transformer) tokens/s at N=32 >= 10": (19.0, True),
      "resnet_bk:green_keyed / resnet_bk tokens/s at N=8 >= 1/1.5": (0.7, True)}
  # without Mamba-2 rows the state-space family is Mamba alone
  got = {c["name"] for c in gpu_suite.checks([r for r in rows if r["kind"] != "mamba2"])}
  assert "resnet_bk / state-space (mamba) tokens/s at N=8 >= 1" in got

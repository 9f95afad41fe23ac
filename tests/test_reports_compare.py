"""scripts/compare_models.py (bk_jax.reports.compare_models): the rows, the suites' budgets, and
the --quick suite end to end on the CPU (real training, checkpoints and evaluations)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest

from bk_jax.eval.mqar import mqar_cells
from bk_jax.models.kinds import KINDS
from bk_jax.reports import compare_models, runs

ROOT = os.path.join(os.path.dirname(__file__), "..")


def _script():
  spec = importlib.util.spec_from_file_location("compare_models_script",
                                                os.path.join(ROOT, "scripts", "compare_models.py"))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod


def test_rows_follow_the_registered_kinds():
  assert compare_models.default_rows(("resnet_bk", "mamba", "transformer")) == [
      "resnet_bk", "resnet_bk:green_keyed", "mamba", "transformer"]
  assert compare_models.default_rows(("resnet_bk", "mamba", "transformer", "mamba2")) == [
      "resnet_bk", "resnet_bk:green_keyed", "mamba", "mamba2", "transformer"]
  assert ("mamba2" in compare_models.default_rows()) == ("mamba2" in KINDS)


def test_gpu_suite_fits_eight_minutes_and_times_training_alone():
  spec = compare_models.suite_spec("gpu")
  groups = spec["groups"]
  train = [g for g in groups if g[0].startswith("train:")]
  assert all(len(g) == 1 for g in train)  # training stages alone on the device: clean tokens/s
  assert groups[len(train):] == [[f"{s}:{r}" for s in ("eval", "mqar") for r in spec["rows"]]]
  # the wall clock is the sum of the training budgets plus the longest side-by-side stage; the
  # same with every baseline of BASELINES registered (Mamba-2 included)
  b = compare_models.SUITES["gpu"]()["budgets"]
  every = ["resnet_bk", f"resnet_bk:{compare_models.BEST_BK}", *compare_models.BASELINES]
  assert set(b["train"]) == set(every)
  for names in (spec["rows"], every):
    wall = sum(b["train"][r] for r in names) + max(b["eval"], b["mqar"])
    assert wall <= 8 * 60 - 20, wall
  assert spec["train"]["seq_len"] == 8192 and spec["model"]["dtype"] == "bfloat16"
  assert spec["data"]["dataset"] == "pysource"
  cpu = compare_models.suite_spec("cpu")
  assert cpu["train"]["tokens"] >= 16_000_000
  for row in compare_models.default_rows():  # the CPU target: at most 1M parameters, every row
    c = compare_models.train_config(cpu, "unused", row)
    assert runs.n_params(c.model, runs.vocab_of(c)) <= 1_000_000, row
  assert all(len(g) == 1 for g in cpu["groups"])  # two cores: one stage at a time
  with pytest.raises(ValueError, match="unknown row 'resnet_bk:nope'"):
    compare_models.suite_spec("gpu", rows=["resnet_bk:nope"])
  with pytest.raises(ValueError, match="unknown row 'rwkv': a row is a model kind"):
    compare_models.suite_spec("gpu", rows=["rwkv"])


def test_dropout_reaches_every_trained_row_not_mqar():
  """The CPU suite trains every row at dropout 0.1, the GPU suite at 0; --dropout sets
  model.dropout of every row's training config and is recorded in the spec (absent at 0, as in
  runs written before the option); MQAR trains without; a bad rate is a ValueError before
  anything runs."""
  rows = ["resnet_bk:green_keyed", "mamba"]
  assert compare_models.suite_spec("cpu", rows=rows)["model"]["dropout"] == 0.1
  assert compare_models.suite_spec("cpu", quick=True, rows=rows)["model"]["dropout"] == 0.1
  assert "dropout" not in compare_models.suite_spec("gpu", rows=rows)["model"]
  plain = compare_models.suite_spec("cpu", rows=rows, dropout=0.0)
  assert "dropout" not in plain["model"]
  spec = compare_models.suite_spec("gpu", rows=rows, dropout=0.2)
  assert spec["model"]["dropout"] == 0.2
  for row in rows:
    assert compare_models.train_config(spec, "unused", row).model.dropout == 0.2
    assert compare_models.train_config(plain, "unused", row).model.dropout == 0.0
    assert compare_models.mqar_config(spec, "unused", row).model.dropout == 0.0
  with pytest.raises(ValueError, match=r"dropout must be in \[0, 1\)"):
    compare_models.suite_spec("cpu", dropout=1.0)


def test_cli_bad_row_is_one_line_exit_2(tmp_path):
  env = {**os.environ, "PYTHONPATH": os.path.abspath(ROOT)}
  p = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "compare_models.py"),
                      "--quick", "--rows", "resnet_bk:nope", "--out", str(tmp_path / "o")],
                     capture_output=True, text=True, env=env, timeout=300)
  assert p.returncode == 2
  lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
  assert len(lines) == 1 and lines[0].startswith("compare_models: error: unknown row"), p.stderr
  assert not (tmp_path / "o").exists()


def test_spent_budgets_skip_every_cell_and_the_report_says_so(tmp_path, monkeypatch):
  monkeypatch.setenv("BK_JAX_CACHE", str(tmp_path / "cache"))
  out = compare_models.run_compare(str(tmp_path / "o"), quick=True, rows=["resnet_bk"],
                                   budget_scale=0.0, log=lambda *_: None)
  assert [s["status"] for s in out["stages"]] == ["ok"] * 3  # every stage ran and gave up
  assert {r["status"] for r in out["rows"]} == {"skipped"}
  md = (tmp_path / "o" / "comparison.md").read_text()
  assert "Cells without a result" in md and "stage budget spent" in md
  # --stages reruns some stages of that run; the others' rows are kept
  again = compare_models.run_compare(str(tmp_path / "o"), quick=True, rows=["resnet_bk"],
                                     budget_scale=0.0, stages=["mqar"], log=lambda *_: None)
  assert [s["stage"] for s in again["stages"]] == [s["stage"] for s in out["stages"]]
  assert ([r["cell"] for r in again["rows"]] ==
          ["train", "val", "position", "passkey", "mqar_train", "mqar"])
  with pytest.raises(ValueError, match="has none of transformer"):
    compare_models.run_compare(str(tmp_path / "o"), quick=True, rows=["transformer"],
                               stages=["eval"], log=lambda *_: None)
  with pytest.raises(ValueError, match=r"at other sizes \(train\)"):
    compare_models.run_compare(str(tmp_path / "o"), quick=True, rows=["transformer"], tokens=999,
                               stages=["train"], log=lambda *_: None)
  with pytest.raises(ValueError, match=r"at other sizes \(model\); .* and --dropout"):
    compare_models.run_compare(str(tmp_path / "o"), quick=True, rows=["transformer"], dropout=0.1,
                               stages=["train"], log=lambda *_: None)
  # a new row joins the earlier run; without --rows a call reruns the earlier run's rows
  more = compare_models.run_compare(str(tmp_path / "o"), quick=True, rows=["transformer"],
                                    budget_scale=0.0, stages=["train"], log=lambda *_: None)
  assert more["spec"]["rows"] == ["resnet_bk", "transformer"]
  assert [s["stage"] for s in more["stages"]] == [
      "train:resnet_bk", "train:transformer", "eval:resnet_bk", "mqar:resnet_bk"]
  assert [(r["row"], r["cell"]) for r in more["rows"]][-1] == ("transformer", "train")
  again = compare_models.run_compare(str(tmp_path / "o"), quick=True, budget_scale=0.0,
                                     stages=["mqar"], log=lambda *_: None)
  assert [s["stage"] for s in again["stages"]][-2:] == ["mqar:resnet_bk", "mqar:transformer"]
  # another corpus (the identity, not the path, decides) is one error
  other = tmp_path / "other"
  other.mkdir()
  prev = json.loads((tmp_path / "o" / "comparison.json").read_text())
  prev["corpus"]["identity"]["sha256"] = "0" * 64
  prev["spec"]["data"]["path"] = "/elsewhere/the/same/file"
  (other / "comparison.json").write_text(json.dumps(prev))
  with pytest.raises(ValueError, match="another corpus"):
    compare_models.run_compare(str(other), quick=True, budget_scale=0.0, stages=["mqar"],
                               log=lambda *_: None)
  with pytest.raises(ValueError, match="does not exist"):
    compare_models.run_compare(str(tmp_path / "new"), quick=True, stages=["eval"])
  # in a new --out the chosen stages run alone (eval alone, above, needs checkpoints)
  lines = []
  alone = compare_models.run_compare(str(tmp_path / "new"), quick=True, rows=["resnet_bk"],
                                     budget_scale=0.0, stages=["train", "eval"], log=lines.append)
  assert [s["stage"] for s in alone["stages"]] == ["train:resnet_bk", "eval:resnet_bk"]
  assert "comparison.md" in lines[-1] and "png" in lines[-1] and "mqar" not in lines[-1]
  mqar = compare_models.run_compare(str(tmp_path / "mqar"), quick=True, rows=["resnet_bk"],
                                    budget_scale=0.0, stages=["mqar"], log=lambda *_: None)
  assert [s["stage"] for s in mqar["stages"]] == ["mqar:resnet_bk"]
  with pytest.raises(ValueError, match="unknown stage"):
    compare_models.run_compare(str(tmp_path / "new"), quick=True, stages=["plot"])


def test_resume_continues_a_stopped_training_stage(tmp_path, monkeypatch):
  """--resume: a train stage stopped partway (its budget; a kill leaves the periodic checkpoint
  the same way) goes on from its checkpoint to the losses of a run that was never stopped."""
  monkeypatch.setenv("BK_JAX_CACHE", str(tmp_path / "cache"))
  tokens, out = 6 * 2 * 128, str(tmp_path / "o")  # 6 steps of the quick suite's 2 x 128
  spec = compare_models.suite_spec("gpu", quick=True, rows=["resnet_bk"], tokens=tokens)
  stopped = runs.train(compare_models.train_config(spec, out, "resnet_bk"), budget_s=1e-3)
  assert stopped["stopped_by_budget"] and 1 <= stopped["total_steps"] < 6
  assert stopped["start_step"] == 0 and stopped["steps_run"] == stopped["total_steps"]
  call = dict(quick=True, rows=["resnet_bk"], tokens=tokens, stages=["train"], log=lambda *_: None)
  (resumed,) = compare_models.run_compare(out, resume=True, **call)["rows"]
  assert resumed["start_step"] == stopped["total_steps"] and resumed["steps"] == 6
  assert not resumed["stopped_by_budget"] and resumed["tokens"] == tokens
  assert f"resnet_bk from step {stopped['total_steps']}" in (tmp_path / "o" / "comparison.md").read_text()
  (whole,) = compare_models.run_compare(str(tmp_path / "whole"), **call)["rows"]
  assert whole["start_step"] == 0 and whole["curve_steps"] == resumed["curve_steps"]
  assert resumed["curve_loss"] == pytest.approx(whole["curve_loss"], rel=1e-6, abs=0)
  # without --resume the stage starts over
  (again,) = compare_models.run_compare(out, **call)["rows"]
  assert again["start_step"] == 0 and again["steps"] == 6
  assert "Resumed from" not in (tmp_path / "o" / "comparison.md").read_text()
  assert _script().parser().parse_args(["--resume"]).resume


def _quick(tmp_path, rows):
  _script().main(["--quick", "--out", str(tmp_path / "o")] + (["--rows", ",".join(rows)]
                                                              if rows else []))
  with open(tmp_path / "o" / "comparison.json") as f:
    return json.load(f)


# The implementations each row names beside its dtype: the kind's own choices, and for the keyed
# Green block also the mixer's kernel.
_KIND_PATHS = {"resnet_bk": {"resolvent_method"},
               "resnet_bk:green_keyed": {"resolvent_method", "bk_mix"},
               "mamba": {"mamba_scan"}, "mamba2": {"ssd_chunk"}, "transformer": {"attention"}}


def _check_quick(tmp_path, out, rows):
  o = tmp_path / "o"
  assert out["command"].startswith("python ") and out["machine"]["backend"] == "cpu"
  assert all(s["status"] == "ok" for s in out["stages"]), out["stages"]
  assert all(r["status"] == "ok" for r in out["rows"]), [r for r in out["rows"]
                                                         if r["status"] != "ok"]
  ident = out["corpus"]["identity"]
  assert ident["dataset"] == "pysource" and len(ident["sha256"]) == 64 and ident["packages"]
  assert out["corpus"]["documents"]["valid"]["tokens"] == ident["split_tokens"]["valid"]
  spec = out["spec"]
  models = {m["row"]: m for m in out["models"]}
  assert list(models) == rows
  for m in models.values():
    tr = m["train"]
    assert tr["tokens"] == spec["train"]["tokens"] and not tr["stopped_by_budget"]
    assert tr["paths"]["dtype"] == "float32"
    assert set(tr["paths"]) == {"dtype"} | _KIND_PATHS[m["row"]], tr["paths"]
    assert m["val"]["val_loss"] > 0
    assert m["position"]["tokens"] == m["position"]["documents"] * 512
    assert [b["bucket"] for b in m["position"]["buckets"]] == ["0-64", "64-128", "128-256", "256+"]
    cells = m["passkey"]["cells"]
    assert [(c["length"], c["depth"]) for c in cells] == [
        (n, d) for n in (128, 256) for d in (0.0, 0.5, 1.0)]
    assert all(0.0 <= c["accuracy"] <= c["digit_accuracy"] + 1e-9 for c in cells)
    q = m["mqar"]["cells"]
    assert [(c["length"], c["kv_pairs"]) for c in q] == mqar_cells([64, 128], [4, 8, 16])
    assert m["mqar_train"]["steps"] == 3
  p = [m["train"]["params"] for m in models.values()]
  assert max(p) / min(p) < 2.0  # matched to one target (within a layer's worth at this size)
  assert "every row names the implementation that ran" in {c["name"] for c in out["checks"]}
  md = (o / "comparison.md").read_text()
  for needle in ("Loss (nats/token) by position", "Passkey retrieval", "MQAR accuracy",
                 "Document lengths"):
    assert needle in md
  for png in ("comparison.png", "passkey.png", "mqar.png"):
    assert (o / png).stat().st_size > 5000
  return models


def test_quick_suite_end_to_end(tmp_path, monkeypatch):
  """One row (the cheapest to compile) through every stage; every row: the slow test below."""
  monkeypatch.setenv("BK_JAX_CACHE", str(tmp_path / "cache"))
  models = _check_quick(tmp_path, _quick(tmp_path, ["resnet_bk"]), ["resnet_bk"])
  assert models["resnet_bk"]["train"]["paths"]["resolvent_method"] == "scan"


@pytest.mark.slow
def test_quick_suite_every_row(tmp_path, monkeypatch):
  monkeypatch.setenv("BK_JAX_CACHE", str(tmp_path / "cache"))
  out = _quick(tmp_path, None)
  models = _check_quick(tmp_path, out, compare_models.default_rows())
  assert models["transformer"]["position"]["stream_paths"]["attention"].startswith("blockwise")
  assert "attention=blockwise" in (tmp_path / "o" / "comparison.md").read_text()
  names = {c["name"] for c in out["checks"]}
  assert "val loss resnet_bk:green_keyed <= transformer" in names
  assert models["mamba"]["train"]["paths"]["mamba_scan"] == "sequential"


def _record(row, *, val, tps, tokens=1000, stopped=False, passkey=1.0, mqar=0.5):
  ok = dict(status="ok")
  return dict(row=row, kind=row.partition(":")[0],
              train=dict(ok, tokens=tokens, stopped_by_budget=stopped, tokens_per_s=tps,
                         params=900_000, paths={"dtype": "bfloat16"}),
              val=dict(ok, val_loss=val),
              passkey=dict(ok, cells=[dict(length=n, depth=d, accuracy=passkey)
                                      for n in (2048, 8192, 32768) for d in (0.0, 1.0)]),
              mqar=dict(ok, cells=[dict(length=256, kv_pairs=16, accuracy=mqar)]))


def test_checks_decide_the_targets():
  from bk_jax.reports.compare_report import checks

  spec = dict(compare_models.suite_spec("gpu", rows=["resnet_bk:green_keyed", "transformer"]),
              suite="gpu")
  ms = [_record("resnet_bk:green_keyed", val=1.0, tps=3e6),
        _record("transformer", val=1.1, tps=1e6)]
  got = {c["name"]: c["ok"] for c in checks(spec, ms)}
  assert got == {"every row trained on the same tokens (none stopped by its budget)": True,
                 "every row names the implementation that ran": True,
                 "val loss resnet_bk:green_keyed <= transformer": True,
                 "tokens/s resnet_bk:green_keyed / transformer at N=8192 >= 2": True,
                 "resnet_bk:green_keyed passkey >= 99% at every depth, prompts <= N=8192": True}
  ms = [_record("resnet_bk:green_keyed", val=1.2, tps=1.5e6, passkey=0.5, tokens=900,
                stopped=True), _record("transformer", val=1.1, tps=1e6)]
  got = {c["name"]: c["ok"] for c in checks(spec, ms)}
  assert [name for name, ok in got.items() if ok] == ["every row names the implementation that ran"]
  assert len(got) == 5  # the same five targets, four of them failed
  cpu = dict(compare_models.suite_spec("cpu", rows=["resnet_bk:green_keyed", "mamba"]))
  got = {c["name"]: c["ok"] for c in checks(cpu, [_record("resnet_bk:green_keyed", val=1.44,
                                                          tps=1.0),
                                                  _record("mamba", val=1.5, tps=1.0)])}
  assert got["resnet_bk:green_keyed val loss <= 1.45 nats/char"]
  assert got["resnet_bk:green_keyed parameters <= 1M"]
  assert got["val loss resnet_bk:green_keyed <= mamba"]


def test_mqar_rows_share_width_and_depth(tmp_path):
  """MQAR compares recall at equal model dimension (Zoology's protocol): every row, of either
  suite, has the suite's d_model and n_layers, whatever its parameter count (matching parameters
  left the Transformer and the keyed block one layer at the GPU suite's width)."""
  for suite in ("gpu", "cpu"):
    spec = compare_models.suite_spec(suite)
    for row in spec["rows"]:
      c = compare_models.mqar_config(spec, str(tmp_path), row)
      assert (c.model.d_model, c.model.n_layers) == (spec["mqar"]["d_model"],
                                                     spec["mqar"]["n_layers"]), (suite, row)
      assert (c.train.seq_len, c.data.synthetic.num_kv_pairs) == (spec["mqar"]["train_len"],
                                                                  spec["mqar"]["train_kv"])

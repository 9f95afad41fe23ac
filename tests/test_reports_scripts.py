"""The report scripts end-to-end in --quick mode (tiny sizes; JSON, markdown and PNG written)."""

import importlib.util
import json
import os

import pytest

from tiny_configs import write_pattern_corpus

ROOT = os.path.join(os.path.dirname(__file__), "..")


def _script(name):
  spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "scripts", name + ".py"))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
  return write_pattern_corpus(str(tmp_path_factory.mktemp("corpus") / "c.txt"), n_chars=20_000)


def _read(d, name):
  with open(os.path.join(d, name)) as f:
    return json.load(f)


@pytest.mark.slow  # a whole report script; the commands of README/docs run it reduced too
def test_benchmark_quick(tmp_path):
  _script("benchmark").main(["--quick", "--kinds", "resnet_bk,resnet_bk:green_keyed,transformer",
                             "--out", str(tmp_path)])
  out = _read(tmp_path, "benchmark.json")
  assert {r["kind"] for r in out["rows"]} == {"resnet_bk", "resnet_bk:green_keyed", "transformer"}
  keyed = next(r for r in out["rows"] if r["kind"] == "resnet_bk:green_keyed")
  assert keyed["paths"]["bk_mix"] == "chunkwise"  # the implementation that ran is named
  assert any("green_keyed step" in c["name"] for c in out["checks"])
  r = out["rows"][0]
  assert r["tokens_per_s"] > 0 and r["step_s_min"] <= r["step_s"] <= r["step_s_max"]
  assert r["mfu_6nd"] > 0 and out["command"].startswith("python") and out["machine"]["backend"]
  assert os.path.getsize(tmp_path / "benchmark.png") > 0


@pytest.mark.slow
def test_ablations_quick(tmp_path, corpus):
  _script("ablations").main(["--quick", "--only", "base,bs_monitors", "--quality_steps", "2",
                             "--data", corpus, "--out", str(tmp_path)])
  rows = _read(tmp_path, "ablations.json")["rows"]
  assert [r["variant"] for r in rows] == ["base", "bs_monitors"]
  assert all(r["quality_val_loss"] > 0 for r in rows)


@pytest.mark.slow
def test_compare_stability_quick(tmp_path, corpus):
  res = _script("compare_stability").main(["--quick", "--kinds", "resnet_bk,mamba", "--lengths", "16",
                                           "--data", corpus, "--out", str(tmp_path)])
  out = _read(tmp_path, "stability.json")
  assert len(out["records"]) == 4  # 2 kinds x 2 seeds x 1 length
  for r in out["records"]:
    assert r["status"] == "trained" and not r["diverged"] and r["steps"] == 4
    assert r["val_loss"] > 0 and r["grad_norm_mean"] > 0
  assert res["claims"] and all("p" in c["welch"] for c in out["claims"])
  for png in ("loss_curves.png", "grad_norm_bands.png", "spikes.png"):
    assert os.path.getsize(tmp_path / png) > 0


@pytest.mark.slow  # the README-command tests run the script too (slow set)
def test_quality_anchor_quick(tmp_path, corpus):
  # a block-variant row: the variant's overrides reach the trained model
  _script("quality_anchor").main(["--quick", "--kinds", "resnet_bk:green_keyed", "--data", corpus,
                                  "--out", str(tmp_path)])
  row = _read(tmp_path, "quality_anchor.json")["rows"][0]
  assert row["kind"] == "resnet_bk:green_keyed"
  ran = _read(tmp_path / "runs" / "resnet_bk_green_keyed", "long_context_results.json")
  assert '"bk_mixer": "green"' in json.dumps(ran) and '"bk_key_dim": 8' in json.dumps(ran)
  assert row["steps"] == 6 and 0 < row["val_loss"] < 10
  assert row["mode"] == "equal_tokens" and row["tokens_seen"] == 6 * 4 * 32
  assert row["s_per_step"] > 0


def test_report_rows_parse_and_bad_rows_fail_before_training(capsys):
  from bk_jax.reports import runs
  assert runs.parse_row("mamba") == ("mamba", {})
  kind, ov = runs.parse_row("resnet_bk:green_conv_gate")
  assert kind == "resnet_bk" and ov == {"model.bk_mixer": "green", "model.bk_conv": True,
                                        "model.bk_gate": True}
  for bad in ("resnet_bk:nope", "mamba:green", "nope"):
    with pytest.raises(ValueError, match="resnet_bk:VARIANT"):
      runs.parse_row(bad)
  with pytest.raises(ValueError, match=r"a row is a model kind \(resnet_bk, .*\)$"):
    runs.parse_row("resnet_bk:green", variants=False)
  # every report script: argparse's usage and one error line (exit 2), before any training
  for script, argv, bad in (("quality_anchor", ["--kinds", "resnet_bk,resnet_bk:nope"], "resnet_bk:nope"),
                            ("induction_anchor", ["--kinds", "resnet_bk:nope"], "resnet_bk:nope"),
                            ("benchmark", ["--kinds", "resnet_bk,nope"], "nope"),
                            ("compare_stability", ["--kinds", "mamba:green"], "mamba:green"),
                            ("ablations", ["--baselines", "nope"], "nope"),
                            ("ablations", ["--only", "nope"], "nope")):
    with pytest.raises(SystemExit) as e:
      _script(script).main(["--quick", *argv])
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and f": error: unknown row '{bad}'" in err[-1], (script, err)
    assert "Traceback" not in "\n".join(err)


def test_bad_overrides_fail_in_one_line_before_training(tmp_path, capsys):
  """A misspelt or out-of-range --bk_overrides: one error line and exit 2, nothing trained (a
  ConfigDict would take a misspelt field as a new one that nothing reads)."""
  from bk_jax.reports import runs
  from bk_jax.runtime.errors import ConfigError
  with pytest.raises(ConfigError, match=r"^unknown config field 'model.bk_selectve_heads'$"):
    runs.make_config("resnet_bk", str(tmp_path / "r"), {"model.bk_selectve_heads": 2})
  with pytest.raises(ConfigError, match=r"^unknown config field 'modl.n_heads'$"):
    runs.make_config("resnet_bk", str(tmp_path / "r"), {"modl.n_heads": 2})
  assert runs.make_config("resnet_bk", str(tmp_path / "r"), {"model.bk_key_dim": 8}).model.bk_key_dim == 8
  for overrides, line in (("model.bk_selectve_heads=2", "unknown config field 'model.bk_selectve_heads'"),
                          ("model.bk_selective_heads=8", "bk_selective_heads must be in [0, n_heads)"),
                          ("train.divergence_factor=1.0", "train.divergence_factor must be > 1")):
    with pytest.raises(SystemExit) as e:
      _script("induction_anchor").main(["--quick", "--kinds", "resnet_bk:green_selective",
                                        "--bk_overrides", overrides, "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and ": error: " in err[-1] and line in err[-1], err
    assert "Traceback" not in "\n".join(err)
  assert not os.path.exists(tmp_path / "o" / "runs")


def test_quality_anchor_equal_tokens_and_wall_clock_planning(tmp_path, corpus):
  from bk_jax.reports import quality, runs
  with pytest.raises(ValueError, match="exactly one"):
    quality.Budget(tokens=10, seconds=5.0)
  c = runs.make_config("resnet_bk", str(tmp_path / "r"), {
      "data.dataset": "text", "data.path": corpus, "data.tokenizer": "byte",
      "model.d_model": 16, "model.n_heads": 2, "model.d_ff": 32, "model.n_layers": 1,
      "train.seq_len": 32, "train.batch_size": 4})
  # equal tokens: ceil(T / (B * N)) steps, no timing at all (independent of machine load)
  assert quality.plan_steps(c, quality.Budget(tokens=1000)) == dict(
      steps=8, timed_step_s=None, timed_steps=0)
  p = quality.plan_steps(c, quality.Budget(seconds=2.0), timing_steps=3)
  assert p["timed_steps"] == 3 and p["timed_step_s"] > 0
  assert p["steps"] == max(10, int(0.9 * 2.0 / p["timed_step_s"]))


def test_report_training_prints_progress_to_stderr(tmp_path, corpus, capsys, monkeypatch):
  """runs.train: the loop's console is quiet in reports, so a progress line goes to stderr."""
  from bk_jax.reports import runs
  monkeypatch.setattr(runs, "PROGRESS_EVERY_S", 0.0)  # every step
  c = runs.make_config("resnet_bk", str(tmp_path / "prog"), {
      "data.dataset": "text", "data.path": corpus, "data.tokenizer": "byte",
      "model.d_model": 16, "model.n_heads": 2, "model.d_ff": 32, "model.n_layers": 1,
      "train.seq_len": 32, "train.batch_size": 2, "train.steps_per_length": 3})
  res = runs.train(c)
  err = capsys.readouterr().err
  lines = [l.strip() for l in err.splitlines() if l.strip().startswith("prog: step")]
  assert [l.split(",")[0] for l in lines] == ["prog: step 1", "prog: step 2", "prog: step 3"]
  assert res["total_steps"] == 3
  # from the first logged step on, the line carries that step's training loss
  logged = {r["step"]: r["loss"] for r in res["metrics_history"]}
  for line in lines:
    step = int(line.split(",")[0].split()[-1])
    shown = [p.split()[-1] for p in line.split(",") if p.strip().startswith("loss")]
    if step > min(logged):
      assert shown and abs(float(shown[0]) - logged[max(s for s in logged if s < step)]) < 1e-3


@pytest.mark.slow  # a whole report script; the commands of README/docs run it reduced too
def test_induction_anchor_quick(tmp_path):
  _script("induction_anchor").main(["--quick", "--kinds", "resnet_bk", "--out", str(tmp_path)])
  res = _read(tmp_path, "induction_anchor.json")["results"][0]
  assert [r["length"] for r in res["rows"]] == [64, 128]
  assert all(0.0 <= r["accuracy"] <= 1.0 and r["scored"] > 0 for r in res["rows"])
  assert res["status"] == "trained" and res["recoveries"] == 0


@pytest.mark.slow
def test_induction_anchor_reports_a_diverged_row(tmp_path, capsys):
  """A row the divergence monitor gives up on is marked DIVERGED in the JSON and the table, and
  the restore is one stderr line as it happens (the report's console is quiet). A monitor that
  counts any rise of the loss as bad (factor 1.0001, patience 1, no retry) forces it."""
  _script("induction_anchor").main([
      "--kinds", "resnet_bk", "--d_model", "16", "--n_layers", "1", "--n_heads", "2",
      "--steps", "40", "--train_len", "32", "--batch", "4", "--min_log2", "6", "--max_log2", "6",
      "--samples", "2", "--bk_overrides", "train.divergence_factor=1.0001,"
      "train.divergence_patience=1,train.max_recoveries=0", "--out", str(tmp_path)])
  res = _read(tmp_path, "induction_anchor.json")["results"][0]
  assert res["status"] == "DIVERGED" and res["recoveries"] == 1
  assert "resnet_bk (train.divergence_factor" in (tmp_path / "induction_anchor.md").read_text()
  assert " DIVERGED |" in (tmp_path / "induction_anchor.md").read_text()
  assert "recoveries used up: the length is DIVERGED" in capsys.readouterr().err


def test_bench_chunkwise_quick(tmp_path):
  rows = _script("bench_chunkwise").main(["--quick", "--out", str(tmp_path / "c.json")])
  assert [(r["form"], r["pass"]) for r in rows[:2]] == [("recurrent", "fwd"),
                                                        ("recurrent", "fwd+bwd")]
  assert {r["chunk"] for r in rows if r["form"] == "chunkwise"} == {8, 16}
  assert all(r["seconds"] > 0 and r["ratio"] > 0 for r in rows)
  assert _read(tmp_path, "c.json")["command"].startswith("python")


def test_report_figures_read_results_files_of_schema_2_and_3():
  """Results files of schema 2 named the seed's figures train/loss, train/grad_norm, ...; the
  reports read those and today's (the seed's names) alike."""
  from bk_jax.reports import runs

  seed = [dict(step=s, seq_len=32, loss=3.0 - 0.1 * s, gradient_norm=1.0 + s, is_spike=s == 2,
               is_nan=False, is_inf=s == 3, step_time=0.5) for s in range(1, 5)]
  schema2 = [{"step": h["step"], "seq_len": 32, "train/loss": h["loss"],
              "train/grad_norm": h["gradient_norm"], "train/is_spike": h["is_spike"],
              "train/is_nan": h["is_nan"], "train/is_inf": h["is_inf"], "perf/step_time": 0.5}
             for h in seed]
  figs = [runs.length_figures(dict(metrics_history=h, status={"32": "trained"}), 32)
          for h in (seed, schema2)]
  assert figs[0] == figs[1]
  assert figs[0]["spikes"] == 1 and figs[0]["nonfinite_steps"] == 1 and figs[0]["steps"] == 4
  assert runs.interval_tokens_per_s(seed[0], 64) == runs.interval_tokens_per_s(schema2[0], 64) == 128

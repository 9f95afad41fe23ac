"""End-to-end training runs on a tiny model: learning, multi-length, schema, TensorBoard,
determinism, divergence handling, resume after SIGKILL and SIGTERM."""

import json
import math
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from bk_jax.train import results as results_lib
from bk_jax.train.loop import run
from tiny_configs import tiny_config, write_pattern_corpus

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
  d = tmp_path_factory.mktemp("corpus")
  return str(write_pattern_corpus(str(d / "pattern.txt"))), str(d / "cache")


@pytest.fixture(scope="module")
def multi_run(corpus, tmp_path_factory):
  """Two lengths x 10 steps, every step logged, checkpoints every 4 steps."""
  save = str(tmp_path_factory.mktemp("multi"))
  cfg = tiny_config(save, *corpus, lengths=(32, 64), steps=10)
  return cfg, run(cfg)


def _losses(res):
  return [(h["step"], h["seq_len"], h["loss"]) for h in res["metrics_history"]]


def _assert_same_losses(a, b):
  """Same steps and lengths; losses equal to <= 1e-6 (the bound a resume must meet). They are bit-identical
  in practice; once, on a loaded 2-core machine, two processes differed by 2 float32 ulps
  (9.5e-7 at a loss of ~5), which this bound still admits."""
  la, lb = _losses(a), _losses(b)
  assert [x[:2] for x in la] == [x[:2] for x in lb]
  np.testing.assert_allclose([x[2] for x in la], [x[2] for x in lb], rtol=0, atol=1e-6)


def test_loss_falls_on_learnable_task(corpus, tmp_path):
  cfg = tiny_config(str(tmp_path), *corpus, lengths=(64,), steps=60, batch_size=8)
  cfg.train.lr, cfg.train.warmup_steps, cfg.train.log_interval = 1e-2, 5, 1
  cfg.logging.console = False
  res = run(cfg)
  losses = [h["loss"] for h in res["metrics_history"]]
  assert losses[0] > 4.0  # ~log(259) at init
  assert losses[-1] < 2.5 and losses[-1] < losses[0] - 2.0, losses


def test_multi_length_trains_every_length(multi_run):
  cfg, res = multi_run
  assert res["status"] == {"32": "trained", "64": "trained"}
  for n in ("32", "64"):
    assert res["length_summary"][n]["steps"] == 10
    assert res["results_by_length"][n] and res["results_by_length"][n][-1]["epoch_mean_loss"] > 0
    assert res["gradient_statistics"][n]["mean"] > 0
  by_len = {}
  for h in res["metrics_history"]:
    by_len.setdefault(h["seq_len"], []).append(h["step"])
  assert by_len == {32: list(range(1, 11)), 64: list(range(11, 21))}
  for name in ("checkpoint_seq32_final", "checkpoint_seq64_final", "checkpoint_final"):
    assert os.path.isdir(os.path.join(cfg.save_dir, name))


def test_results_file_schema(multi_run):
  cfg, res = multi_run
  with open(os.path.join(cfg.save_dir, "long_context_results.json")) as f:
    on_disk = json.load(f)
  assert on_disk == json.loads(json.dumps(res))
  for key in ("args", "results_by_length", "metrics_history", "gradient_statistics", "status"):
    assert key in on_disk
  assert on_disk["memory_kind"] in ("device_peak_since_start", "host_rss")
  assert on_disk["args"]["train"]["sequence_lengths"] == [32, 64]
  assert on_disk["schema_version"] == 3 and os.path.isabs(on_disk["save_dir"])
  mem_key = ("perf/device_peak_since_start_gb" if on_disk["memory_kind"] == "device_peak_since_start"
             else "perf/host_rss_gb")
  seed_fields = ["step", "epoch", "seq_len", "loss", "perplexity", "gradient_norm", "learning_rate",
                 "step_time", "memory_allocated_gb", "memory_reserved_gb", "is_nan", "is_inf",
                 "is_spike", "spike_ratio", "mean_schatten_s1", "mean_schatten_s2",
                 "max_condition_number"]
  for h in on_disk["metrics_history"]:
    assert list(h)[:len(seed_fields)] == seed_fields  # the seed's LongContextMetrics, in order
    assert set(results_lib.HISTORY_KEYS) <= set(h), set(results_lib.HISTORY_KEYS) - set(h)
    assert isinstance(h["is_spike"], bool) and h[mem_key] > 0 and h["perf/host_rss_gb"] > 0
    if on_disk["memory_kind"] == "host_rss":  # the CPU: no device figure, never a stand-in
      assert "perf/device_peak_since_start_gb" not in h
      assert h["memory_allocated_gb"] is None and h["memory_reserved_gb"] is None
    # features that are off emit nothing: no monitors (null seed fields), no MoE
    assert h["mean_schatten_s1"] is None and h["max_condition_number"] is None
    assert not any(k.startswith(("bk/", "moe/")) or k == "train/aux_loss" for k in h)
  for epochs in on_disk["results_by_length"].values():
    for e in epochs:
      assert set(results_lib.EPOCH_KEYS) <= set(e)
      assert e["epoch_mean_perplexity"] == pytest.approx(math.exp(e["epoch_mean_loss"]), rel=1e-6)
  for s in on_disk["gradient_statistics"].values():
    assert set(s) == set(results_lib.GRAD_KEYS) and s["min"] <= s["mean"] <= s["max"]


def test_tensorboard_tags_read_back(multi_run):
  from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

  cfg, res = multi_run
  acc = EventAccumulator(cfg.save_dir, size_guidance={"scalars": 0})  # events live in save_dir
  acc.Reload()
  tags = set(acc.Tags()["scalars"])
  for n in (32, 64):  # the seed's dashboard tags, then the namespaced figures
    for t in ("loss", "perplexity", "gradient_norm", "spike_count", "train/param_norm",
              "step_time", "perf/tokens_per_s"):
      assert f"seq{n}/{t}" in tags
    # every JSON field is a tag (under the seed's dashboard name), with the same values
    for h in (h for h in res["metrics_history"] if h["seq_len"] == n):
      for k, v in h.items():
        if k in ("step", "epoch", "seq_len") or v is None:
          continue
        ev = {e.step: e.value for e in acc.Scalars("learning_rate" if k == "learning_rate" else f"seq{n}/{k}")}
        assert ev[h["step"]] == pytest.approx(float(v), rel=1e-6), (k, h["step"])
  assert "learning_rate" in tags and not any(t.endswith("/learning_rate") for t in tags)
  assert not any("/bk/" in t or "/moe/" in t or "aux_loss" in t or "eval/" in t for t in tags)
  assert [e.step for e in acc.Scalars("seq64/loss")] == list(range(11, 21))
  assert all(e.value > 0 for e in acc.Scalars("seq32/perf/tokens_per_s"))


def test_same_seed_same_run(multi_run, corpus, tmp_path):
  cfg, res = multi_run
  cfg2 = tiny_config(str(tmp_path), *corpus, lengths=(32, 64), steps=10)
  _assert_same_losses(run(cfg2), res)


def test_unrecoverable_length_is_diverged_and_next_length_trains(corpus, tmp_path):
  cfg = tiny_config(str(tmp_path), *corpus, lengths=(32, 64), steps=8)
  cfg.debug.nonfinite_grad_seq_lens = (32,)
  cfg.train.divergence_patience, cfg.train.max_recoveries = 3, 2
  res = run(cfg)
  assert res["status"] == {"32": "DIVERGED", "64": "trained"}
  rec = res["recoveries"]
  assert [r["attempt"] for r in rec] == [1, 2, 3] and rec[-1]["gave_up"]
  assert [r["lr_scale"] for r in rec[:2]] == [0.5, 0.25]
  assert res["length_summary"]["64"]["steps"] == 8 and res["length_summary"]["64"]["skipped_steps"] == 0
  assert res["length_summary"]["32"]["grad_norm_count"] == 0  # nothing was ever applied
  assert any(h["seq_len"] == 64 and h["loss"] < 6.0 for h in res["metrics_history"])


def test_single_non_finite_step_is_skipped_and_counted(corpus, tmp_path):
  cfg = tiny_config(str(tmp_path), *corpus, lengths=(32,), steps=6)
  cfg.debug.nonfinite_grad_steps = (2,)
  res = run(cfg)
  assert res["status"] == {"32": "trained"}
  assert res["length_summary"]["32"]["skipped_steps"] == 1
  assert res["length_summary"]["32"]["nan_steps"] == 1
  assert [h["is_nan"] for h in res["metrics_history"]] == [False, False, True, False, False, False]
  assert res["results_by_length"]["32"][0]["skipped_steps"] == 1


def _subprocess_run(cfg, signame, at_step):
  """Runs cfg in a fresh process that sends itself `signame` after global step `at_step`."""
  code = textwrap.dedent(f"""
      import json, os, signal, sys
      sys.path.insert(0, {REPO!r})
      import ml_collections
      from bk_jax.train.loop import run
      cfg = ml_collections.ConfigDict(json.loads({cfg.to_json()!r}))
      def hook(step):
        if step == {at_step}:
          os.kill(os.getpid(), signal.{signame})
      run(cfg, on_step=hook)
  """)
  return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)


def test_resume_after_sigkill_matches_uninterrupted_run(multi_run, corpus, tmp_path):
  _, ref = multi_run
  cfg = tiny_config(str(tmp_path), *corpus, lengths=(32, 64), steps=10)
  p = _subprocess_run(cfg, "SIGKILL", 7)
  assert p.returncode == -9, p.stderr[-2000:]
  assert not os.path.exists(os.path.join(cfg.save_dir, "long_context_results.json"))
  res = run(cfg)  # resumes from the last complete checkpoint before the kill (step 4 or 0)
  _assert_same_losses(res, ref)
  assert res["status"] == ref["status"]


@pytest.mark.slow
def test_sigterm_saves_and_exits_cleanly_then_resumes(multi_run, corpus, tmp_path):
  _, ref = multi_run
  cfg = tiny_config(str(tmp_path), *corpus, lengths=(32, 64), steps=10)
  p = _subprocess_run(cfg, "SIGTERM", 13)
  assert p.returncode == 0, p.stderr[-2000:]
  assert "SIGTERM: checkpoint saved at step 13" in p.stdout
  with open(os.path.join(cfg.save_dir, "long_context_results.json")) as f:
    partial = json.load(f)
  assert partial["interrupted"] and partial["status"] == {"32": "trained"}
  assert os.path.isdir(os.path.join(cfg.save_dir, "checkpoints", "13"))
  res = run(cfg)
  _assert_same_losses(res, ref)


def test_eval_only_evaluates_the_latest_checkpoint(multi_run):
  cfg, res = multi_run
  cfg = cfg.copy_and_resolve_references()
  cfg.eval.eval_only, cfg.eval.eval_tokens, cfg.eval.split = True, 2000, "valid"
  from bk_jax.entry import run as entry_run  # what train.py runs: eval_only dispatches to eval
  out = entry_run(cfg)
  assert out["tokens"] >= 2000 and math.isfinite(out["loss"])
  assert out["checkpoint_step"] == 20
  assert out["loss"] < res["metrics_history"][0]["loss"]  # the trained model, not a fresh one

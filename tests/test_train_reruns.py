"""Reruns with another schedule (a finished run given more steps continues; a change that cannot
be continued is one line), and the speed figures: step time measured on finished work, the first
interval like the others, compilation under its own name."""

import os
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bk_jax.train.config_validation import ConfigError
from bk_jax.train.loop import run
from bk_jax.train.schedule import continue_plan, learning_rate_schedule
from bk_jax.train.timing import StepTimer
from fault_helpers import config_file, error_lines, run_script
from tiny_configs import tiny_config, write_pattern_corpus


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
  d = tmp_path_factory.mktemp("corpus")
  return str(write_pattern_corpus(str(d / "pattern.txt"))), str(d / "cache")


# ------------------------------------------------------------------ a longer rerun
def test_continue_plan_rules():
  a, b = [128, 8, 20], [256, 4, 20]
  assert continue_plan([a, b], [a, b], [1, 5], {}) == ([1, 5], None)
  # a finished run: its last length may grow (reopened at its end), or lengths may be appended
  assert continue_plan([a, b], [a, [256, 4, 30]], [2, 0], {}) == ([1, 20], 1)
  assert continue_plan([a], [a, b], [1, 0], {}) == ([1, 0], None)
  # a finished run that resumes at its last step (its last periodic save fell there): likewise
  assert continue_plan([a, b], [a, [256, 4, 30]], [1, 20], {}) == ([1, 20], None)
  assert continue_plan([a], [a, b], [0, 20], {}) == ([0, 20], None)
  # the length in progress may get any step count not below what it has done
  assert continue_plan([a, b], [a, [256, 4, 8]], [1, 5], {}) == ([1, 5], None)
  for old, new, pos, why in (
      ([a, b], [[128, 8, 30], b], [1, 5], "it changes lengths that are finished"),
      ([a, b], [a, [256, 4, 3]], [1, 5], "N=256 has done 5 steps, more than the new plan's 3"),
      ([a, b], [a, [256, 8, 20]], [1, 5], "it changes the length in progress (N=256, batch 4)"),
      ([a, b], [a], [1, 5], "it drops the length in progress (N=256)"),
      ([a, b], [a, [256, 4, 10]], [2, 0], "it changes lengths that are finished"),
      ([b], [[128, 8, 20], b], [0, 20], "it changes lengths that are finished")):
    with pytest.raises(ConfigError, match=f"cannot continue it: {why.replace('(', '.').replace(')', '.')}"):
      continue_plan(old, new, pos, {})
  with pytest.raises(ConfigError, match="N=256 DIVERGED, so it cannot be extended"):
    continue_plan([a, b], [a, [256, 4, 30]], [2, 0], {"256": "DIVERGED"})


def test_run_state_reads_checkpoints_that_predate_its_fields():
  from bk_jax.train.run_state import RunState

  old = dict(config={"seed": 0}, position=[1, 0], metrics_history=[{"step": 1}], eval_history=[],
             best_eval={}, results_by_length={}, gradient_statistics={}, length_summary={},
             status={"32": "trained"}, recoveries=[], retries={}, data_iterator=None,
             epoch_elapsed_s=0.0, removed_field=1)
  run = RunState.from_json(old)
  assert run.plan == [] and run.compile_s == {} and run.abandoned == {}  # taken as defaults
  assert run.position == [1, 0] and run.metrics_history == [{"step": 1}]
  assert RunState.from_json(run.to_json()) == run
  # a run written under results schema 2 resumes with the seed's names in its history
  old["metrics_history"] = [{"step": 1, "seq_len": 32, "train/loss": 2.5, "perf/host_rss_gb": 1.0}]
  assert RunState.from_json(old).metrics_history == [
      {"step": 1, "seq_len": 32, "loss": 2.5, "perf/host_rss_gb": 1.0}]


def _extend(corpus, tmp_path, min_lr_ratio: float):
  """8 steps, then the same run rerun with 12: (first results, extended results, console)."""
  cfg = tiny_config(str(tmp_path / "run"), *corpus, steps=8)
  cfg.train.min_lr_ratio = min_lr_ratio
  cfg.logging.console = False
  first = run(cfg)
  longer = cfg.copy_and_resolve_references()
  longer.train.steps_per_length = 12
  longer.logging.console = True
  return longer, first, run(longer)


def test_a_finished_run_rerun_with_more_steps_trains_them_on_the_new_schedule(corpus, tmp_path, capsys):
  longer, first, res = _extend(corpus, tmp_path, 0.1)
  assert "The plan changed from N=32 x 8 steps to N=32 x 12 steps: continuing to the new plan " \
         "(the learning rate follows its schedule)" in capsys.readouterr().out
  assert first["total_steps"] == 8
  assert res["total_steps"] == 12 and res["planned_steps"] == 12
  assert res["status"] == {"32": "trained"} and res["length_summary"]["32"]["steps"] == 12
  hist = res["metrics_history"]
  assert [h["step"] for h in hist] == list(range(1, 13))
  assert [h["loss"] for h in hist[:8]] == [h["loss"] for h in first["metrics_history"]]
  # the extension follows the new plan's schedule: step s gets the 12-step plan's rate
  lr12 = learning_rate_schedule(longer.train, 12)
  np.testing.assert_allclose([h["learning_rate"] for h in hist[8:]],
                             [float(lr12(s)) for s in range(8, 12)], rtol=1e-6)
  assert run(longer)["total_steps"] == 12  # rerun again: nothing left to train


@pytest.mark.slow  # three runs; the default set checks the extension's schedule and history
def test_an_extension_continues_data_and_state_exactly(corpus, tmp_path):
  """With a constant rate after warm-up both plans share one schedule, so the extended run must
  equal a run planned with 12 steps from the start: same batches, same optimizer state."""
  _, _, res = _extend(corpus, tmp_path, 1.0)
  ref = tiny_config(str(tmp_path / "ref"), *corpus, steps=12)
  ref.train.min_lr_ratio = 1.0
  ref.logging.console = False
  np.testing.assert_allclose([h["loss"] for h in res["metrics_history"]],
                             [h["loss"] for h in run(ref)["metrics_history"]], rtol=0, atol=1e-6)


def _append_length(corpus, tmp_path, capsys):
  """A finished run at N=16, then the same run dir with N=32 appended: (config, first, rerun)."""
  def config(name, lengths):
    c = tiny_config(str(tmp_path / name), *corpus, lengths=lengths, steps=4)
    c.checkpoint.every_steps = 100  # the only periodic save is the one at the end of the plan
    c.train.min_lr_ratio = 1.0
    c.logging.console = False
    return c

  first = run(config("run", (16,)))
  res = run(config("run", (16, 32)))
  assert "damaged" not in capsys.readouterr().err
  assert not os.path.exists(tmp_path / "run" / "damaged")
  return config, first, res


def test_a_finished_run_rerun_with_a_new_length_trains_it(corpus, tmp_path, capsys):
  """The last checkpoint of a finished run holds no data position (nothing was left to read); a
  rerun that appends a length restores it as it is (not as damaged) and trains the new length."""
  _, first, res = _append_length(corpus, tmp_path, capsys)
  assert res["status"] == {"16": "trained", "32": "trained"} and res["total_steps"] == 8
  hist = res["metrics_history"]
  assert [h["loss"] for h in hist[:4]] == [h["loss"] for h in first["metrics_history"]]
  assert [h["seq_len"] for h in hist] == [16] * 4 + [32] * 4


@pytest.mark.slow  # three runs; the default set checks the restore and the new length's steps
def test_an_appended_length_equals_a_run_planned_with_it(corpus, tmp_path, capsys):
  """The appended length reads its data from its start: with a constant rate after warm-up the
  rerun equals a run planned with both lengths from the start."""
  config, _, res = _append_length(corpus, tmp_path, capsys)
  ref = run(config("ref", (16, 32)))["metrics_history"]
  np.testing.assert_allclose([h["loss"] for h in res["metrics_history"]],
                             [h["loss"] for h in ref], rtol=0, atol=1e-6)


def test_a_rerun_that_changes_finished_lengths_is_one_line(corpus, tmp_path):
  cfg = tiny_config(str(tmp_path / "run"), *corpus, lengths=(16, 32), steps=4)
  cfg.logging.console = False
  run(cfg)
  cfg.train.steps_per_length = 6  # would need N=16 trained again after N=32
  p = run_script(["--config", config_file(tmp_path, cfg)])
  assert p.returncode == 2, p.stderr[-3000:]
  lines = error_lines(p.stderr)
  assert len(lines) == 1 and lines[0].startswith(
      "train.py: error: this run directory holds a run planned as N=16 x 4 steps, N=32 x 4 steps, "
      "finished; the new plan (N=16 x 6 steps, N=32 x 6 steps) cannot continue it: it changes "
      "lengths that are finished"), p.stderr[-3000:]


# ------------------------------------------------------------------ speed figures
def test_step_timer_measures_finished_work_not_dispatch():
  """A jitted step whose device work takes tens of ms returns at once; the timer waits for it."""
  @jax.jit
  def step(x):
    for _ in range(8):
      x = jnp.tanh(x @ x) * 0.5
    return x

  x = jnp.ones((512, 512), jnp.float32)
  jax.block_until_ready(step(x))  # compiled
  t0 = time.perf_counter()
  jax.block_until_ready(step(x))
  one = time.perf_counter() - t0
  timer = StepTimer()
  for _ in range(4):
    x = step(x)
    timer.count()
  per_step = timer.lap(x)
  assert per_step > 0.5 * one, (per_step, one)
  with timer.paused(x):  # excluded work
    time.sleep(0.3)
  x = step(x)
  timer.count()
  assert timer.lap(x) < 0.3


def test_first_interval_step_time_agrees_with_the_others(corpus, tmp_path):
  # steps of ~0.1 s, so that the other test worker's load moves each interval's time little
  cfg = tiny_config(str(tmp_path / "run"), *corpus, lengths=(128,), steps=24, batch_size=8)
  cfg.model.d_model, cfg.model.n_layers, cfg.model.d_ff = 128, 2, 256
  cfg.train.log_interval = 4
  cfg.logging.console = False
  res = run(cfg)
  hist = res["metrics_history"]
  times = [h["step_time"] for h in hist]
  assert len(times) == 6
  rest = statistics.median(times[1:])
  # the failures this guards against: the first interval counting dispatch only (x0.1) or the
  # compilation (x4.5); the window between them leaves room for a loaded machine's noise
  assert 0.3 * rest < times[0] < 3.0 * rest, times
  compile_s = [h.get("perf/compile_s") for h in hist]
  assert compile_s[0] > 0 and compile_s[1:] == [None] * 5
  assert res["length_summary"]["128"]["compile_s"] == compile_s[0]
  assert all(h["perf/tokens_per_s"] == pytest.approx(8 * 128 / h["step_time"]) for h in hist)

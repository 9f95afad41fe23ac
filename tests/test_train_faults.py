"""Bad input and faults of the trainer: damaged checkpoints, two trainers on one run directory,
evaluation of a run that is still training, divergence records, missing devices, Ctrl-C /
SIGTERM exit statuses, shape changes, ignored settings and the smaller one-line errors.

Real orbax checkpoints are damaged on disk; the lock, the live run and the signals are exercised
with real processes. (Full disks and read-only run directories: test_train_storage.py; signals
at every moment: test_train_signals.py.)"""

import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from bk_jax.train.config_validation import ConfigError
from bk_jax.entry import run as entry_run
from bk_jax.train.loop import run
from fault_helpers import REPO, config_file, error_lines, run_script, start_trainer, wait_for_step
from tiny_configs import tiny_config, write_pattern_corpus


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
  d = tmp_path_factory.mktemp("corpus")
  return str(write_pattern_corpus(str(d / "pattern.txt"))), str(d / "cache")


@pytest.fixture(scope="module")
def base_run(corpus, tmp_path_factory):
  """8 steps of one length, every step logged; periodic checkpoints 0, 4 and 8."""
  save = str(tmp_path_factory.mktemp("base") / "run")
  cfg = tiny_config(save, *corpus, steps=8)
  cfg.logging.console = False
  return cfg, run(cfg)


def _copy(base_run, tmp_path):
  cfg, res = base_run
  dst = str(tmp_path / "run")
  shutil.copytree(cfg.save_dir, dst)
  c = cfg.copy_and_resolve_references()
  c.save_dir = dst
  return c, res


def _largest_array_file(ckpt: str) -> str:
  return max(_array_files(ckpt), key=os.path.getsize)


def _array_files(ckpt: str) -> list[str]:
  return glob.glob(os.path.join(ckpt, "state", "**", "d", "*"), recursive=True)


def _damage(ckpt: str, how: str, every_file: bool = False) -> None:
  """Truncates / deletes the largest array file (or every one), or removes an item directory."""
  files = _array_files(ckpt) if every_file else [_largest_array_file(ckpt)]
  if how == "truncated":
    for f in files:
      with open(f, "r+b") as fh:
        fh.truncate(os.path.getsize(f) // 2)
  elif how == "deleted_file":
    for f in files:
      os.remove(f)
  else:  # a missing item directory: "data" or "meta"
    shutil.rmtree(os.path.join(ckpt, how.split("_")[1]))


# ------------------------------------------------------------------ damaged checkpoints
# ~30 s each on a loaded 2-core machine: two cases by default (array damage, item damage)
@pytest.mark.parametrize("how", ["truncated", pytest.param("deleted_file", marks=pytest.mark.slow),
                                 pytest.param("missing_data", marks=pytest.mark.slow), "missing_meta"])
def test_damaged_latest_checkpoint_is_moved_aside_and_resume_falls_back(base_run, tmp_path, capsys, how):
  cfg, ref = _copy(base_run, tmp_path)
  latest = os.path.join(cfg.save_dir, "checkpoints", "8")
  _damage(latest, how)
  files_before = sorted(os.path.relpath(p, latest) for p in glob.glob(latest + "/**", recursive=True))
  res = run(cfg)
  err = [l for l in capsys.readouterr().err.splitlines() if "damaged" in l]
  assert len(err) == 1, err
  assert f"checkpoint step 8 in {cfg.save_dir} is damaged" in err[0] and "falling back to step 4" in err[0]
  # nothing deleted: the damaged step sits under save_dir/damaged/ with every file it had
  moved = glob.glob(os.path.join(cfg.save_dir, "damaged", "8-*"))
  assert len(moved) == 1
  assert sorted(os.path.relpath(p, moved[0]) for p in glob.glob(moved[0] + "/**", recursive=True)) == files_before
  # resumed at step 4 and retrained 5..8: the same losses as the undamaged run
  assert res["status"] == {"32": "trained"}
  steps = [h["step"] for h in res["metrics_history"]]
  assert steps == list(range(1, 9))
  np.testing.assert_allclose([h["loss"] for h in res["metrics_history"]],
                             [h["loss"] for h in ref["metrics_history"]], rtol=0, atol=1e-6)
  assert os.path.isdir(latest)  # step 8 written again, intact


@pytest.mark.slow
def test_every_checkpoint_damaged_starts_from_scratch(base_run, tmp_path, capsys):
  cfg, ref = _copy(base_run, tmp_path)
  for s in (0, 4, 8):
    _damage(os.path.join(cfg.save_dir, "checkpoints", str(s)), "missing_meta")
  res = run(cfg)
  err = capsys.readouterr().err
  assert err.count("is damaged") == 3 and "starting from scratch" in err
  assert len(glob.glob(os.path.join(cfg.save_dir, "damaged", "*"))) == 3
  np.testing.assert_allclose([h["loss"] for h in res["metrics_history"]],
                             [h["loss"] for h in ref["metrics_history"]], rtol=0, atol=1e-6)


@pytest.mark.parametrize("how,what", [("truncated", "truncated"), ("deleted_file", "missing or")])
def test_eval_names_a_damaged_checkpoint(base_run, tmp_path, how, what):
  from bk_jax.eval.loading import EvalError, load_checkpoint

  cfg, _ = _copy(base_run, tmp_path)
  _damage(os.path.join(cfg.save_dir, "checkpoints", "8"), how, every_file=True)  # params included
  with pytest.raises(EvalError, match=f"checkpoints/8 is damaged: an array file is {what}") as e:
    load_checkpoint(cfg.save_dir, 8)
  assert "does not match its model" not in str(e.value) and "\n" not in str(e.value)
  assert load_checkpoint(cfg.save_dir, 4).name == os.path.join("checkpoints", "4")  # others load


# ------------------------------------------------------------------ live runs: eval and a second trainer
def test_latest_checkpoint_deleted_between_pick_and_load_is_picked_again(base_run, tmp_path, monkeypatch,
                                                                         capfd):
  """The keep-N retention of a live run removes the picked checkpoint right after the pick (the
  deletion is real, injected at the moment the race would hit): the next newest is loaded, and
  one line says so."""
  from bk_jax.eval import loading as eval_ckpt

  cfg, _ = _copy(base_run, tmp_path)
  real, deleted = eval_ckpt.read_meta, []

  def read_meta_racing(path):
    if not deleted:
      deleted.append(path)
      shutil.rmtree(path)
    return real(path)

  monkeypatch.setattr(eval_ckpt, "read_meta", read_meta_racing)
  ck = eval_ckpt.load_checkpoint(cfg.save_dir, None)
  assert deleted and not os.path.exists(deleted[0]) and ck.path != deleted[0]
  err = [l for l in capfd.readouterr().err.splitlines() if l.strip()]
  gone = os.path.relpath(deleted[0], cfg.save_dir)
  assert err == [f"checkpoint {gone} was replaced while loading (the run is training); using {ck.name}"]
  assert eval_ckpt.resolved_meta(cfg.save_dir)["config"]["model"]["d_model"] == 32


@pytest.mark.slow  # a live trainer subprocess plus repeated loads
def test_eval_of_a_live_run_reads_a_stable_checkpoint_and_says_so_in_one_line(corpus, tmp_path, capfd):
  """A trainer saving every step and keeping one checkpoint deletes them continuously; loading
  "latest" meanwhile always succeeds, and a load that lost the race prints one line (no orbax or
  asyncio tracebacks)."""
  from bk_jax.eval.loading import load_checkpoint

  cfg = tiny_config(str(tmp_path / "run"), *corpus, steps=100_000)
  cfg.checkpoint.every_steps, cfg.checkpoint.keep = 1, 1
  p = start_trainer(config_file(tmp_path, cfg))
  names, retries, lines = [], 0, []
  try:
    wait_for_step(p)
    capfd.readouterr()
    while len(names) < 60 and retries < 2:  # until the race was lost twice (a few in 60 loads)
      names.append(load_checkpoint(cfg.save_dir, None).name)
      err = [l for l in capfd.readouterr().err.splitlines() if l.strip()]
      lines += err
      retries += sum("was replaced while loading" in l for l in err)
  finally:
    p.send_signal(signal.SIGTERM)
    p.communicate(timeout=240)
  assert all(n.startswith("checkpoints") for n in names)
  assert retries >= 1, f"no load lost the race in {len(names)} loads"
  assert all(l.startswith("checkpoint checkpoints/") and "was replaced while loading (the run is "
                                                         "training); using checkpoints/" in l
             for l in lines), lines[:20]


def test_second_trainer_is_refused_then_ctrl_c_saves_and_exits_3(corpus, tmp_path):
  cfg = tiny_config(str(tmp_path / "run"), *corpus, steps=100_000)
  cfg.checkpoint.every_steps = 1_000_000
  cfg_file = config_file(tmp_path, cfg)
  first = start_trainer(cfg_file)
  try:
    wait_for_step(first)
    second = run_script(["--config", cfg_file])
    assert second.returncode == 4, second.stderr[-3000:]
    lines = error_lines(second.stderr)
    assert len(lines) == 1 and lines[0].startswith("train.py: error: run directory ") and \
        f"in use by another trainer (pid {first.pid} on" in lines[0], second.stderr[-3000:]
    assert len(glob.glob(os.path.join(cfg.save_dir, "events.out.tfevents.*"))) == 1  # untouched
    first.send_signal(signal.SIGINT)  # Ctrl-C
    out, err = first.communicate(timeout=240)
  finally:
    if first.poll() is None:
      first.kill()
  assert first.returncode == 3, err[-3000:]
  assert "KeyboardInterrupt" not in err and "Traceback" not in err
  saved = [l for l in out.splitlines() if l.startswith("SIGINT: checkpoint saved at step ")]
  assert len(saved) == 1, out[-2000:]
  step = int(saved[0].split("step ")[1].split(";")[0])
  assert os.path.isdir(os.path.join(cfg.save_dir, "checkpoints", str(step)))
  with open(os.path.join(cfg.save_dir, "long_context_results.json")) as f:
    assert json.load(f)["interrupted"]
  # the lock went with the process: a rerun resumes at the saved step
  from bk_jax.train.rundir import RunDirLock
  lock = RunDirLock(cfg.save_dir)
  lock.release()


@pytest.mark.slow  # the SIGINT test covers the same path by default
def test_sigterm_exits_3_and_lock_is_released_by_a_crash(corpus, tmp_path):
  cfg = tiny_config(str(tmp_path / "run"), *corpus, steps=100_000)
  cfg.checkpoint.every_steps = 1_000_000
  p = start_trainer(config_file(tmp_path, cfg))
  try:
    wait_for_step(p)
    p.send_signal(signal.SIGTERM)
    out, err = p.communicate(timeout=240)
  finally:
    if p.poll() is None:
      p.kill()
  assert p.returncode == 3, err[-3000:]
  assert "SIGTERM: checkpoint saved at step " in out
  # a holder killed with SIGKILL leaves the lock file but not the lock
  code = (f"import os, signal, sys; sys.path.insert(0, {REPO!r}); from bk_jax.train.rundir import "
          f"RunDirLock; l = RunDirLock({cfg.save_dir!r}); print('locked', flush=True); "
          f"os.kill(os.getpid(), signal.SIGKILL)")
  k = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
  assert k.returncode == -9 and "locked" in k.stdout
  from bk_jax.train.rundir import RunDirLock
  RunDirLock(cfg.save_dir).release()


# ------------------------------------------------------------------ divergence record
@pytest.fixture(scope="module")
def diverged_run(corpus, tmp_path_factory):
  """A divergence, shrunk: NaN gradients at steps 3-5, patience 2, one retry."""
  save = str(tmp_path_factory.mktemp("nf") / "run")
  cfg = tiny_config(save, *corpus, steps=20)
  cfg.checkpoint.every_steps = 5
  cfg.debug.nonfinite_grad_steps = (3, 4, 5)
  cfg.train.divergence_patience, cfg.train.max_recoveries = 2, 1
  cfg.data.data_limit = 600  # 4 steps per epoch: each attempt ends an epoch before giving up
  cfg.logging.console = False
  return cfg, run(cfg)


def test_diverged_length_keeps_every_attempt_and_true_counts(diverged_run):
  _, res = diverged_run
  assert res["status"] == {"32": "DIVERGED"}
  hist = res["metrics_history"]
  assert hist, "the diverged length's history was wiped"
  attempts = sorted({h["attempt"] for h in hist})
  assert attempts == [0, 1]
  for a in attempts:  # each attempt ran steps 1.. until the divergence was detected
    steps = [h["step"] for h in hist if h["attempt"] == a]
    assert steps == list(range(1, len(steps) + 1)) and len(steps) >= 4
  nan = sum(h["is_nan"] for h in hist)
  s = res["length_summary"]["32"]
  assert nan >= 4 and s["nan_steps"] == nan
  assert s["steps"] == len(hist)  # every step is logged (log_interval 1)
  assert s["attempts"] == 2 and s["abandoned_steps"] == len(hist)
  assert [e["attempt"] for e in res["results_by_length"]["32"]] == [0, 1]
  g = res["gradient_statistics"]["32"]
  finite = [h["gradient_norm"] for h in hist if not (h["is_nan"] or h["is_inf"])]
  assert g["mean"] == pytest.approx(np.mean(finite), rel=1e-4)
  assert g["min"] <= g["mean"] <= g["max"] and g["mean"] > 0


def test_eval_of_a_diverged_length_is_refused_per_length_and_flagged(diverged_run, tmp_path):
  from bk_jax.eval.degradation import evaluate_per_length, format_per_length
  from bk_jax.eval.streaming import run_streaming_eval

  cfg, _ = diverged_run
  c = cfg.copy_and_resolve_references()
  c.eval.eval_tokens, c.eval.chunk_size, c.eval.split = 256, 64, "valid"
  rows = evaluate_per_length(c, progress=False, log=None)
  assert [(r["train_len"], r["status"], r["loss"]) for r in rows] == [(32, "DIVERGED", None)]
  assert "DIVERGED (not evaluated)" in format_per_length(rows)
  c.logging.progress_bar = False
  out = run_streaming_eval(c, "checkpoint_final", config_is_explicit=False,
                           output=str(tmp_path / "eval.json"))
  assert out["diverged_lengths"] == [32] and "DIVERGED at N=32" in out["warning"]
  with open(tmp_path / "eval.json") as f:
    assert json.load(f)["warning"] == out["warning"]


def test_generate_from_a_diverged_run_warns_in_one_line(diverged_run):
  from bk_jax.eval.generate import generate_text

  cfg, _ = diverged_run
  out = generate_text(cfg.save_dir, "alpha", max_new_tokens=4, checkpoint="checkpoint_final")
  assert out["warning"].startswith("training DIVERGED at N=32 in this run: checkpoint_final holds "
                                   "the weights restored from before the divergence")
  p = run_script(["--checkpoint_dir", cfg.save_dir, "--checkpoint", "checkpoint_final", "--prompt",
                  "alpha", "--max_new_tokens", "4"], script=os.path.join(REPO, "scripts", "generate.py"))
  assert p.returncode == 0, p.stderr[-3000:]
  warnings = [l for l in error_lines(p.stderr) if "warning" in l]
  assert warnings == [f"generate.py: warning: {out['warning']}"], p.stderr[-3000:]


# ------------------------------------------------------------------ one-line errors in scripts
@pytest.mark.parametrize("device", ["gpu", "tpu"])
def test_missing_device_is_one_line_and_exit_2(corpus, tmp_path, device):
  import jax
  if jax.default_backend() != "cpu":
    pytest.skip("needs a machine without accelerators")
  cfg = tiny_config(str(tmp_path / "run"), *corpus)
  p = run_script(["--config", config_file(tmp_path, cfg), f"--config.device={device}"])
  assert p.returncode == 2, p.stderr[-3000:]
  lines = error_lines(p.stderr)
  assert len(lines) == 1 and lines[0].startswith(f"train.py: error: device='{device}' requested but "
                                                 f"this machine has no usable"), p.stderr[-3000:]


def test_shape_change_on_existing_run_is_one_line(base_run, tmp_path):
  cfg, _ = _copy(base_run, tmp_path)
  events = sorted(glob.glob(os.path.join(cfg.save_dir, "events.out.tfevents.*")))
  cfg.model.d_model, cfg.model.d_ff = 48, 96
  with pytest.raises(ConfigError, match=r"holds a run of another model: model.d_model=48 "
                                        r"\(checkpoint 32\); model.d_ff=96 \(checkpoint 64\)"):
    run(cfg)
  p = run_script(["--config", config_file(tmp_path, cfg)])
  assert p.returncode == 2
  lines = error_lines(p.stderr)
  assert len(lines) == 1 and "model.d_model=48 (checkpoint 32)" in lines[0], p.stderr[-3000:]
  assert "Event loop is closed" not in p.stderr and "Traceback" not in p.stderr
  assert not glob.glob(os.path.join(cfg.save_dir, "damaged", "*"))  # a mismatch is not damage
  # the refused runs left no (empty) event file behind
  assert sorted(glob.glob(os.path.join(cfg.save_dir, "events.out.tfevents.*"))) == events
  from bk_jax.train.rundir import RunDirLock
  RunDirLock(cfg.save_dir).release()  # the in-process run released its lock after the error


# ------------------------------------------------------------------ settings and smaller ones
def test_ignored_settings_are_errors(corpus):
  from bk_jax.train.cli import reference_config
  from bk_jax.train.config_validation import validate_config

  cfg = tiny_config("unused", *corpus)
  cfg.data.dataset = "pystdlib"
  with pytest.raises(ConfigError, match="data.path=.* is ignored by data.dataset='pystdlib'"):
    validate_config(cfg)
  with pytest.raises(ConfigError, match="--sequence_lengths 128 256 needs --multi_length"):
    reference_config(["--sequence_lengths", "128", "256"])
  c = reference_config(["--sequence_lengths", "128", "256", "--multi_length"])
  assert c.train.multi_length and tuple(c.train.sequence_lengths) == (128, 256)


def test_eval_only_without_checkpoint_names_the_scripts_flag(corpus, tmp_path):
  cfg = tiny_config(str(tmp_path / "empty"), *corpus)
  cfg.eval.eval_only = True
  for streaming in (True, False):
    cfg.eval.streaming = streaming
    with pytest.raises(ConfigError, match="--save_dir DIR to train_long_context.py") as e:
      entry_run(cfg)
    assert "--checkpoint_dir" not in str(e.value)


def test_banner_names_the_dataset(base_run, tmp_path, capsys):
  cfg, _ = _copy(base_run, tmp_path)
  cfg.logging.console = True
  run(cfg)
  banner = [l for l in capsys.readouterr().out.splitlines() if l.startswith("bk-jax training")]
  assert len(banner) == 1 and "| data text |" in banner[0]


def test_help_prints_usage():
  p = run_script(["--help"])
  assert p.returncode == 0 and p.stdout.startswith("usage: train.py --config FILE")
  assert "Exit status" in p.stdout and not p.stderr


def test_config_syntax_error_points_at_file_and_line(tmp_path):
  bad = tmp_path / "bad.py"
  bad.write_text("def get_config():\n  c = dict(\n  return c +\n")
  p = run_script(["--config", str(bad)])
  assert p.returncode == 2
  lines = error_lines(p.stderr)
  assert len(lines) == 1 and lines[0].startswith(f"train.py: error: config file {bad}, line "), p.stderr
  raises = tmp_path / "raises.py"
  raises.write_text("def get_config():\n  x = 1\n  return undefined_name\n")
  from bk_jax.train.cli import load_config
  with pytest.raises(ConfigError, match=f"config file {raises}, line 3: get_config.. failed: NameError"):
    load_config(str(raises))


@pytest.mark.slow  # two runs plus 6 s of deliberate sleep
def test_epoch_time_after_resume_counts_the_whole_epoch(corpus, tmp_path):
  """Steps 1-4 take >= 6 s (a sleeping hook); the process dies at step 6 after the step-4
  checkpoint; the resumed epoch_time must include those 6 s, i.e. exceed the resumed run."""
  cfg = tiny_config(str(tmp_path / "run"), *corpus, steps=8)
  cfg.logging.console = False

  class Crash(Exception):
    pass

  def hook(step):
    if step <= 4:
      time.sleep(1.5)
    if step == 6:
      raise Crash()

  with pytest.raises(Crash):
    run(cfg, on_step=hook)
  t0 = time.perf_counter()
  res = run(cfg)
  wall = time.perf_counter() - t0
  (ep,) = res["results_by_length"]["32"]
  assert ep["epoch_time"] > wall + 5.0, (ep["epoch_time"], wall)


def test_no_full_batch_says_what_it_has_and_needs(corpus, tmp_path):
  from bk_jax.train.loop import prepare

  cfg = tiny_config(str(tmp_path / "run"), corpus[0], str(tmp_path / "cache"))
  cfg.data.data_limit = 100  # the limit cut the split: raising it helps
  with pytest.raises(ConfigError, match=r"no full batch: it has \d+ tokens, batch 4 x length 32 x 1 "
                                        r"process\(es\) needs at least 129 \(raise data.data_limit"):
    prepare(cfg)
  short = tmp_path / "short.txt"  # a file shorter than one batch: the limit is not the cause
  short.write_text("alpha beta gamma.\n" * 5)
  for limit in (0, 1_000_000):
    cfg = tiny_config(str(tmp_path / "run"), str(short), str(tmp_path / "cache"))
    cfg.data.data_limit = limit
    with pytest.raises(ConfigError, match=r"needs at least 129 \(use a larger corpus, or a smaller") as e:
      prepare(cfg)
    assert "data_limit" not in str(e.value)


def test_mesh_that_does_not_divide_the_devices_reports_the_real_product():
  import ml_collections

  from bk_jax.sharding import MeshError, mesh_shape

  m = ml_collections.ConfigDict(dict(data=-1, fsdp=2, tensor=1, sequence=1))
  with pytest.raises(MeshError, match=r"fsdp=2 tensor=1 sequence=1 \(product 2\) does not divide "
                                      r"the number of devices, 1"):
    mesh_shape(m, 1)


def test_save_dir_that_is_a_file(corpus, tmp_path):
  f = tmp_path / "afile"
  f.write_text("x")
  for save in (str(f), str(f / "sub")):
    cfg = tiny_config(save, *corpus)
    with pytest.raises(ConfigError, match="is not a directory|is a file, not a directory"):
      run(cfg)

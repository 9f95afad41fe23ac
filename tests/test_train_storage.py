"""A storage that refuses writes: a full disk while a checkpoint, TensorBoard events, the results
file or the token cache are written, and a read-only run directory. Each ends in one line and
exit status 5, keeps the last intact checkpoint, and a rerun after the fix resumes with the
losses of an undisturbed run.

The disk is a real tmpfs (filled by tests/fill_disk.py right before the trainer's own write)
where this machine can mount one; the in-process tests inject the same OSError at the write
call everywhere."""

import errno
import glob
import json
import os

import numpy as np
import pytest

from bk_jax.runtime import faults
from bk_jax.runtime.errors import EXIT_STORAGE, StorageError
from bk_jax.train.loop import run
from fault_helpers import FILL_DISK, TRAIN, config_file, error_lines, run_script, tmpfs  # noqa: F401
from tiny_configs import tiny_config, write_pattern_corpus

STEPS = 20


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
  d = tmp_path_factory.mktemp("corpus")
  return str(write_pattern_corpus(str(d / "pattern.txt"))), str(d / "cache")


def _config(save_dir, corpus, **kw):
  cfg = tiny_config(save_dir, *corpus, steps=STEPS)
  cfg.checkpoint.every_steps = 5
  cfg.logging.console = False
  for k, v in kw.items():
    section, field = k.split("__")
    cfg[section][field] = v
  return cfg


@pytest.fixture(scope="module")
def reference(corpus, tmp_path_factory):
  """Losses of the undisturbed run, steps 1..STEPS."""
  res = run(_config(str(tmp_path_factory.mktemp("ref") / "run"), corpus))
  return [h["loss"] for h in res["metrics_history"]]


def _losses(res) -> list[float]:
  assert [h["step"] for h in res["metrics_history"]] == list(range(1, STEPS + 1))
  return [h["loss"] for h in res["metrics_history"]]


# ------------------------------------------------------------------ the classification
def test_storage_causes_are_read_from_oserrors_and_tensorstore_messages():
  assert faults.storage_cause(OSError(errno.ENOSPC, "No space left on device")) == "no space left on device"
  assert faults.storage_cause(OSError(errno.EROFS, "Read-only file system")) == "read-only file system"
  ts = ValueError("RESOURCE_EXHAUSTED: Error writing local file \"/r/checkpoints/20.orbax-checkpoint-"
                  "tmp/x\": Failed to write 26100 bytes to file 16: No space left on device "
                  "[os_error_code='28']")
  try:
    raise RuntimeError("save failed") from ts
  except RuntimeError as e:
    assert faults.storage_cause(e) == "no space left on device"
  assert faults.storage_cause(ValueError("NOT_FOUND: no such checkpoint")) is None
  with pytest.raises(StorageError, match=r"^read-only file system writing the results file \(/r/x\)$"):
    with faults.writing("the results file", "/r/x", 100):
      raise OSError(errno.EROFS, "Read-only file system")
  with pytest.raises(KeyError):  # anything else passes unchanged
    with faults.writing("the results file", "/r/x"):
      raise KeyError("x")


# ------------------------------------------------------------------ injected at the write call
@pytest.mark.parametrize("what", [pytest.param("events", marks=pytest.mark.slow), "results"])
def test_injected_full_disk_is_one_line_and_a_rerun_resumes(corpus, tmp_path, monkeypatch, reference, what):
  """Everywhere: OSError(ENOSPC) from the write call of the event file (from step 7 on) or of
  the results file."""
  from tensorboardX import record_writer

  from bk_jax.runtime import jsonio

  cfg = _config(str(tmp_path / "run"), corpus, logging__tensorboard=what == "events")
  full = []

  def refuse(real):
    def write(self, data):
      if full:
        raise OSError(errno.ENOSPC, "No space left on device")
      return real(self, data)
    return write

  if what == "events":
    monkeypatch.setattr(record_writer.RecordWriter, "write", refuse(record_writer.RecordWriter.write))
  else:
    full.append(True)

    class FullFile:  # a real file whose writes the disk refuses
      def __init__(self, path, mode):
        self.f = open(path, mode)
      write = refuse(lambda self, data: self.f.write(data))
      def __enter__(self):
        return self
      def __exit__(self, *exc):
        self.f.close()

    monkeypatch.setattr(jsonio, "open", FullFile, raising=False)
  with pytest.raises(StorageError) as e:
    run(cfg, on_step=lambda step: step == 7 and full.append(True))
  msg = str(e.value)
  assert "\n" not in msg and msg.startswith("no space left on device writing ")
  if what == "events":
    assert "TensorBoard events" in msg and msg.endswith(
        "the run directory keeps checkpoint step 5: free space and rerun to resume")
  else:
    assert "the results file" in msg and "training finished and checkpoint_final is saved" in msg
    assert not glob.glob(os.path.join(cfg.save_dir, "*.tmp"))  # no partial file left
  monkeypatch.undo()
  np.testing.assert_allclose(_losses(run(cfg)), reference, rtol=0, atol=1e-6)


def test_injected_full_disk_in_the_token_cache_leaves_nothing(corpus, tmp_path, monkeypatch):
  from bk_jax.data import cache, load_corpus

  cfg = _config(str(tmp_path / "run"), (corpus[0], str(tmp_path / "cache")))
  monkeypatch.setattr(cache.TokenWriter, "write", lambda *a: (_ for _ in ()).throw(
      OSError(errno.ENOSPC, "No space left on device")))
  with pytest.raises(StorageError, match=r"^no space left on device writing the token cache \(.*\): "
                                         r".* free, about .* needed; free space, or set "
                                         r"data.cache_dir \(or BK_JAX_CACHE\)"):
    load_corpus(cfg.data)
  assert not os.path.exists(tmp_path / "cache")  # created for the build, removed again


# ------------------------------------------------------------------ a real full disk (tmpfs)
def _fill_and_train(tmpfs, cfg, tmp_path, when: str, nth: int):
  return run_script([tmpfs.filler, when, str(nth), TRAIN, "--config", config_file(tmp_path, cfg)],
                    script=FILL_DISK)


@pytest.mark.slow
def test_full_disk_during_a_checkpoint_save(tmpfs, corpus, tmp_path, reference):
  """The disk fills right before the 3rd periodic save (step 10); saves are asynchronous, so the
  step whose save meets the full disk is named (5 or 10), and the one before it is kept."""
  cfg = _config(os.path.join(tmpfs.path, "run"), corpus, logging__tensorboard=False)
  p = _fill_and_train(tmpfs, cfg, tmp_path, "checkpoint", 3)
  assert p.returncode == EXIT_STORAGE, p.stderr[-3000:]
  lines = error_lines(p.stderr)
  assert len(lines) == 1, p.stderr[-5000:]
  line = lines[0]
  assert line.startswith("train.py: error: no space left on device writing checkpoint step "), line
  failed = int(line.split("checkpoint step ")[1].split()[0])
  assert f"the run directory keeps checkpoint step {failed - 5}: free space and rerun to resume" in line
  assert " free, about " in line and " needed" in line
  ckpts = os.path.join(cfg.save_dir, "checkpoints")
  assert sorted(os.listdir(ckpts)) == [str(s) for s in range(0, failed, 5)]  # no partial save
  with open(os.path.join(cfg.save_dir, "long_context_results.json")) as f:
    res = json.load(f)
  assert res["interrupted"] and res["stopped_by"].startswith("no space left on device")
  tmpfs.free()
  np.testing.assert_allclose(_losses(run(cfg)), reference, rtol=0, atol=1e-6)


@pytest.mark.slow
def test_full_disk_while_writing_tensorboard_events(tmpfs, corpus, tmp_path, reference):
  cfg = _config(os.path.join(tmpfs.path, "run"), corpus)
  cfg.checkpoint.every_steps = 1_000_000  # only the length-start checkpoint (step 0)
  p = _fill_and_train(tmpfs, cfg, tmp_path, "events", 7)
  assert p.returncode == EXIT_STORAGE, p.stderr[-3000:]
  lines = error_lines(p.stderr)
  assert len(lines) == 1 and lines[0].startswith(
      "train.py: error: no space left on device writing TensorBoard events ("), p.stderr[-5000:]
  assert lines[0].endswith("the run directory keeps checkpoint step 0: free space and rerun to resume")
  tmpfs.free()
  np.testing.assert_allclose(_losses(run(cfg)), reference, rtol=0, atol=1e-6)


@pytest.mark.slow
def test_full_disk_while_writing_the_results_file(tmpfs, corpus, tmp_path, reference):
  cfg = _config(os.path.join(tmpfs.path, "run"), corpus)
  p = _fill_and_train(tmpfs, cfg, tmp_path, "results", 1)
  assert p.returncode == EXIT_STORAGE, p.stderr[-3000:]
  lines = error_lines(p.stderr)
  assert len(lines) == 1 and lines[0].startswith(
      "train.py: error: no space left on device writing the results file ("), p.stderr[-5000:]
  assert lines[0].endswith("training finished and checkpoint_final is saved: free space and rerun "
                           "to write the results")
  assert not os.path.exists(os.path.join(cfg.save_dir, "long_context_results.json"))
  assert not glob.glob(os.path.join(cfg.save_dir, "*.tmp"))
  tmpfs.free()
  res = run(cfg)  # resumes at the end: nothing to train, the results are written
  assert res["status"] == {"32": "trained"} and not res["interrupted"]
  np.testing.assert_allclose(_losses(res), reference, rtol=0, atol=1e-6)


@pytest.mark.slow
def test_full_disk_while_building_the_token_cache(tmpfs, corpus, tmp_path, reference):
  cfg = _config(str(tmp_path / "run"), (corpus[0], os.path.join(tmpfs.path, "cache")))
  with open(tmpfs.filler, "wb") as f:  # leave ~20 KB: the corpus's tokens need ~120 KB
    f.write(b"\0" * (64 * 2**20 - 20_000))
  p = run_script(["--config", config_file(tmp_path, cfg)])
  assert p.returncode == EXIT_STORAGE, p.stderr[-3000:]
  lines = error_lines(p.stderr)
  assert len(lines) == 1 and lines[0].startswith(
      "train.py: error: no space left on device writing the token cache ("), p.stderr[-5000:]
  assert "free space, or set data.cache_dir (or BK_JAX_CACHE) to a folder on another disk" in lines[0]
  assert os.listdir(tmpfs.path) == ["filler"]  # no half-built entry
  assert not os.path.exists(cfg.save_dir)  # refused before the run directory was made
  tmpfs.free()
  np.testing.assert_allclose(_losses(run(cfg)), reference, rtol=0, atol=1e-6)


@pytest.mark.slow
def test_read_only_run_directory_is_one_line_before_anything_is_built(tmpfs, corpus, tmp_path, reference):
  cfg = _config(os.path.join(tmpfs.path, "run"), corpus)

  class Crash(Exception):
    pass

  def crash(step):
    if step == 7:
      raise Crash()

  with pytest.raises(Crash):  # periodic checkpoint 5 is on disk
    run(cfg, on_step=crash)
  tmpfs.read_only(True)
  p = run_script(["--config", config_file(tmp_path, cfg)])
  assert p.returncode == EXIT_STORAGE, p.stderr[-3000:]
  lines = error_lines(p.stderr)
  assert len(lines) == 1 and lines[0] == (
      f"train.py: error: save_dir {cfg.save_dir} is not writable: read-only file system "
      f"({cfg.save_dir}); choose another --config.save_dir or make it writable"), p.stderr[-3000:]
  assert "bk-jax training" not in p.stdout  # nothing was built
  from bk_jax.train.rundir import RunDirLock
  with pytest.raises(StorageError, match="is not writable: read-only file system"):
    RunDirLock(cfg.save_dir)  # (its __del__ has nothing to release: no AttributeError)
  tmpfs.read_only(False)
  np.testing.assert_allclose(_losses(run(cfg)), reference, rtol=0, atol=1e-6)

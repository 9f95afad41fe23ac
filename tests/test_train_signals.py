"""SIGTERM and SIGINT sent to a real scripts/train.py process at several moments: during the
imports (where no trainer exists yet), right after the banner, while the first step compiles and
while training. Each ends with exit status 3 and one line; what there was to save is saved, and a
rerun resumes with the losses of an undisturbed run."""

import os
import signal

import numpy as np
import pytest

from bk_jax.runtime.errors import EXIT_INTERRUPTED
from bk_jax.train.loop import run
from fault_helpers import config_file, error_lines, read_until, start_trainer
from tiny_configs import tiny_config, write_pattern_corpus

STEPS = 12


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
  d = tmp_path_factory.mktemp("corpus")
  return str(write_pattern_corpus(str(d / "pattern.txt"))), str(d / "cache")


def _config(save_dir, corpus):
  cfg = tiny_config(save_dir, *corpus, steps=STEPS)
  cfg.checkpoint.every_steps = 1_000_000  # the length-start checkpoint and the one a stop saves
  return cfg


@pytest.fixture(scope="module")
def reference(corpus, tmp_path_factory):
  cfg = _config(str(tmp_path_factory.mktemp("ref") / "run"), corpus)
  cfg.logging.console = False
  return [h["loss"] for h in run(cfg)["metrics_history"]]


def _signal_at(p, moment: str, sig) -> None:
  """Sends `sig` to the trainer `p` at `moment`."""
  if moment == "imports":  # -X importtime: the first heavy import is done, jax is not yet
    read_until(p.stderr, lambda l: l.split("|")[-1].strip() == "ml_collections", p)
  else:
    first = {"banner": "bk-jax training", "compile": "Epoch 1 | Sequence Length", "training": "Step "}
    read_until(p.stdout, lambda l: l.startswith(first[moment]), p)
  p.send_signal(sig)


def _resumes_identically(cfg, reference) -> None:
  cfg.logging.console = False
  res = run(cfg)
  assert [h["step"] for h in res["metrics_history"]] == list(range(1, STEPS + 1))
  np.testing.assert_allclose([h["loss"] for h in res["metrics_history"]], reference,
                             rtol=0, atol=1e-6)


@pytest.mark.parametrize("moment,sig", [
    ("imports", signal.SIGTERM), ("imports", signal.SIGINT),
    pytest.param("banner", signal.SIGTERM, marks=pytest.mark.slow),
    pytest.param("compile", signal.SIGTERM, marks=pytest.mark.slow),
    pytest.param("training", signal.SIGTERM, marks=pytest.mark.slow)])
def test_a_signal_at_any_moment_is_one_line_and_exit_3(corpus, tmp_path, reference, moment, sig):
  cfg = _config(str(tmp_path / "run"), corpus)
  p = start_trainer(config_file(tmp_path, cfg), python_flags=("-X", "importtime") if moment == "imports" else ())
  try:
    _signal_at(p, moment, sig)
    out, err = p.communicate(timeout=300)
  finally:
    if p.poll() is None:
      p.kill()
  name = signal.Signals(sig).name
  assert p.returncode == EXIT_INTERRUPTED, err[-3000:]
  assert "Traceback" not in err and "Traceback" not in out
  told = error_lines(err) + [l for l in out.splitlines() if l.startswith(f"{name}:")]
  assert len(told) == 1, (out[-3000:], err[-3000:])
  early = f"train.py: interrupted by {name} before the first training step; nothing new to save; " \
          f"rerun to continue"
  if moment == "imports":
    assert told == [early] and out == ""
  elif moment == "banner":  # either just before the trainer's handler took over, or just after
    assert told[0].startswith(f"train.py: interrupted by {name} before the first training step") or \
        told[0].startswith(f"{name}: stopped at step 0") or \
        told[0].startswith(f"{name}: checkpoint saved at step "), told
  else:  # the step being compiled or run finishes, then a checkpoint of it is saved
    assert told[0].startswith(f"{name}: checkpoint saved at step ") and \
        told[0].endswith("; rerun to resume"), told
    step = int(told[0].split("step ")[1].split(";")[0])
    assert step >= 1 and os.path.isdir(os.path.join(cfg.save_dir, "checkpoints", str(step)))
  _resumes_identically(cfg, reference)

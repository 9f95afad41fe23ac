"""Shared by the fault tests: config files for the scripts, real trainer subprocesses, their
one-line errors, and small file systems (tmpfs) that fill up or turn read-only."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
import time

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN = os.path.join(REPO, "scripts", "train.py")
FILL_DISK = os.path.join(REPO, "tests", "fill_disk.py")


def config_file(tmp_path, cfg, name: str = "cfg.py") -> str:
  """A config file for the scripts that returns exactly `cfg`."""
  path = tmp_path / name
  path.write_text(textwrap.dedent(f"""
      import json
      import ml_collections
      def get_config():
        return ml_collections.ConfigDict(json.loads({cfg.to_json()!r}))
  """))
  return str(path)


def error_lines(stderr: str) -> list[str]:
  """stderr without absl/XLA log noise (lines 'W0000 ...', 'I0000 ...') and -X importtime lines."""
  return [l for l in stderr.splitlines()
          if l.strip() and not re.match(r"[WI]\d{4} ", l) and not l.startswith("import time:")]


def run_script(args, *, script: str = TRAIN, timeout: int = 600, **kw) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, script, *args], capture_output=True, text=True,
                        timeout=timeout, **kw)


def start_trainer(cfg_file: str, extra=(), *, python_flags=()) -> subprocess.Popen:
  return subprocess.Popen([sys.executable, "-u", *python_flags, TRAIN, "--config", cfg_file, *extra],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def read_until(stream, pred, p: subprocess.Popen, timeout: float = 300) -> list[str]:
  """Lines of `stream` up to and including the first one for which pred(line) holds."""
  lines, t0 = [], time.time()
  while time.time() - t0 < timeout:
    line = stream.readline()
    if not line:
      break
    lines.append(line)
    if pred(line):
      return lines
  p.kill()
  raise AssertionError("the line never came: " + "".join(lines[-50:]) + p.stderr.read()[-3000:])


def wait_for_step(p: subprocess.Popen, timeout: float = 300) -> list[str]:
  """Reads the trainer's stdout until it has logged a training step."""
  return read_until(p.stdout, lambda l: l.startswith("Step "), p, timeout)


class Tmpfs:
  """A tmpfs of `size` mounted at `path` (root only); `fill` / `free` / `read_only`."""

  def __init__(self, path: str, size: str):
    self.path = path
    os.makedirs(path, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", path],
                       capture_output=True, text=True)
    self.mounted = r.returncode == 0
    self.filler = os.path.join(path, "filler")

  def free(self) -> None:
    if os.path.exists(self.filler):
      os.remove(self.filler)

  def read_only(self, ro: bool) -> None:
    subprocess.run(["mount", "-o", f"remount,{'ro' if ro else 'rw'}", self.path], check=True)

  def unmount(self) -> None:
    subprocess.run(["umount", "-l", self.path], capture_output=True)


@pytest.fixture
def tmpfs(tmp_path):
  """A 64 MB tmpfs: a disk that can really fill up and turn read-only. Skipped where this
  machine cannot mount one (not root); the in-process tests inject the same errors there."""
  if os.geteuid() != 0:
    pytest.skip("mounting a tmpfs needs root")
  fs = Tmpfs(str(tmp_path / "disk"), "64m")
  if not fs.mounted:
    pytest.skip("this machine cannot mount a tmpfs")
  yield fs
  fs.unmount()

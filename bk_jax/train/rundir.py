"""The run directory: its exclusive trainer lock, the exit statuses of the training scripts,
and the checks on `save_dir` itself.

Exit statuses of scripts/train.py and scripts/train_long_context.py (docs/guides/faults.md):

  0  finished (every planned length trained or marked DIVERGED)
  2  bad input: config, data or checkpoint mismatch (one line `<prog>: error: ...`)
  3  interrupted by SIGTERM or SIGINT (Ctrl-C): a checkpoint was saved; rerun to resume
  4  the run directory is in use by another trainer (its lock is held)

The lock is `save_dir/trainer.lock`, an advisory `fcntl.flock` taken by process 0 for the whole
run. The operating system drops it when the process exits in any way (crash, SIGKILL included),
so a stale lock file never blocks a rerun; the file itself is left in place (removing it would
race with a trainer that has just opened it).
"""

from __future__ import annotations

import datetime
import fcntl
import os
import socket

from bk_jax.train.config_validation import ConfigError

EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 3
EXIT_BUSY = 4

LOCK_NAME = "trainer.lock"


class RunDirBusy(RuntimeError):
  """Another trainer holds the run directory's lock; scripts exit with EXIT_BUSY."""


def check_save_dir(save_dir: str) -> str:
  """Absolute save_dir; ConfigError (one line) when it exists and is not a directory."""
  path = os.path.abspath(save_dir)
  if os.path.exists(path) and not os.path.isdir(path):
    raise ConfigError(f"save_dir {path} exists and is not a directory; choose another "
                      f"--config.save_dir")
  parent = os.path.dirname(path)
  while parent and not os.path.exists(parent):
    parent = os.path.dirname(parent)
  if parent and not os.path.isdir(parent):
    raise ConfigError(f"save_dir {path}: {parent} is a file, not a directory")
  return path


class RunDirLock:
  """Exclusive, non-blocking flock on save_dir/trainer.lock.

  Args:
    save_dir: the run directory (created if missing).

  Raises:
    RunDirBusy: another process holds the lock; the message names its pid, host and start time.
  """

  def __init__(self, save_dir: str):
    self.path = os.path.join(check_save_dir(save_dir), LOCK_NAME)
    os.makedirs(os.path.dirname(self.path), exist_ok=True)
    self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
      fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      holder = self._read_holder()
      os.close(self._fd)
      self._fd = None
      raise RunDirBusy(f"run directory {os.path.dirname(self.path)} is in use by another trainer"
                       f"{' (' + holder + ')' if holder else ''}; wait for it to finish or use "
                       f"another save_dir") from None
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    os.ftruncate(self._fd, 0)
    os.pwrite(self._fd, f"pid {os.getpid()} on {socket.gethostname()} since {now}\n".encode(), 0)

  def _read_holder(self) -> str:
    try:
      return os.pread(self._fd, 200, 0).decode(errors="replace").strip()
    except OSError:
      return ""

  @property
  def held(self) -> bool:
    return self._fd is not None

  def release(self) -> None:
    """Unlocks (idempotent). Closing the descriptor drops the flock."""
    if self._fd is not None:
      fd, self._fd = self._fd, None
      os.close(fd)

  def __del__(self):  # a Trainer that failed half-built must not keep the directory locked
    self.release()

"""The run directory: its exclusive trainer lock, the checks on `save_dir` itself, and what it
keeps when a fault stops the run (`stopped_by`).

The exit statuses of the training scripts are listed in bk_jax.runtime.errors (and, with what
to do about each, in docs/guides/faults.md).

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

from bk_jax.runtime.errors import RunDirBusy, StorageError
from bk_jax.runtime.faults import check_writable, describe, storage_cause
from bk_jax.runtime.interrupts import Interrupted
from bk_jax.train.config_validation import ConfigError

LOCK_NAME = "trainer.lock"


def check_save_dir(save_dir: str) -> str:
  """Absolute save_dir, checked before anything is built.

  Raises:
    ConfigError: it (or a parent) exists and is not a directory.
    StorageError: nothing can be written there (read-only file system, no permission).
  """
  path = os.path.abspath(save_dir)
  if os.path.exists(path) and not os.path.isdir(path):
    raise ConfigError(f"save_dir {path} exists and is not a directory; choose another "
                      f"--config.save_dir")
  parent = os.path.dirname(path)
  while parent and not os.path.exists(parent):
    parent = os.path.dirname(parent)
  if parent and not os.path.isdir(parent):
    raise ConfigError(f"save_dir {path}: {parent} is a file, not a directory")
  try:
    check_writable(path)
  except StorageError as e:
    raise StorageError(f"save_dir {e}; choose another --config.save_dir or make it writable") from None
  return path


class RunDirLock:
  """Exclusive, non-blocking flock on save_dir/trainer.lock.

  Args:
    save_dir: the run directory (created if missing).

  Raises:
    RunDirBusy: another process holds the lock; the message names its pid, host and start time.
    StorageError: the lock file cannot be created (read-only file system, no permission).
  """

  def __init__(self, save_dir: str):
    self._fd = None
    self.path = os.path.join(check_save_dir(save_dir), LOCK_NAME)
    try:
      os.makedirs(os.path.dirname(self.path), exist_ok=True)
      self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
      cause = storage_cause(e)
      if cause is None:
        raise
      raise StorageError(f"save_dir {os.path.dirname(self.path)} is not writable: {cause} "
                         f"({self.path}); choose another --config.save_dir or make it "
                         f"writable") from None
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


def stopped_by(e: BaseException, *, save_dir: str, kept: list[int], step: int,
               stop_requested: bool, finished: bool) -> BaseException | None:
  """The one-line error that ends a run at fault `e`, saying what the run directory keeps.

  Args:
    e: what stopped the run.
    save_dir: the run directory.
    kept: its committed periodic checkpoint steps.
    step: the step the run had reached.
    stop_requested: a SIGTERM/SIGINT was being acted on (so an `Interrupted` is the second one).
    finished: every length was trained (only the final writes remained).

  Returns:
    `Interrupted` or `StorageError` with the line, or None when `e` is not a signal or a
    refused write.
  """
  keeps = f"the run directory keeps checkpoint step {kept[-1]}" if kept else "no checkpoint was written yet"
  if isinstance(e, Interrupted):
    when = ("again while stopping" if stop_requested  # a second Ctrl-C
            else "before the first training step")  # before the trainer's handler took over
    return Interrupted(e.signal_name, f"interrupted by {e.signal_name} {when} at step {step}; "
                                      f"{keeps}; rerun to resume")
  cause = storage_cause(e)
  if cause is None:
    return None
  write = e.write if isinstance(e, StorageError) and e.write else (cause, "the run directory",
                                                                   save_dir, None)
  fix = "free space" if "no space" in cause or "quota" in cause else "make the run directory writable"
  todo = (f"training finished and checkpoint_final is saved: {fix} and rerun to write the results"
          if finished else f"{keeps}: {fix} and rerun to resume")
  return StorageError(f"{describe(*write)}; {todo}")  # described now: the free space is current

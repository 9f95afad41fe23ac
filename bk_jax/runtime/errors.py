"""Errors whose message is one line, the exit statuses the scripts turn them into, and
`one_line_errors`, the scripts' guard that does it.

Exit statuses of the training scripts (docs/guides/faults.md lists them with what to do):

  0  finished: every planned length trained or marked DIVERGED
  2  bad input: config, data or checkpoint mismatch (`ConfigError`, `bk_jax.data.DataError`)
  3  interrupted by SIGTERM or SIGINT (`bk_jax.runtime.interrupts`): what there was to save is
     saved; rerun to resume
  4  the run directory is in use by another trainer (`RunDirBusy`: its lock is held)
  5  the storage refused a write (`StorageError`: disk full, quota, read-only file system, no
     permission); the run directory keeps its last intact checkpoint; fix it and rerun to resume

Only the standard library is imported here: the training scripts import this module first, so
that a signal during the heavy imports is reported by `one_line_errors` too.
"""

from __future__ import annotations

import contextlib
import sys
from typing import Iterator

from bk_jax.runtime.interrupts import Interrupted

EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 3
EXIT_BUSY = 4
EXIT_STORAGE = 5


class ConfigError(ValueError):
  """A bad configuration value; the message is one line."""


class StorageError(Exception):
  """A write the storage refused (disk full, read-only, no permission); the message is one line
  naming what was being written, the space it needs and what to do.

  Attributes:
    write: (cause, what, path, need_bytes) of the refused write when known
      (`bk_jax.runtime.faults.writing`), so a caller can describe it again, e.g. after freeing
      what a partial write held; else None.
  """

  def __init__(self, message: str, *, write: tuple | None = None):
    super().__init__(message)
    self.write = write


class RunDirBusy(RuntimeError):
  """Another trainer holds the run directory's lock (bk_jax.train.rundir.RunDirLock)."""


def exit_status(e: BaseException) -> int | None:
  """The exit status of a known error (the table above), None for anything else."""
  # bk_jax.data is heavy (numpy, grain): a DataError can only exist once it has been imported
  data_errors = sys.modules.get("bk_jax.data.errors")
  if isinstance(e, ConfigError) or (data_errors is not None and isinstance(e, data_errors.DataError)):
    return EXIT_BAD_INPUT
  if isinstance(e, RunDirBusy):
    return EXIT_BUSY
  if isinstance(e, StorageError):
    return EXIT_STORAGE
  return None


@contextlib.contextmanager
def one_line_errors(prog: str) -> Iterator[None]:
  """Known errors become one line on stderr and the exit statuses above.

  `<prog>: error: <message>` for bad input, a busy run directory and refused writes;
  `<prog>: <message>` for an interrupt. Anything else propagates (a traceback: a bug).
  """
  try:
    yield
  except Interrupted as e:  # SIGTERM / SIGINT outside the training steps
    print(f"{prog}: {e}", file=sys.stderr)
    raise SystemExit(EXIT_INTERRUPTED) from None
  except KeyboardInterrupt:  # Ctrl-C in scripts that keep Python's own SIGINT handler
    print(f"{prog}: interrupted", file=sys.stderr)
    raise SystemExit(130) from None
  except Exception as e:  # noqa: BLE001 - known ones end here, the rest propagates
    code = exit_status(e)
    if code is None:
      raise
    print(f"{prog}: error: {e}", file=sys.stderr)
    raise SystemExit(code) from None

"""Faults of the machine a run lives on, each told in one line.

* Storage: a write the file system refused (disk full, quota, read-only, no permission).
  `storage_cause` recognises one in any exception chain: an OSError's errno, or the
  `[os_error_code='28']`-style text that tensorstore (orbax's array writer) puts in its
  ValueErrors. `writing(what, path, need)` turns such an error into `StorageError` naming what was
  being written, the free space and the space it needs.
* Background noise: when orbax's asynchronous writer or reader fails, its threads log absl ERROR
  records with tracebacks, asyncio reports "Task exception was never retrieved", and closed event
  loops print "Event loop is closed" tracebacks, tens to hundreds of lines before the error
  reaches the caller. `BackgroundErrors` holds those reports while it is active: they are
  dropped when the caller explains the fault in one line, and shown otherwise (nothing is hidden
  from an error nobody explained).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import shutil
import sys
import threading
from typing import Callable, Iterator

from bk_jax.runtime.errors import StorageError

#: errno -> the cause as the one-line messages say it.
STORAGE_ERRNOS = {
    errno.ENOSPC: "no space left on device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EFBIG: "file too large for the file system",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
}
#: the library messages of these errnos (tensorstore quotes strerror and the code)
_MESSAGES = {os.strerror(code): code for code in STORAGE_ERRNOS}
_CODE = re.compile(r"os_error_code='?(\d+)")


def _chain(e: BaseException) -> Iterator[BaseException]:
  seen = set()
  while e is not None and id(e) not in seen:
    seen.add(id(e))
    yield e
    e = e.__cause__ or e.__context__


def storage_cause(e: BaseException) -> str | None:
  """"no space left on device", "read-only file system", ... when `e` (or an exception in its
  chain) is a refused write; None otherwise."""
  for x in _chain(e):
    if isinstance(x, OSError) and x.errno in STORAGE_ERRNOS:
      return STORAGE_ERRNOS[x.errno]
    msg = str(x)
    m = _CODE.search(msg)
    if m and int(m.group(1)) in STORAGE_ERRNOS:
      return STORAGE_ERRNOS[int(m.group(1))]
    for text, code in _MESSAGES.items():
      if text in msg:
        return STORAGE_ERRNOS[code]
  return None


def human_bytes(n: float) -> str:
  """1536 -> "1.5 KB" (decimal units, as `df -H`)."""
  for unit in ("B", "KB", "MB", "GB", "TB"):
    if abs(n) < 1000 or unit == "TB":
      return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
    n /= 1000.0
  return f"{n:.1f} TB"


def free_bytes(path: str) -> int | None:
  """Free bytes of the file system holding `path` (its nearest existing ancestor)."""
  p = os.path.abspath(path)
  while not os.path.exists(p) and os.path.dirname(p) != p:
    p = os.path.dirname(p)
  try:
    return int(shutil.disk_usage(p).free)
  except OSError:
    return None


def describe(cause: str, what: str, path: str, need_bytes: int | None = None) -> str:
  """"no space left on device writing <what> (<path>): 0 B free, about 1.2 MB needed"."""
  line = f"{cause} writing {what} ({path})"
  if cause in (STORAGE_ERRNOS[errno.ENOSPC], STORAGE_ERRNOS[errno.EDQUOT]):
    free = free_bytes(path)
    parts = ([f"{human_bytes(free)} free"] if free is not None else []) + (
        [f"about {human_bytes(need_bytes)} needed"] if need_bytes else [])
    if parts:
      line += ": " + ", ".join(parts)
  return line


@contextlib.contextmanager
def writing(what: str, path: str, need_bytes: int | None = None) -> Iterator[None]:
  """A refused write inside the block becomes `StorageError` (`describe`); others pass.

  Args:
    what: what is written, for the message ("checkpoint step 20", "the token cache", ...).
    path: where.
    need_bytes: the space the write needs, if known (said when the disk is full).
  """
  try:
    yield
  except StorageError:
    raise
  except Exception as e:  # noqa: BLE001 - classified; anything else re-raised unchanged
    cause = storage_cause(e)
    if cause is None:
      raise
    raise StorageError(describe(cause, what, path, need_bytes),
                       write=(cause, what, path, need_bytes)) from e


def check_writable(path: str) -> None:
  """StorageError (one line) unless a file can be created in `path` or, when it does not exist
  yet, in its nearest existing ancestor (where it would be created)."""
  import tempfile

  target = os.path.abspath(path)
  where = target
  while not os.path.isdir(where) and os.path.dirname(where) != where:
    where = os.path.dirname(where)
  try:
    fd, probe = tempfile.mkstemp(prefix=".write-check-", dir=where)
    os.close(fd)
    os.unlink(probe)
  except OSError as e:
    cause = storage_cause(e) or e.strerror or type(e).__name__
    raise StorageError(f"{target} is not writable: {cause} ({where})") from None


class BackgroundErrors:
  """Holds the error reports of library threads while active (see the module docstring).

  Held: ERROR records of the `absl` and `asyncio` loggers, exceptions that
  `sys.unraisablehook`, `threading.excepthook` or `sys.excepthook` would print (tensorstore
  callbacks report through the latter). Records below ERROR pass as usual.

  Use as a context manager; `drop()` forgets what was held (the caller explains the fault), and
  on exit whatever is still held is shown through the original handlers.
  """

  LOGGERS = ("absl", "asyncio")
  MAX_HELD = 1000  # bounded: a long run that keeps logging errors shows the first ones

  def __init__(self):
    self._held: list[Callable[[], None]] = []
    self._lock = threading.Lock()
    self._saved = None

  def _hold(self, show: Callable[[], None]) -> None:
    with self._lock:
      if len(self._held) < self.MAX_HELD:
        self._held.append(show)

  def __enter__(self) -> "BackgroundErrors":
    outer = self

    class _Hold(logging.Filter):
      def filter(self, record):
        if record.levelno < logging.ERROR:
          return True
        logger = logging.getLogger(record.name)
        outer._hold(lambda: logger.handle(record))
        return False

    self._filter = _Hold()
    loggers = [logging.getLogger(n) for n in self.LOGGERS]
    for lg in loggers:
      lg.addFilter(self._filter)
    hooks = (sys.unraisablehook, threading.excepthook, sys.excepthook)
    self._saved = (loggers, hooks)
    sys.unraisablehook = lambda u: self._hold(lambda: hooks[0](u))
    threading.excepthook = lambda a: self._hold(lambda: hooks[1](a))
    sys.excepthook = lambda *a: self._hold(lambda: hooks[2](*a))
    return self

  def drop(self) -> None:
    with self._lock:
      self._held.clear()

  def __exit__(self, *exc) -> None:
    loggers, hooks = self._saved
    for lg in loggers:
      lg.removeFilter(self._filter)
    sys.unraisablehook, threading.excepthook, sys.excepthook = hooks
    with self._lock:
      held, self._held = self._held, []
    for show in held:
      show()

"""SIGTERM and SIGINT, from the start of a training script to its end.

A job scheduler may send SIGTERM at any moment: during the imports, while a corpus is tokenized,
while the first step compiles. Inside `raise_on_signals()` (the training scripts enter it, inside
`one_line_errors`, before anything heavy is imported) either signal raises `Interrupted`, which
the scripts print as one line with exit status 3. Once the trainer runs, its `StopRequest`
handler takes over: the run stops at the next step boundary and saves a checkpoint.

Only the standard library is imported here, so that the handler is in place within milliseconds
of the script's start.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Iterator

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Interrupted(BaseException):
  """A SIGTERM or SIGINT that ends the program; the message is one line.

  A BaseException (as KeyboardInterrupt) so that library code catching `Exception` lets it pass.

  Attributes:
    signal_name: "SIGTERM" or "SIGINT".
  """

  def __init__(self, signal_name: str, message: str | None = None):
    super().__init__(message or f"interrupted by {signal_name} before the first training step; "
                                f"nothing new to save; rerun to continue")
    self.signal_name = signal_name


def _raise(signum, _frame):
  raise Interrupted(signal.Signals(signum).name)


@contextlib.contextmanager
def raise_on_signals() -> Iterator[None]:
  """Inside: SIGTERM and SIGINT raise `Interrupted` in the main thread (no-op in other threads);
  the previous handlers are restored on exit."""
  if threading.current_thread() is not threading.main_thread():
    yield
    return
  old = {s: signal.signal(s, _raise) for s in SIGNALS}
  try:
    yield
  finally:
    for s, h in old.items():
      signal.signal(s, h)


class StopRequest:
  """SIGTERM and SIGINT while training: a request to stop at the next step boundary.

  While `installed()`, the first signal sets `requested` (and `signal_name`); a second Ctrl-C
  raises `Interrupted` at once, a repeated SIGTERM is ignored (the first is being acted on).
  """

  def __init__(self):
    self._event = threading.Event()
    self.signal_name = "SIGTERM"

  @property
  def requested(self) -> bool:
    return self._event.is_set()

  def _handle(self, signum, _frame) -> None:
    if self._event.is_set():
      if signum == signal.SIGINT:
        raise Interrupted("SIGINT")
      return
    self.signal_name = signal.Signals(signum).name
    self._event.set()

  @contextlib.contextmanager
  def installed(self) -> Iterator["StopRequest"]:
    """The handler inside (main thread only); the previous handlers are restored on exit."""
    if threading.current_thread() is not threading.main_thread():
      yield self
      return
    old = {s: signal.signal(s, self._handle) for s in SIGNALS}
    try:
      yield self
    finally:
      for s, h in old.items():
        signal.signal(s, h)

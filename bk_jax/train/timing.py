"""Step time measured on finished work.

JAX dispatches a step and returns before the device has run it, so a clock read right after the
dispatch times the dispatch, and the next interval absorbs the backlog. `StepTimer` blocks on the
last step of each log interval (one host sync per interval) before it reads the clock, runs only
while steps run (validation, checkpoint saves and compilation are timed apart), and divides the
time by the steps it covers.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any, Iterator

import jax


class StepTimer:
  """Seconds per training step over each log interval."""

  def __init__(self):
    self._elapsed = 0.0
    self._steps = 0
    self._since = time.perf_counter()

  def count(self) -> None:
    """One more step dispatched in this interval."""
    self._steps += 1

  def lap(self, finished: Any) -> float:
    """Seconds per step since the previous lap, once `finished` (the interval's last step's
    output) is ready; starts the next interval."""
    jax.block_until_ready(finished)
    now = time.perf_counter()
    per_step = (self._elapsed + now - self._since) / max(self._steps, 1)
    self._elapsed, self._steps, self._since = 0.0, 0, now
    return per_step

  @contextlib.contextmanager
  def paused(self, finished: Any) -> Iterator[None]:
    """Work inside is not step time; the steps dispatched before it are (blocks on `finished`)."""
    jax.block_until_ready(finished)
    self._elapsed += time.perf_counter() - self._since
    try:
      yield
    finally:
      self._since = time.perf_counter()

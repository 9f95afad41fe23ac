"""The single error type of the data layer and a CLI guard that prints it as one line."""

from __future__ import annotations

import contextlib
import sys
from typing import Iterator


class DataError(ValueError):
  """A user-facing data problem (bad path, empty corpus, unknown name, corpus too short...).

  The message is always a single line so that scripts can print it without a traceback
  (see :func:`cli_errors`).
  """

  def __init__(self, message: str):
    # Newlines inside a message would turn one clear line into soup; fold them.
    super().__init__(" ".join(str(message).split("\n")))


@contextlib.contextmanager
def cli_errors(prog: str = "bk_jax") -> Iterator[None]:
  """Context manager for scripts: a :class:`DataError` becomes one stderr line and exit code 2.

  Args:
    prog: Program name printed before the message.

  Example::

      with cli_errors("bench_data"):
          main()
  """
  try:
    yield
  except DataError as e:
    print(f"{prog}: error: {e}", file=sys.stderr)
    raise SystemExit(2) from None

"""Runs a training script with a disk that fills up at a chosen moment.

    python tests/fill_disk.py FILLER WHEN N SCRIPT [ARGS ...]

Right before the trainer's N-th call of WHEN, the file FILLER is grown until its file system
says ENOSPC; the call then runs as usual, so the write that fails is the trainer's own, on the
real file system. WHEN is one of

  checkpoint  bk_jax.train.checkpoint.Checkpoints.save (periodic saves; asynchronous)
  events      bk_jax.train.metrics.MetricWriter.write_step (one logged step everywhere)
  results     bk_jax.train.results.write_results (the results file)

The script's exit status is this process's.
"""

import functools
import os
import runpy
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)


def fill(path: str) -> None:
  """Appends to `path` until the disk is full, in ever smaller pieces (down to one byte)."""
  fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
  try:
    for size in (1 << 20, 1 << 16, 1 << 12, 1 << 8, 1):
      chunk = b"\0" * size
      try:
        while True:
          os.write(fd, chunk)
      except OSError:
        pass
  finally:
    os.close(fd)


def fill_before(owner, name: str, nth: int, filler: str) -> None:
  real = getattr(owner, name)
  calls = [0]

  @functools.wraps(real)
  def wrapper(*args, **kwargs):
    calls[0] += 1
    if calls[0] == nth:
      fill(filler)
    return real(*args, **kwargs)

  setattr(owner, name, wrapper)


def main() -> None:
  filler, when, nth, script, *args = sys.argv[1:]
  from bk_jax.train import checkpoint, metrics, results

  owner, name = {"checkpoint": (checkpoint.Checkpoints, "save"),
                 "events": (metrics.MetricWriter, "write_step"),
                 "results": (results, "write_results")}[when]
  fill_before(owner, name, int(nth), filler)
  sys.argv = [script, *args]
  runpy.run_path(script, run_name="__main__")


if __name__ == "__main__":
  main()

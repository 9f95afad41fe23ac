"""Where a result came from: the command line and the machine, stamped into every results JSON.

The one helper behind the `command` / `machine` fields of every JSON the scripts and the library
write (reports, benchmarks, streaming and extrapolation evaluations, the trainer's results `run`
section). It sits on the bottom floor (imports only jax) so that eval, train and reports can all
use it without importing each other.
"""

from __future__ import annotations

import os
import platform
import shlex
import sys
import time


def machine() -> dict:
  """Backend, devices, CPU model and count, jax / python versions and the OS of this process.

  Returns:
    dict(backend, devices, device_kind, cpu, cpu_count, affinity, jax, python, platform).
  """
  import jax
  cpu = platform.processor() or platform.machine()
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          cpu = line.split(":", 1)[1].strip()
          break
  except OSError:
    pass
  return dict(backend=jax.default_backend(), devices=[str(d) for d in jax.devices()],
              device_kind=jax.devices()[0].device_kind, cpu=cpu, cpu_count=os.cpu_count(),
              affinity=len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
              jax=jax.__version__, python=sys.version.split()[0], platform=platform.platform())


def command() -> str:
  """The command line of this process as a user would retype it (`python script args...`)."""
  return "python " + " ".join(shlex.quote(a) for a in sys.argv)


def stamped(payload: dict) -> dict:
  """`payload` with `command`, `machine` and `written` (local time) first; keys it has win.

  Args:
    payload: the results to write.
  Returns:
    a new dict: the provenance fields, then payload's.
  """
  out = dict(command=command(), machine=machine(), written=time.strftime("%Y-%m-%d %H:%M:%S %Z"))
  out.update(payload)
  return out

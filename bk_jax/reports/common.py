"""Output folders, the machine description, JSON writing and markdown tables for the reports."""

from __future__ import annotations

import math
import os
import platform
import shlex
import sys
import time

from bk_jax.runtime.jsonio import write_json as write_json_file


def out_dir(path: str | None, name: str, quick: bool = False) -> str:
  d = path or os.path.join("results", name + ("_quick" if quick else ""))
  os.makedirs(d, exist_ok=True)
  return d


def machine() -> dict:
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
  return "python " + " ".join(shlex.quote(a) for a in sys.argv)


def write_json(d: str, name: str, payload: dict) -> str:
  payload = dict(command=command(), machine=machine(),
                 written=time.strftime("%Y-%m-%d %H:%M:%S %Z"), **payload)
  return write_json_file(os.path.join(d, name), payload, indent=1)


def md_table(header: list[str], rows: list[list]) -> str:
  def cell(v):
    if v is None:
      return "-"
    if isinstance(v, float):
      if not math.isfinite(v):
        return str(v)
      return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.4g}"
    return str(v)
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  lines += ["| " + " | ".join(cell(v) for v in r) + " |" for r in rows]
  return "\n".join(lines)

"""Output folders, the machine description, JSON writing and markdown tables for the reports."""

from __future__ import annotations

import math
import os

from bk_jax.runtime.provenance import command, machine, stamped  # noqa: F401 - command/machine re-exported
from bk_jax.runtime.jsonio import write_json as write_json_file


def out_dir(path: str | None, name: str, quick: bool = False) -> str:
  d = path or os.path.join("results", name + ("_quick" if quick else ""))
  os.makedirs(d, exist_ok=True)
  return d


def write_json(d: str, name: str, payload: dict) -> str:
  return write_json_file(os.path.join(d, name), stamped(payload), indent=1)


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

"""Markdown tables for the scripts' and reports' printed results."""

from __future__ import annotations

import math


def md_table(header: list[str], rows: list[list]) -> str:
  """A markdown table; None is "-", floats get 4 significant digits (thousands: grouped)."""
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

"""Output folders, the machine description, JSON writing and markdown tables for the reports."""

from __future__ import annotations

import os

from bk_jax.runtime.jsonio import write_json as write_json_file
from bk_jax.runtime.markdown import md_table  # noqa: F401 - re-exported for the reports
from bk_jax.runtime.provenance import command, machine, stamped  # noqa: F401 - command/machine re-exported


def out_dir(path: str | None, name: str, quick: bool = False) -> str:
  d = path or os.path.join("results", name + ("_quick" if quick else ""))
  os.makedirs(d, exist_ok=True)
  return d


def write_json(d: str, name: str, payload: dict) -> str:
  return write_json_file(os.path.join(d, name), stamped(payload), indent=1)

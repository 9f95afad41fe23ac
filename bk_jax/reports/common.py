"""Output folders, the machine description, JSON writing and markdown tables for the reports."""

from __future__ import annotations

import os

from bk_jax.models.config import BK_BLOCKS
from bk_jax.runtime.jsonio import write_json as write_json_file
from bk_jax.runtime.markdown import md_table  # noqa: F401 - re-exported for the reports
from bk_jax.runtime.provenance import command, machine, stamped  # noqa: F401 - command/machine re-exported


#: BK heads of the reports' --quick modes: the smallest power of two above every named block's
#: selective heads, so each named block runs there with Green heads too (bk_selective_heads <
#: n_heads) and the head count divides the tiny widths (16, 32).
QUICK_N_HEADS = 1 << max(int(b.get("bk_selective_heads", 0))
                         for b in BK_BLOCKS.values()).bit_length()


def out_dir(path: str | None, name: str, quick: bool = False) -> str:
  d = path or os.path.join("results", name + ("_quick" if quick else ""))
  os.makedirs(d, exist_ok=True)
  return d


def write_json(d: str, name: str, payload: dict) -> str:
  return write_json_file(os.path.join(d, name), stamped(payload), indent=1)


#: The baseline families of the reports' ResNet-BK-vs-baseline ratios. Each ratio is taken
#: against the family's fastest member measured in the same run at the same N (the baseline a
#: user would pick): state-space = the faster of Mamba and Mamba-2; attention = the Transformer
#: (its "auto" attention: cuDNN's flash attention on a GPU).
BASELINE_FAMILIES = {"state-space": ("mamba", "mamba2"), "attention": ("transformer",)}


def fastest_baseline(tokens_per_s: dict, family: str, n: int) -> tuple[str, float] | None:
  """The family's fastest kind at N = n.

  Args:
    tokens_per_s: {(kind, N): tokens/s} of one run.
    family: a key of `BASELINE_FAMILIES`.
    n: the sequence length.

  Returns:
    (kind, tokens/s) of the fastest member measured at n, or None when none was.
  """
  got = [(tokens_per_s[k, n], k) for k in BASELINE_FAMILIES[family] if (k, n) in tokens_per_s]
  if not got:
    return None
  tps, kind = max(got)
  return kind, tps

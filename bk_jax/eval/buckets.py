"""Position buckets for perplexity degradation: loss as a function of the absolute position.

A token at input position p (0-based from the start of the stream; it is predicted from the p+1
tokens 0..p) falls in bucket k when edges[k] <= p < edges[k+1]. The default buckets are
0-1k, 1k-10k, 10k-100k, 100k-1M and 1M+.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from bk_jax.runtime.metrics import perplexity

DEFAULT_EDGES = (0, 1_000, 10_000, 100_000, 1_000_000)


def check_edges(edges: Sequence[int]) -> tuple[int, ...]:
  e = tuple(int(x) for x in edges)
  if not e or e[0] != 0 or any(b <= a for a, b in zip(e, e[1:])):
    raise ValueError(f"bucket edges must start at 0 and increase strictly, got {e}")
  return e


def _short(n: int) -> str:
  for unit, s in ((1_000_000, "M"), (1_000, "k")):
    if n >= unit and n % unit == 0:
      return f"{n // unit}{s}"
  return str(n)


def bucket_labels(edges: Sequence[int]) -> list[str]:
  e = check_edges(edges)
  return [f"{_short(a)}-{_short(b)}" for a, b in zip(e, e[1:])] + [f"{_short(e[-1])}+"]


def bucket_table(edges: Sequence[int], nll: np.ndarray, count: np.ndarray,
                 correct: np.ndarray | None = None) -> list[dict]:
  """Rows {bucket, start, end, tokens, loss, perplexity[, accuracy]} for the non-empty buckets."""
  e = check_edges(edges)
  ends = list(e[1:]) + [None]
  rows = []
  for k, label in enumerate(bucket_labels(e)):
    n = float(count[k])
    if n <= 0:
      continue
    loss = float(nll[k]) / n
    row = dict(bucket=label, start=e[k], end=ends[k], tokens=int(round(n)), loss=loss,
               perplexity=perplexity(loss))
    if correct is not None:
      row["accuracy"] = float(correct[k]) / n
    rows.append(row)
  return rows


def format_bucket_table(rows: list[dict]) -> str:
  lines = [f"{'positions':>12} {'tokens':>10} {'loss':>8} {'ppl':>10}"]
  for r in rows:
    lines.append(f"{r['bucket']:>12} {r['tokens']:>10,} {r['loss']:>8.4f} {r['perplexity']:>10.3f}")
  return "\n".join(lines)

"""Host-side metric helpers shared by training, evaluation and reports."""

from __future__ import annotations

import math


def perplexity(loss: float) -> float:
  """exp(loss) on the host: inf past float64's range (never a silent cap), nan stays nan."""
  try:
    return math.exp(loss)
  except OverflowError:
    return float("inf")

"""JSON that is valid JSON (no bare NaN/Infinity) and written atomically (tmp file + rename)."""

from __future__ import annotations

import json
import math
import os
from typing import Any


def json_safe(x: Any) -> Any:
  """JSON-safe copy: non-finite floats become strings ("nan", "inf"), tuples become lists.

  numpy scalars are converted to Python numbers first, so a float32 NaN is caught too.
  """
  if hasattr(x, "item") and getattr(x, "ndim", None) == 0:  # numpy / jax scalars
    x = x.item()
  if isinstance(x, float) and not math.isfinite(x):
    return str(x)
  if isinstance(x, dict):
    return {str(k): json_safe(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [json_safe(v) for v in x]
  return x


def write_json(path: str, obj: Any, *, indent: int = 2) -> str:
  """Writes `json_safe(obj)` to `path` atomically (readers never see a partial file).

  Args:
    path: destination; its folder is created if needed.
    obj: a JSON-able tree (non-finite floats and numpy scalars allowed).
    indent: json.dump indentation.

  Returns:
    The path written.
  """
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = path + ".tmp"
  try:
    with open(tmp, "w") as f:
      json.dump(json_safe(obj), f, indent=indent)
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):  # a partial file (a full disk): the previous `path` stays as it was
      os.remove(tmp)
    raise
  return path

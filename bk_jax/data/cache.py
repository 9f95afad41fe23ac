"""The tokenize-once cache: keys, atomic directory builds, memory-mapped token arrays.

Layout of one entry (``<root>/<dataset>-<tokenizer>-<key>/``)::

    meta.json          dtype, per-split token and byte counts, the full key material
    train.bin ...      raw little-endian token ids, one file per split (np.memmap'ed on load)
    word_vocab.json / bpe.model   the learned tokenizer, if any

An entry is built in a hidden temporary directory next to it and renamed into place, so a
crash or a concurrent builder never leaves a half-written entry behind.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

#: Bump when the on-disk format or the tokenisation rules change: invalidates old entries.
CACHE_VERSION = 1


def cache_root(cache_dir: str) -> Path:
  """``cache_dir`` if set, else ``$BK_JAX_CACHE``, else ``~/.cache/bk_jax``."""
  return Path(cache_dir or os.environ.get("BK_JAX_CACHE") or Path.home() / ".cache" / "bk_jax")


def cache_key(material: dict) -> str:
  """Stable hex digest of JSON-able key material (sources, tokenizer, limits, version)."""
  blob = json.dumps({"version": CACHE_VERSION, **material}, sort_keys=True)
  return hashlib.sha256(blob.encode("utf-8")).hexdigest()


@contextlib.contextmanager
def _cleanup_root(root: Path) -> Iterator[None]:
  """Creates ``root`` if needed; on failure removes it again if it was created here and is
  still empty, so a failed first run leaves nothing behind."""
  created = not root.exists()
  root.mkdir(parents=True, exist_ok=True)
  try:
    yield
  except BaseException:
    if created:
      with contextlib.suppress(OSError):
        root.rmdir()  # only succeeds when empty
    raise


def build_atomically(final: Path, build: Callable[[Path], None]) -> Path:
  """Runs ``build(tmpdir)`` and renames ``tmpdir`` to ``final``.

  Args:
    final: the entry directory to create.
    build: fills the given empty directory; must write ``meta.json`` last.
  Returns:
    ``final`` (possibly built by a concurrent process that won the rename race).
  """
  with _cleanup_root(final.parent):
    tmp = final.parent / f".tmp-{final.name}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
      build(tmp)
      try:
        os.rename(tmp, final)
      except OSError:
        if not (final / "meta.json").exists():
          raise
        # Someone else finished the same entry first: theirs is identical.
        shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
      shutil.rmtree(tmp, ignore_errors=True)
      raise
  return final


class TokenWriter:
  """Appends token ids to ``<dir>/<split>.bin`` with an optional length cap.

  Args:
    path: output file.
    dtype: on-disk dtype (uint16 when the vocabulary fits, else int32).
    limit: maximum tokens to keep (0 = no cap).
  """

  def __init__(self, path: Path, dtype: np.dtype, limit: int = 0):
    self.f = open(path, "wb")
    self.dtype, self.limit = np.dtype(dtype), int(limit)
    self.tokens = 0
    self.bytes = 0.0

  @property
  def full(self) -> bool:
    return bool(self.limit) and self.tokens >= self.limit

  def write(self, ids: np.ndarray, nbytes: int) -> None:
    """Appends ``ids`` (covering ``nbytes`` source bytes), truncated at the cap."""
    if self.limit:
      keep = min(len(ids), self.limit - self.tokens)
      if len(ids):
        nbytes = nbytes * keep / len(ids)  # proportional share, exact for bytes
      ids = ids[:keep]
    self.f.write(np.ascontiguousarray(ids, dtype=self.dtype).tobytes())
    self.tokens += len(ids)
    self.bytes += nbytes

  def close(self) -> None:
    self.f.close()


def open_tokens(path: Path, dtype: str, length: int) -> np.ndarray:
  """Memory-maps a split's token file read-only (an empty split is a 0-length array).

  Returns:
    Array of shape (length,).
  """
  if length == 0:
    return np.zeros((0,), dtype=dtype)
  return np.memmap(path, dtype=dtype, mode="r", shape=(length,))


def write_meta(directory: Path, meta: dict) -> None:
  (directory / "meta.json").write_text(json.dumps(meta, indent=1, sort_keys=True))


def read_meta(directory: Path) -> dict | None:
  """The entry's metadata, or None if the entry does not exist (or is from another version)."""
  try:
    meta = json.loads((directory / "meta.json").read_text())
  except (OSError, ValueError):
    return None
  return meta if meta.get("version") == CACHE_VERSION else None


def entry_problem(directory: Path, splits) -> str | None:
  """Why an existing entry cannot be used (garbage meta.json, token file of the wrong size,
  missing file), or None when it is intact or does not exist at all."""
  if not directory.exists():
    return None
  try:
    meta = json.loads((directory / "meta.json").read_text())
  except FileNotFoundError:
    return "meta.json is missing"
  except (OSError, ValueError) as e:
    return f"meta.json is unreadable ({type(e).__name__})"
  if not isinstance(meta, dict) or meta.get("version") != CACHE_VERSION:
    return "meta.json is not a bk_jax cache description of this version"
  try:
    itemsize = np.dtype(meta["dtype"]).itemsize
    for split in splits:
      want = int(meta["lengths"][split]) * itemsize
      path = directory / f"{split}.bin"
      have = path.stat().st_size if path.exists() else None
      if have is None and want:
        return f"{split}.bin is missing"
      if have is not None and have != want:
        return f"{split}.bin has {have:,} bytes, meta.json says {want:,}"
    int(meta["vocab_size"]), dict(meta["bytes"])
  except (KeyError, TypeError, ValueError) as e:
    return f"meta.json lacks or garbles a field ({type(e).__name__}: {e})"
  return None


def discard(directory: Path) -> None:
  """Removes a corrupt entry: renamed away first (atomic for other readers), then deleted."""
  trash = directory.parent / f".corrupt-{directory.name}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
  try:
    os.rename(directory, trash)
  except FileNotFoundError:
    return  # someone else discarded it already
  shutil.rmtree(trash, ignore_errors=True)

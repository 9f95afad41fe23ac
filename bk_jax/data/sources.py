"""Text sources: the dataset registry, which files make up a dataset, how they split, and
reading them as UTF-8.

A :class:`Source` is resolved (and validated) without writing anything; its documents are then
read lazily, split by split, by the cache builder. Documents arrive in pieces of at most a few
MB cut at line ends, so multi-hundred-MB files (WikiText-103) never sit in memory whole.

Every dataset name is a :class:`Dataset` in one registry (bottom of this file): its source
resolver and its config check. Adding a dataset is one resolver function
``(cfg, fractions) -> Source`` plus one :func:`register_dataset` call; an unregistered name is a
:class:`DataError` that lists the registered ones.
"""

from __future__ import annotations

import dataclasses
import functools
import glob
import hashlib
import os
import sysconfig
from pathlib import Path
from typing import Callable, Iterator, Sequence

from bk_jax.data.config import SPLITS
from bk_jax.data.errors import DataError

#: Directory names skipped in the standard library: third-party code and the test suites
#: (which hold deliberately mis-encoded files and generated data, not representative code).
PYSTDLIB_EXCLUDE = frozenset({"site-packages", "dist-packages", "test", "tests", "idle_test",
                              "__pycache__"})
#: Read granularity; documents larger than this are delivered in line-aligned pieces.
PIECE_BYTES = 1 << 22

_WIKITEXT_DIRS = {"wikitext2": ("wikitext-2", "wikitext-2-raw", "wikitext-2-v1",
                                "wikitext-2-raw-v1"),
                  "wikitext103": ("wikitext-103", "wikitext-103-raw", "wikitext-103-v1",
                                  "wikitext-103-raw-v1")}


@dataclasses.dataclass(frozen=True)
class Piece:
  """A chunk of a document. ``end_of_doc`` marks where the builder inserts EOS."""

  text: str
  nbytes: int
  end_of_doc: bool


@dataclasses.dataclass(frozen=True)
class Source:
  """A resolved dataset.

  Attributes:
    name: dataset name.
    fingerprint: JSON-able description of every input file (path, size, mtime_ns) plus the
      split rule; it goes into the cache key.
    total_bytes: bytes over all splits (for progress bars).
    pieces: ``split -> iterator of Piece`` (reads the files).
  """

  name: str
  fingerprint: list
  total_bytes: int
  pieces: Callable[[str], Iterator[Piece]]


def _stat_fp(path: Path, rel: str) -> list:
  st = path.stat()
  return [rel, st.st_size, st.st_mtime_ns]


def stable_split(key: str, fractions: Sequence[float]) -> str:
  """Assigns ``key`` to a split by a hash that is identical on every machine and run.

  Args:
    key: e.g. a relative path (posix separators).
    fractions: (train, valid, test), normalised.
  Returns:
    The split name.
  """
  u = int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "big") / 2.0**64
  acc = 0.0
  for name, f in zip(SPLITS, fractions):
    acc += f
    if u < acc:
      return name
  return SPLITS[-1]


def _read_utf8(path: Path, start: int = 0, stop: int | None = None) -> Iterator[Piece]:
  """Reads bytes [start, stop) of ``path`` as strict UTF-8, in line-aligned pieces.

  Raises:
    DataError: naming the file and byte offset of the first undecodable byte.
  """
  stop = path.stat().st_size if stop is None else stop
  with open(path, "rb") as f:
    f.seek(start)
    pos, carry = start, b""
    while pos < stop or carry:
      data = carry + f.read(min(PIECE_BYTES, stop - pos))
      base = pos - len(carry)
      pos += len(data) - len(carry)
      last = pos >= stop
      if not last:
        cut = data.rfind(b"\n") + 1
        # A piece must end on a line end (word/BPE tokenise lines); without one keep going.
        if cut == 0:
          carry = data
          continue
        data, carry = data[:cut], data[cut:]
      else:
        carry = b""
      try:
        text = data.decode("utf-8")
      except UnicodeDecodeError as e:
        raise DataError(f"{path}: undecodable bytes (not UTF-8) at byte offset "
                        f"{base + e.start}: {data[e.start:e.start + 4]!r}")
      yield Piece(text, len(data), last)


def _char_boundary(path: Path, pos: int, size: int) -> int:
  """Moves a byte position forward past UTF-8 continuation bytes (0b10xxxxxx)."""
  with open(path, "rb") as f:
    f.seek(pos)
    tail = f.read(4)
  for b in tail:
    if pos >= size or (b & 0xC0) != 0x80:
      break
    pos += 1
  return min(pos, size)


def _pystdlib() -> tuple[list, list[tuple[Path, str]]]:
  root = Path(sysconfig.get_paths()["stdlib"])
  files: list[tuple[Path, str]] = []
  for dirpath, dirnames, filenames in os.walk(root):
    dirnames[:] = sorted(d for d in dirnames if d not in PYSTDLIB_EXCLUDE)
    for fn in sorted(filenames):
      if fn.endswith(".py"):
        p = Path(dirpath) / fn
        files.append((p, p.relative_to(root).as_posix()))
  files.sort(key=lambda t: t[1])  # deterministic order, independent of os.walk
  return [str(root)], files


def _text_files(path: str) -> list[Path]:
  if any(c in path for c in "*?["):
    return [Path(p) for p in sorted(glob.glob(path, recursive=True)) if Path(p).is_file()]
  p = Path(path)
  if p.is_dir():
    return sorted((q for q in p.rglob("*") if q.is_file()
                   and not any(part.startswith(".") for part in q.relative_to(p).parts)),
                  key=lambda q: q.as_posix())
  if p.is_file():
    return [p]
  raise DataError(f"data.path {path!r} does not exist: dataset 'text' reads a UTF-8 file, a "
                  "directory of files or a glob (e.g. bk_jax/data/assets/tinyshakespeare.txt)")


def _wikitext_files(name: str, path: str) -> dict[str, Path]:
  expected = "wiki.{train,valid,test}.tokens (or the raw release's wiki.*.raw)"
  where = f"put the {name} release files {expected} in a directory and set data.path to it"
  if not path:
    raise DataError(f"dataset {name!r} needs data.path: {where}")
  base = Path(path)
  if not base.exists():
    raise DataError(f"data.path {path!r} does not exist; {where}")
  for d in [base] + [base / sub for sub in _WIKITEXT_DIRS[name]]:
    for ext in ("tokens", "raw"):
      files = {s: d / f"wiki.{s}.{ext}" for s in SPLITS}
      if all(f.is_file() for f in files.values()):
        return files
  raise DataError(f"no {name} release files under {path!r}: {where}")


def _resolve_pystdlib(cfg, fr: list[float]) -> Source:
  """The running Python's standard library, split per file by a stable hash of its path."""
  head, files = _pystdlib()
  fp = head + [_stat_fp(p, rel) for p, rel in files] + [["split", fr]]
  total = sum(e[1] for e in fp[1:-1])
  owner = {rel: stable_split(rel, fr) for _, rel in files}

  def pieces(split: str) -> Iterator[Piece]:
    for p, rel in files:
      if owner[rel] == split:
        yield from _read_utf8(p)

  return _nonempty(Source(cfg.dataset, fp, total, pieces), "the standard library")


def _resolve_pysource(cfg, fr: list[float]) -> Source:
  """Every .py file of a Python installation (``bk_jax.data.pysource``): the running
  interpreter's standard library and site-packages, or every .py file under ``data.path``; split
  per file by a stable hash of its key ("stdlib/json/decoder.py", "site-packages/numpy/...")."""
  from bk_jax.data.pysource import python_files

  roots, files = python_files(cfg.path)
  stats = [os.stat(p) for p, _ in files]
  # the roots as strings (not lists): identity counts the list entries as files
  fp = ([f"{label}={root}" for label, root in roots]
        + [[key, st.st_size, st.st_mtime_ns] for (_, key), st in zip(files, stats)]
        + [["split", fr]])
  total = sum(st.st_size for st in stats)

  @functools.cache
  def owner() -> dict[str, str]:  # only reading needs the split (not the cache-key check)
    return {key: stable_split(key, fr) for _, key in files}

  def pieces(split: str) -> Iterator[Piece]:
    for p, key in files:
      if owner()[key] == split:
        yield from _read_utf8(Path(p))

  return _nonempty(Source(cfg.dataset, fp, total, pieces), cfg.path or "the running interpreter")


def _resolve_text(cfg, fr: list[float]) -> Source:
  """``data.path`` (file, directory or glob), every file cut contiguously at ``fr``."""
  if not cfg.path:
    raise DataError("dataset 'text' needs data.path: a UTF-8 file, a directory or a glob")
  paths = _text_files(cfg.path)
  if not paths:
    raise DataError(f"data.path {cfg.path!r} matches no files")
  fp = [_stat_fp(p, str(p.resolve())) for p in paths] + [["split", fr]]
  total = sum(e[1] for e in fp[:-1])
  bounds = {0: 0.0, 1: fr[0], 2: fr[0] + fr[1], 3: 1.0}

  def pieces(split: str) -> Iterator[Piece]:
    k = SPLITS.index(split)
    for p in paths:
      # Contiguous cut of every file: a single file (tinyshakespeare) still gets all
      # three splits, and no text leaks between them.
      size = p.stat().st_size
      a = _char_boundary(p, round(bounds[k] * size), size)
      b = _char_boundary(p, round(bounds[k + 1] * size), size)
      if b > a:
        yield from _read_utf8(p, a, b)

  return _nonempty(Source(cfg.dataset, fp, total, pieces), repr(cfg.path))


def _resolve_wikitext(name: str, cfg, fr: list[float]) -> Source:
  """The WikiText release files under ``data.path``; the release's own splits (``fr`` unused)."""
  del fr
  files = _wikitext_files(name, cfg.path)
  fp = [_stat_fp(p, str(p.resolve())) for p in files.values()]
  total = sum(e[1] for e in fp)
  return _nonempty(Source(name, fp, total, lambda split: _read_utf8(files[split])),
                   repr(cfg.path))


def resolve_source(cfg) -> Source:
  """Validates ``cfg`` (config.data) and lists the files of its dataset. Writes nothing.

  Args:
    cfg: the data ConfigDict.
  Returns:
    The :class:`Source`.
  Raises:
    DataError: unknown dataset, a dataset without a token corpus (synthetic), missing path,
      no files, empty corpus, bad split fractions.
  """
  spec = dataset(cfg.dataset)
  if spec.resolve is None:
    raise DataError(f"dataset {spec.name!r} has no token corpus: use make_train_dataset or "
                    "make_synthetic_batch")
  fr = [float(x) for x in cfg.split_fractions]
  if len(fr) != 3 or min(fr) < 0 or sum(fr) <= 0 or fr[0] == 0:
    raise DataError(f"data.split_fractions must be 3 non-negative numbers with train > 0, "
                    f"got {tuple(cfg.split_fractions)}")
  return spec.resolve(cfg, [x / sum(fr) for x in fr])


def _nonempty(src: Source, where: str) -> Source:
  if src.total_bytes == 0:
    raise DataError(f"empty corpus: dataset {src.name!r} at {where} contains no bytes")
  return src


# ------------------------------------------------------------------------------ registry
@dataclasses.dataclass(frozen=True)
class Dataset:
  """A registered dataset.

  Attributes:
    name: the ``config.data.dataset`` value.
    resolve: ``(cfg, fractions) -> Source`` with ``fractions`` the normalised
      (train, valid, test) split fractions; None for a dataset without a token corpus (the
      generated synthetic tasks, served by ``bk_jax.data.synthetic``).
    reads_path: whether the dataset reads ``data.path``; when False a non-empty path is a
      config error (:meth:`check_config`), not silently ignored.
  """

  name: str
  resolve: Callable[..., Source] | None
  reads_path: bool

  def check_config(self, cfg) -> None:
    """Config check of ``cfg`` (config.data) for this dataset; reads no files.

    Raises:
      DataError: ``data.path`` is set for a dataset that reads no files.
    """
    if not self.reads_path and str(cfg.path):
      readers = [n for n, d in _REGISTRY.items() if d.reads_path]
      alt = f" (or {' / '.join(readers[1:])})" if len(readers) > 1 else ""
      raise DataError(f"data.path={cfg.path!r} is ignored by data.dataset={self.name!r}; to "
                      f"train on that file set --config.data.dataset={readers[0]}{alt}, or "
                      f"clear data.path")


_REGISTRY: dict[str, Dataset] = {}


def register_dataset(name: str, resolve: Callable[..., Source] | None, *,
                     reads_path: bool) -> None:
  """Adds a dataset to the registry (see :class:`Dataset` for the arguments).

  Raises:
    ValueError: ``name`` is already registered.
  """
  if name in _REGISTRY:
    raise ValueError(f"dataset {name!r} is already registered")
  _REGISTRY[name] = Dataset(name, resolve, reads_path)


def dataset_names() -> tuple[str, ...]:
  """The registered dataset names, in registration order."""
  return tuple(_REGISTRY)


def dataset(name: str) -> Dataset:
  """The registered :class:`Dataset` called ``name``.

  Raises:
    DataError: ``name`` is not registered; the message lists the registered names.
  """
  if name not in _REGISTRY:
    raise DataError(f"unknown dataset {name!r}; valid: {', '.join(_REGISTRY)}")
  return _REGISTRY[name]


def check_data_config(cfg) -> None:
  """Config check of ``cfg.dataset`` (config.data): a registered name, and the settings its
  :class:`Dataset` accepts. Reads no files (missing files are reported by :func:`resolve_source`).

  Raises:
    DataError: one line naming the problem.
  """
  dataset(cfg.dataset).check_config(cfg)


register_dataset("pystdlib", _resolve_pystdlib, reads_path=False)
register_dataset("text", _resolve_text, reads_path=True)
register_dataset("wikitext2", functools.partial(_resolve_wikitext, "wikitext2"), reads_path=True)
register_dataset("wikitext103", functools.partial(_resolve_wikitext, "wikitext103"),
                 reads_path=True)
register_dataset("pysource", _resolve_pysource, reads_path=True)
register_dataset("synthetic", None, reads_path=False)

#: Names accepted by ``config.data.dataset`` (the built-in registrations above).
DATASETS = dataset_names()

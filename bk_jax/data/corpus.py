"""Tokenized, cached, memory-mapped corpora: :func:`load_corpus` and :func:`vocab_size`."""

from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path
from typing import Iterator

import numpy as np
from tqdm import tqdm

from bk_jax.data import cache
from bk_jax.data.config import SPLITS
from bk_jax.data.errors import DataError
from bk_jax.data.sources import Source, resolve_source
from bk_jax.data.synthetic import task_vocab_size
from bk_jax.data.tokenizers import (ByteTokenizer, Tokenizer, check_tokenizer_name,
                                    load_tokenizer, needs_training, save_tokenizer,
                                    train_tokenizer)
from bk_jax.runtime.errors import StorageError
from bk_jax.runtime.faults import writing

#: Sources smaller than this tokenize without a progress bar (it would only flicker).
PROGRESS_MIN_BYTES = 4 << 20


@dataclasses.dataclass
class Corpus:
  """A tokenized dataset.

  Attributes:
    name: dataset name.
    vocab_size: tokenizer vocabulary (the model's minimum embedding size).
    tokenizer: the :class:`Tokenizer` used.
    splits: ``{"train","valid","test"} -> (T,)`` read-only memmapped token ids (uint16/int32).
    split_bytes: UTF-8 source bytes behind each split (EOS separators are 0 bytes).
    path: the cache entry directory.
  """

  name: str
  vocab_size: int
  tokenizer: Tokenizer
  splits: dict[str, np.ndarray]
  split_bytes: dict[str, float]
  path: Path

  def bytes_per_token(self, split: str) -> float:
    """Source bytes per token of ``split``: bits/byte = nats/token / ln 2 / bytes_per_token."""
    n = len(self.splits[split])
    return self.split_bytes[split] / n if n else float("nan")


def _check_common(cfg) -> None:
  check_tokenizer_name(cfg.tokenizer)
  if int(cfg.data_limit) < 0:
    raise DataError(f"data.data_limit must be >= 0 (0 = no cap), got {cfg.data_limit}")


def _train_lines(source: Source) -> Iterator[str]:
  for piece in source.pieces("train"):
    yield from piece.text.splitlines()


def _build(tmp: Path, cfg, source: Source, key: str) -> None:
  """Trains the tokenizer if needed, then tokenizes every split into ``tmp``."""
  t0 = time.perf_counter()
  tok = train_tokenizer(cfg.tokenizer, _train_lines(source), int(cfg.vocab_size))
  save_tokenizer(tok, tmp)
  dtype = np.uint16 if tok.vocab_size <= 1 << 16 else np.int32
  lengths, nbytes = {}, {}
  bar = tqdm(total=source.total_bytes, unit="B", unit_scale=True, file=sys.stderr,
             desc=f"tokenizing {source.name} ({cfg.tokenizer})",
             disable=source.total_bytes < PROGRESS_MIN_BYTES)
  try:
    for split in SPLITS:
      w = cache.TokenWriter(tmp / f"{split}.bin", dtype, int(cfg.data_limit))
      try:
        for piece in source.pieces(split):
          ids = tok.encode(piece.text)
          # One EOS between documents; word/BPE already end each line with EOS.
          if piece.end_of_doc and (len(ids) == 0 or ids[-1] != tok.eos_id):
            ids = np.append(ids, np.int32(tok.eos_id))
          w.write(ids, piece.nbytes)
          bar.update(piece.nbytes)
          if w.full:
            break
      finally:
        w.close()
      lengths[split], nbytes[split] = w.tokens, w.bytes
  finally:
    bar.close()
  if sum(lengths.values()) == 0:
    raise DataError(f"empty corpus: dataset {source.name!r} produced no tokens")
  cache.write_meta(tmp, dict(
      version=cache.CACHE_VERSION, key=key, dataset=source.name, tokenizer=cfg.tokenizer,
      vocab_size=tok.vocab_size, dtype=np.dtype(dtype).name, lengths=lengths, bytes=nbytes,
      data_limit=int(cfg.data_limit), num_files=len(source.fingerprint),
      build_seconds=round(time.perf_counter() - t0, 3)))


def corpus_entry(cfg) -> tuple[Source, Path, str]:
  """Resolves the source and the cache entry path of ``cfg`` without building anything.

  Returns:
    (source, entry directory, full cache key).
  """
  source = resolve_source(cfg)
  _check_common(cfg)
  material = dict(dataset=cfg.dataset, sources=source.fingerprint, tokenizer=cfg.tokenizer,
                  vocab_size=int(cfg.vocab_size) if needs_training(cfg.tokenizer) else None,
                  data_limit=int(cfg.data_limit))
  key = cache.cache_key(material)
  root = cache.cache_root(cfg.cache_dir)
  return source, root / f"{cfg.dataset}-{cfg.tokenizer}-{key[:20]}", key


def load_corpus(cfg) -> Corpus:
  """Tokenizes ``cfg``'s dataset once into the cache and memory-maps it.

  The first call for a given (sources, tokenizer, vocab cap, data_limit) tokenizes with a
  progress bar on stderr; later calls only stat the source files and open the memmaps. A
  corrupt entry (truncated or missing token file, garbage meta.json) is reported in one line
  on stderr and rebuilt.

  Args:
    cfg: config.data (see ``default_data_config``).
  Returns:
    The :class:`Corpus`.
  Raises:
    DataError: bad dataset/tokenizer name, missing path, empty corpus, undecodable bytes.
      Nothing is left on disk in that case.
  """
  source, entry, key = corpus_entry(cfg)
  problem = cache.entry_problem(entry, SPLITS)
  if problem is not None:  # truncated token file, garbage meta.json, ...: tokenize again
    print(f"token cache entry {entry} is corrupt ({problem}); rebuilding it", file=sys.stderr)
    cache.discard(entry)
  meta = cache.read_meta(entry)
  if meta is None:
    # a disk that fills up (or a read-only cache folder) is one line; nothing is left behind
    try:
      with writing("the token cache", str(entry.parent), _cache_bytes(cfg, source)):
        cache.build_atomically(entry, lambda tmp: _build(tmp, cfg, source, key))
    except StorageError as e:
      raise StorageError(f"{e}; free space, or set data.cache_dir (or BK_JAX_CACHE) to a folder "
                         f"on another disk") from None
    meta = cache.read_meta(entry)
    assert meta is not None, entry
  tok = ByteTokenizer() if cfg.tokenizer == "byte" else load_tokenizer(cfg.tokenizer, entry)
  splits = {s: cache.open_tokens(entry / f"{s}.bin", meta["dtype"], meta["lengths"][s])
            for s in SPLITS}
  return Corpus(cfg.dataset, int(meta["vocab_size"]), tok, splits, dict(meta["bytes"]), entry)


def _cache_bytes(cfg, source: Source) -> int:
  """What a cache entry of ``source`` needs at most: one token per source byte (the byte
  tokenizer; word and BPE tokens are fewer), each split capped at data_limit tokens."""
  tokens = source.total_bytes
  if int(cfg.data_limit):
    tokens = min(tokens, len(SPLITS) * int(cfg.data_limit))
  itemsize = 2 if cfg.tokenizer == "byte" or int(cfg.vocab_size) <= 1 << 16 else 4
  return tokens * itemsize


def vocab_size(cfg) -> int:
  """The model vocabulary for ``cfg``.

  Byte-level and synthetic answers come from constants; word/BPE vocabularies depend on the
  train split, so they load (and on first use build) the cached corpus.

  Args:
    cfg: config.data.
  Returns:
    Vocabulary size (all ids are < this).
  """
  if cfg.dataset == "synthetic":
    return task_vocab_size(cfg.synthetic)
  resolve_source(cfg)  # validates the dataset name and path even when the answer is constant
  _check_common(cfg)
  if cfg.tokenizer == "byte":
    return ByteTokenizer.vocab_size
  return load_corpus(cfg).vocab_size

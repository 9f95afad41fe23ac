"""Document boundaries of a cached corpus: lengths in tokens, their distribution, long documents.

The token cache stores each split as one stream (documents joined by EOS), and the word and BPE
tokenizers also end every line with EOS, so boundaries cannot be read back from the tokens. They
are recounted from the source with the corpus's own tokenizer and the cache builder's rule (a
document's pieces, then one EOS unless its last piece already ended with one;
``corpus._build``), checked against the cached split length, and stored next to the cache entry
(``doc_lengths.<split>.npy``), so a split is counted once. Byte-level counts need no encoding
(one token per UTF-8 byte).
"""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np

from bk_jax.data.config import SPLITS
from bk_jax.data.errors import DataError
from bk_jax.data.tokenizers import ByteTokenizer

#: Length thresholds (tokens) of the summary's "documents at least this long" counts.
SUMMARY_THRESHOLDS = (1024, 8192, 32768, 131072)


def _count(source, split: str, tok) -> np.ndarray:
  """Token length of every document of `split`, before any data_limit cut."""
  byte = isinstance(tok, ByteTokenizer)
  lengths, n = [], 0
  for piece in source.pieces(split):
    if byte:  # one id per byte, and byte ids never equal EOS
      k, ends_with_eos = piece.nbytes, False
    else:
      ids = tok.encode(piece.text)
      k, ends_with_eos = len(ids), bool(len(ids)) and int(ids[-1]) == tok.eos_id
    n += k
    if piece.end_of_doc:
      lengths.append(n + (0 if ends_with_eos else 1))
      n = 0
  return np.asarray(lengths, np.int64)


def _cut(lengths: np.ndarray, limit: int) -> np.ndarray:
  """The lengths behind the first `limit` tokens of the stream (the last one cut short)."""
  ends = np.cumsum(lengths)
  if not len(ends) or limit >= ends[-1]:
    return lengths
  keep = int(np.searchsorted(ends, limit, side="left")) + 1  # documents that reach the limit
  out = lengths[:keep].copy()
  out[-1] -= int(ends[keep - 1]) - limit
  return out[out > 0]


def document_lengths(data_cfg, splits: Sequence[str] = SPLITS) -> dict[str, np.ndarray]:
  """Length in tokens of every document of each split, as the cache holds them.

  Args:
    data_cfg: config.data of a text dataset.
    splits: the splits to return.

  Returns:
    {split: int64 (D,)}, in stream order; the lengths add up to the split's cached token count
    (with a data_limit the last document is cut where the split is).

  Raises:
    DataError: a synthetic dataset, or counts that do not add up to the cached split (a
      tokenizer that is not deterministic).
  """
  from bk_jax.data.corpus import corpus_entry, load_corpus

  if data_cfg.dataset == "synthetic":
    raise DataError("the synthetic tasks have no documents")
  corpus = load_corpus(data_cfg)
  source, entry, _ = corpus_entry(data_cfg)
  out = {}
  for split in splits:
    if split not in SPLITS:
      raise DataError(f"unknown split {split!r}; valid: {', '.join(SPLITS)}")
    path = entry / f"doc_lengths.{split}.npy"
    if path.is_file():
      out[split] = np.load(path)
      continue
    lengths = _count(source, split, corpus.tokenizer)
    if int(data_cfg.data_limit):
      lengths = _cut(lengths, int(data_cfg.data_limit))
    want = len(corpus.splits[split])
    if int(lengths.sum()) != want:
      raise DataError(f"document lengths of the {split} split add up to {int(lengths.sum()):,} "
                      f"tokens, the cache holds {want:,} ({entry})")
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}.npy")
    np.save(tmp, lengths)
    os.replace(tmp, path)
    out[split] = lengths
  return out


def length_summary(lengths: np.ndarray, thresholds: Sequence[int] = SUMMARY_THRESHOLDS) -> dict:
  """The distribution of document lengths (tokens).

  Args:
    lengths: (D,) document lengths.
    thresholds: report how many documents (and tokens) are at least this long.

  Returns:
    dict(documents, tokens, mean, p50, p90, p99, max, at_least={threshold: {documents, tokens}},
    histogram=[{from, to, documents, tokens}] over power-of-two bins).
  """
  a = np.asarray(lengths, np.int64)
  if a.size == 0:
    return dict(documents=0, tokens=0)
  q = np.percentile(a, [50, 90, 99])
  edges = 2 ** np.arange(0, int(np.ceil(np.log2(a.max() + 1))) + 1)
  idx = np.searchsorted(edges, a, side="right") - 1
  hist = [{"from": int(edges[i]), "to": int(edges[i + 1]), "documents": int((idx == i).sum()),
           "tokens": int(a[idx == i].sum())} for i in range(len(edges) - 1) if (idx == i).any()]
  return dict(documents=int(a.size), tokens=int(a.sum()), mean=float(a.mean()), p50=float(q[0]),
              p90=float(q[1]), p99=float(q[2]), max=int(a.max()),
              at_least={int(t): dict(documents=int((a >= t).sum()), tokens=int(a[a >= t].sum()))
                        for t in thresholds},
              histogram=hist)


def long_documents(data_cfg, split: str, min_tokens: int, max_docs: int = 0) -> list[np.ndarray]:
  """The documents of `split` with at least `min_tokens` tokens (longest first).

  Args:
    data_cfg: config.data of a text dataset.
    split: "valid" or "test" for held-out documents.
    min_tokens: the shortest document kept.
    max_docs: keep at most this many (0: all).

  Returns:
    int32 token arrays, each a whole document (its closing EOS included).
  """
  from bk_jax.data.corpus import load_corpus

  lengths = document_lengths(data_cfg, [split])[split]
  starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
  order = [i for i in np.argsort(-lengths, kind="stable") if lengths[i] >= min_tokens]
  if max_docs:
    order = order[:max_docs]
  tokens = load_corpus(data_cfg).splits[split]
  return [np.asarray(tokens[starts[i]:starts[i] + lengths[i]], np.int32) for i in order]

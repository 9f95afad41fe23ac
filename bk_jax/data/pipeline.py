"""grain pipelines over cached corpora and synthetic tasks, and the streaming-eval reader.

Text pipeline (per process)::

    range(W) -> slice(process shard) -> shuffle(seed) -> map(window) -> batch(B) -> repeat

where window w is ``tokens[w*N : w*N + N + 1]`` of the split (non-overlapping N-token windows
plus the one-token overlap the shifted targets need), ``W = (T - 1) // N``. Shuffling before
batching with ``repeat(reseed_each_epoch=True)`` gives a new order every epoch; ``batch``
drops the remainder of each epoch so every batch has exactly B rows.

Synthetic pipeline: the elements are whole batches, ``make_synthetic_batch(seed=split seed,
index=k)`` for shuffled batch indices k, because the generators are vectorised over the batch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import grain
import numpy as np

from bk_jax.data.config import SPLITS, default_data_config
from bk_jax.data.corpus import load_corpus
from bk_jax.data.errors import DataError
from bk_jax.data.synthetic import make_synthetic_batch, min_seq_len, synthetic_seed, task_vocab_size


def batch_size_for(seq_len: int, batch_size: int, tokens_per_batch: int) -> int:
  """Batch size from a token budget: ``max(1, tokens_per_batch // seq_len)`` if it is > 0.

  Args:
    seq_len: N.
    batch_size: the fixed batch size, used when ``tokens_per_batch <= 0``.
    tokens_per_batch: token budget per batch (0 = use ``batch_size``).
  Returns:
    The batch size.
  """
  if tokens_per_batch > 0:
    return max(1, int(tokens_per_batch) // int(seq_len))
  return int(batch_size)


def shuffle_seed(seed: int) -> int:
  """The seed grain's shuffle of the training windows gets for run seed `seed`."""
  # grain's shuffle uses seed + epoch for epoch e, so seeds s and s+1 would replay each
  # other's epochs shifted by one; an odd multiplier breaks that coincidence.
  return (int(seed) * 0x9E3779B1 + 0x7F4A7C15) % (1 << 31)


def _check_split(split: str) -> None:
  if split not in SPLITS:
    raise DataError(f"unknown split {split!r}; valid: {', '.join(SPLITS)}")


class _Window:
  """grain map: window index -> dict(inputs, targets, mask). Opens the memmap lazily so the
  pipeline pickles as a few numbers (worker processes never copy the corpus)."""

  def __init__(self, path: Path, dtype: str, length: int, seq_len: int):
    self.path, self.dtype, self.length, self.seq_len = path, dtype, length, seq_len
    self._tokens: np.ndarray | None = None

  def __getstate__(self):
    return {**self.__dict__, "_tokens": None}

  def __call__(self, w: int) -> dict[str, np.ndarray]:
    if self._tokens is None:
      self._tokens = np.memmap(self.path, dtype=self.dtype, mode="r", shape=(self.length,))
    n = self.seq_len
    x = np.asarray(self._tokens[w * n : w * n + n + 1], dtype=np.int32)
    return dict(inputs=x[:-1], targets=x[1:], mask=np.ones((n,), np.float32))


def _shard(num: int, process_index: int, process_count: int) -> slice:
  # Equal shard sizes on every process keep multi-host steps in lockstep.
  per = num // process_count
  return slice(process_index, process_index + per * process_count, process_count)


def steps_per_epoch(data_cfg, seq_len: int, batch_size: int, *, process_count: int = 1) -> int:
  """Batches per process in one pass over the train split (0 when too short for a batch).

  Args:
    data_cfg: config.data.
    seq_len: N.
    batch_size: per-process batch B.
    process_count: number of processes sharing the data.
  Returns:
    ``(W // process_count) // B`` with W windows (text) or samples (synthetic).
  """
  if data_cfg.dataset == "synthetic":
    return int(data_cfg.synthetic.num_samples) // (batch_size * process_count)
  n_tokens = len(load_corpus(data_cfg).splits["train"])
  return (max(0, n_tokens - 1) // seq_len // process_count) // batch_size


def make_train_dataset(data_cfg, seq_len: int, batch_size: int, *, seed: int,
                       split: str = "train", process_index: int = 0, process_count: int = 1,
                       num_epochs: int | None = None) -> grain.MapDataset:
  """The batched, shuffled, sharded training pipeline.

  Args:
    data_cfg: config.data.
    seq_len: N, tokens per row.
    batch_size: per-process batch B.
    seed: shuffle seed (same seed, same batches; another seed, another order).
    split: "train", "valid" or "test".
    process_index, process_count: this process's shard of the windows.
    num_epochs: epochs to repeat (None = forever; each epoch reshuffled).
  Returns:
    MapDataset of dict(inputs=int32 (B,N), targets=int32 (B,N), mask=float32 (B,N)).
  Raises:
    DataError: if the split cannot fill one batch per process; the message names the
      number of tokens needed.
  """
  _check_split(split)
  n, b = int(seq_len), int(batch_size)
  if n < 1 or b < 1 or not 0 <= process_index < process_count:
    raise DataError(f"bad pipeline shape: seq_len={n}, batch_size={b}, "
                    f"process {process_index} of {process_count}")
  if data_cfg.dataset == "synthetic":
    tc = data_cfg.synthetic
    task_vocab_size(tc)
    if n < min_seq_len(tc):
      raise DataError(f"synthetic task {tc.task} needs seq_len >= {min_seq_len(tc)}, got {n}")
    num = int(tc.num_samples) // b  # global batches per epoch
    if num < process_count:
      raise DataError(f"data.synthetic.num_samples={tc.num_samples} is too small for one "
                      f"batch of {b} on each of {process_count} processes: needs "
                      f"{b * process_count}")
    content_seed = synthetic_seed(tc, split)
    ds = grain.MapDataset.range(num)[_shard(num, process_index, process_count)]
    ds = ds.shuffle(seed=shuffle_seed(seed)).map(
        lambda k: make_synthetic_batch(tc, n, b, seed=content_seed, index=int(k)))
    return ds.repeat(num_epochs)

  corpus = load_corpus(data_cfg)
  tokens = corpus.splits[split]
  num = max(0, len(tokens) - 1) // n
  if num // process_count < b:
    need = b * process_count * n + 1
    hint = too_short_hint(data_cfg, len(tokens))
    raise DataError(f"{data_cfg.dataset} {split} split has {len(tokens)} tokens; seq_len {n} "
                    f"x batch {b} x {process_count} process(es) needs at least {need} tokens "
                    f"({hint} or a smaller batch)")
  if not isinstance(tokens, np.memmap):  # only an empty split is not memmapped
    raise DataError(f"{split} split is empty")
  window = _Window(Path(tokens.filename), tokens.dtype.name, len(tokens), n)
  ds = grain.MapDataset.range(num)[_shard(num, process_index, process_count)]
  ds = ds.shuffle(seed=shuffle_seed(seed)).map(window).batch(b, drop_remainder=True)
  return ds.repeat(num_epochs)


def too_short_hint(data_cfg, have: int) -> str:
  """What to do about a split of `have` tokens that is too short: raise data.data_limit only
  when the limit cut it (a split stops at exactly data_limit tokens), else a larger corpus."""
  limit = int(data_cfg.data_limit)
  return "raise data.data_limit" if limit and have >= limit else "use a larger corpus"


def make_iterator(dataset: grain.MapDataset, data_cfg=None) -> grain.DatasetIterator:
  """A checkpointable iterator over ``dataset``.

  Save/restore with orbax: ``ocp.args.Composite(data=grain.checkpoint.CheckpointSave(it))``
  and ``grain.checkpoint.CheckpointRestore(it)`` on a fresh iterator of the same pipeline.

  Args:
    dataset: from :func:`make_train_dataset`.
    data_cfg: config.data for ``read_threads`` / ``prefetch_batches`` (defaults if None).
  Returns:
    grain DatasetIterator with ``get_state`` / ``set_state``.
  """
  cfg = data_cfg if data_cfg is not None else default_data_config()
  threads, prefetch = int(cfg.read_threads), int(cfg.prefetch_batches)
  if prefetch <= 0 or threads <= 0:
    threads, prefetch = 0, 0  # read synchronously in the calling thread
  opts = grain.ReadOptions(num_threads=threads, prefetch_buffer_size=prefetch)
  return iter(dataset.to_iter_dataset(opts))


def stream_tokens(data_cfg, split: str, max_tokens: int, chunk_size: int) -> Iterator[np.ndarray]:
  """Sequential reader of a split for streaming evaluation.

  Yields chunks ``tokens[s : s + chunk_size + 1]`` for s = 0, chunk_size, 2*chunk_size, ...;
  consecutive chunks overlap by one token, so ``chunk[:-1]`` / ``chunk[1:]`` are inputs /
  targets and every target of the split is scored exactly once. Only one chunk is in memory.

  Args:
    data_cfg: config.data (a text dataset).
    split: "train", "valid" or "test".
    max_tokens: stop after this many targets (<= 0: the whole split).
    chunk_size: targets per chunk.
  Yields:
    int32 arrays of shape (chunk_size + 1,); the last may be shorter (at least 2 tokens).
  """
  _check_split(split)
  if chunk_size < 1:
    raise DataError(f"chunk_size must be >= 1, got {chunk_size}")
  tokens = load_corpus(data_cfg).splits[split]
  total = max(0, len(tokens) - 1)
  if max_tokens > 0:
    total = min(total, int(max_tokens))
  for s in range(0, total, chunk_size):
    e = min(s + chunk_size, total)
    yield np.asarray(tokens[s : e + 1], dtype=np.int32)

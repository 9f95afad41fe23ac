"""Streaming evaluation: a long stream scored chunk by chunk with the model's state carried.

One jitted chunk step ``(params, cache, inputs, targets, mask) -> (cache, sums)`` runs the model
with ``cache=`` (the recurrent state of ResNet-BK / Mamba, the KV ring buffer of the transformer)
and donates the cache, so memory does not grow with the tokens consumed. A chunk longer than
`sub_chunk` is a `lax.scan` over sub-chunks (bounded activations at large chunk sizes). A final
short chunk is padded and masked (no second compile); padding only comes after the last real
token, so it cannot change any scored prediction. `sums` is (3, B, n_buckets): masked NLL, token
count and correct top-1 predictions per stream (row) and absolute-position bucket (`buckets.py`);
they stay on the device and are added on the host in float64 every `log_every` chunks.

Entry point for the trainer (`--eval_only --streaming`) and `scripts/eval_streaming.py`:
`run_streaming_eval(config, checkpoint=None) -> dict`.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import sys
import time
from typing import Any, Callable, Iterable, Iterator

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from bk_jax.runtime.devices import select_device
from bk_jax.runtime.provenance import stamped
from bk_jax.runtime.jsonio import write_json
from bk_jax.runtime.memory import memory_usage
from bk_jax.runtime.metrics import perplexity
from bk_jax.eval.buckets import DEFAULT_EDGES, bucket_table, check_edges, format_bucket_table
from bk_jax.eval.loading import EvalError, diverged_lengths, diverged_warning, load_checkpoint

#: Sub-chunk of the lax.scan inside a chunk: on the 2-core CPU 1k-token pieces run ~2x faster
#: than one 4k-16k piece (activations stay in cache); configs/base.py's config.eval.sub_chunk.
DEFAULT_SUB_CHUNK = 1024

Chunk = tuple[np.ndarray, np.ndarray, np.ndarray | None]  # inputs, targets (B, c), mask or None


@functools.lru_cache(maxsize=16)
def _chunk_step(graphdef, edges: tuple[int, ...], n_sub: int) -> Callable:
  """The jitted chunk step for one model structure (cached: per-length checkpoints reuse it)."""
  inner = jnp.asarray(edges[1:], jnp.int32)
  nb = len(edges)

  def step(state, cache, inputs, targets, mask):

    def sub(cache, xs):
      tok, tgt, m = xs  # (B, s)
      # The model must be built at the trace level where it runs (this lax.scan body): its own
      # NNX transforms (nnx.remat for remat "full"/"dots", nnx.scan for scan_layers) split and
      # update its Variables and refuse Variables of an outer trace (TraceContextError). A plain
      # merge would reuse the Variable objects of `state`, which jit created at the outer level,
      # so merge fresh copies here. Trace-time only: nothing is copied at run time.
      model = nnx.merge(graphdef, state, copy=True)
      pos = cache.pos + jnp.arange(tok.shape[1], dtype=jnp.int32)
      logits, cache = model(tok, cache=cache)
      lse = jax.nn.logsumexp(logits, axis=-1)
      tl = jnp.take_along_axis(logits, tgt[..., None], axis=-1)[..., 0]
      nll = (lse - tl) * m
      hit = (jnp.argmax(logits, axis=-1) == tgt).astype(jnp.float32) * m
      onehot = (jnp.searchsorted(inner, pos, side="right")[:, None] ==
                jnp.arange(nb)[None, :]).astype(jnp.float32)  # (s, nb)
      per = jnp.stack([nll, m, hit])  # (3, B, s)
      return cache, per @ onehot  # (3, B, nb)

    if n_sub == 1:
      return sub(cache, (inputs, targets, mask))
    split = lambda a: jnp.swapaxes(a.reshape(a.shape[0], n_sub, -1), 0, 1)
    cache, sums = jax.lax.scan(sub, cache, (split(inputs), split(targets), split(mask)))
    return cache, sums.sum(0)

  return jax.jit(step, donate_argnums=(1,))


@dataclasses.dataclass
class StreamResult:
  edges: tuple[int, ...]
  nll: np.ndarray  # (n_buckets,) float64 sums over every stream
  count: np.ndarray
  correct: np.ndarray
  chunks: int
  seconds: float  # streaming wall time (compile excluded)
  compile_seconds: float
  per_stream: np.ndarray  # (3, B, n_buckets): nll, count, correct of each stream (row)

  @property
  def tokens(self) -> int:
    return int(round(self.count.sum()))

  @property
  def loss(self) -> float:
    return float(self.nll.sum() / max(self.count.sum(), 1.0))

  @property
  def accuracy(self) -> float:
    return float(self.correct.sum() / max(self.count.sum(), 1.0))

  def buckets(self) -> list[dict]:
    return bucket_table(self.edges, self.nll, self.count, self.correct)


def _sub_chunks(chunk_size: int, sub_chunk: int | None) -> int:
  if not sub_chunk or sub_chunk >= chunk_size or chunk_size % sub_chunk:
    return 1
  return chunk_size // sub_chunk


class StreamingEvaluator:
  """Scores a stream of chunks with the state of `model` carried from chunk to chunk.

  Args:
    model: a bk_jax LanguageModel (any kind).
    chunk_size: tokens per chunk and row (every chunk is padded to it).
    batch_size: independent streams evaluated side by side (rows of each chunk).
    edges: position-bucket edges (buckets.py).
    sub_chunk: lax.scan over sub-chunks of this length when it divides chunk_size.
  """

  def __init__(self, model: nnx.Module, *, chunk_size: int, batch_size: int = 1,
               edges=DEFAULT_EDGES, sub_chunk: int | None = None):
    if chunk_size < 1:
      raise EvalError(f"chunk_size must be >= 1, got {chunk_size}")
    self.model, self.chunk, self.batch = model, int(chunk_size), int(batch_size)
    self.edges = check_edges(edges)
    self.graphdef, self.state = nnx.split(model)
    self.n_sub = _sub_chunks(self.chunk, sub_chunk)
    self.step = _chunk_step(self.graphdef, self.edges, self.n_sub)
    self._compiled = None
    self.compile_seconds = 0.0

  def _shapes(self):
    tok = jax.ShapeDtypeStruct((self.batch, self.chunk), jnp.int32)
    return tok, tok, jax.ShapeDtypeStruct((self.batch, self.chunk), jnp.float32)

  def compile(self) -> float:
    """Ahead-of-time compile (timed separately from the stream); returns seconds."""
    if self._compiled is None:
      t = time.perf_counter()
      cache = jax.eval_shape(lambda: self.model.init_cache(self.batch))
      self._compiled = self.step.lower(self.state, cache, *self._shapes()).compile()
      self.compile_seconds = time.perf_counter() - t
    return self.compile_seconds

  def _pad(self, inputs, targets, mask) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    inputs = np.asarray(inputs, np.int32).reshape(self.batch, -1)
    targets = np.asarray(targets, np.int32).reshape(self.batch, -1)
    n = inputs.shape[1]
    mask = (np.ones((self.batch, n), np.float32) if mask is None
            else np.asarray(mask, np.float32).reshape(self.batch, n))
    if n > self.chunk:
      raise EvalError(f"chunk of {n} tokens is longer than chunk_size={self.chunk}")
    if n < self.chunk:
      pad = ((0, 0), (0, self.chunk - n))
      inputs, targets, mask = np.pad(inputs, pad), np.pad(targets, pad), np.pad(mask, pad)
    return inputs, targets, mask

  def run(self, chunks: Iterable[Chunk], *, total_tokens: int | None = None, log_every: int = 10,
          progress: bool = True, log: Callable[[str], None] | None = print,
          desc: str = "streaming") -> StreamResult:
    """Streams `chunks` from a fresh state; progress line every `log_every` chunks plus a bar."""
    self.compile()
    nb = len(self.edges)
    acc = np.zeros((3, self.batch, nb), np.float64)
    pending: list[jax.Array] = []
    cache = self.model.init_cache(self.batch)
    bar = None
    if progress:
      from tqdm import tqdm
      bar = tqdm(total=total_tokens, unit="tok", unit_scale=True, desc=desc, file=sys.stderr,
                 dynamic_ncols=True, mininterval=1.0)
    n_chunks, sent, t0 = 0, 0, time.perf_counter()

    def flush() -> None:
      nonlocal pending, acc
      if pending:
        acc = acc + np.sum(np.asarray(jax.device_get(pending), np.float64), axis=0)
        pending = []

    for inputs, targets, mask in chunks:
      inputs, targets, mask = self._pad(inputs, targets, mask)
      cache, sums = self._compiled(self.state, cache, inputs, targets, mask)
      pending.append(sums)
      n_chunks += 1
      real = int(mask.sum()) if mask is not None else self.chunk * self.batch
      sent += real
      if bar is not None:
        bar.update(real)
      if n_chunks % log_every == 0:
        flush()
        if log is not None:
          el = time.perf_counter() - t0
          loss = acc[0].sum() / max(acc[1].sum(), 1.0)
          msg = (f"chunk {n_chunks}: {int(acc[1].sum()):,} tokens | loss {loss:.4f} | "
                 f"ppl {perplexity(loss):.3f} | {acc[1].sum() / max(el, 1e-9):,.0f} tok/s")
          (bar.write(msg, file=sys.stderr) if bar is not None else log(msg))
    flush()
    jax.block_until_ready(cache)
    secs = time.perf_counter() - t0
    if bar is not None:
      bar.close()
    return StreamResult(edges=self.edges, nll=acc[0].sum(0), count=acc[1].sum(0),
                        correct=acc[2].sum(0), chunks=n_chunks, seconds=secs,
                        compile_seconds=self.compile_seconds, per_stream=acc)


def text_chunks(stream: Iterable[np.ndarray]) -> Iterator[Chunk]:
  """(chunk+1)-token windows overlapping by one (bk_jax.data.stream_tokens) -> model chunks."""
  for w in stream:
    w = np.asarray(w, np.int32)
    yield w[None, :-1], w[None, 1:], None


def _split(config: ml_collections.ConfigDict) -> str:
  return str(config.eval.get("split", "test"))


def summarize(res: StreamResult, *, bytes_per_token: float | None = None) -> dict:
  """Loss, perplexity, bits per byte (when known), tokens, chunks, tokens/s and peak memory."""
  loss = res.loss
  mem = memory_usage()  # device peak since start on accelerators, host peak RSS on the CPU
  out = dict(loss=loss, perplexity=perplexity(loss), tokens=res.tokens, chunks=res.chunks,
             tokens_per_s=res.tokens / max(res.seconds, 1e-9), seconds=res.seconds,
             compile_seconds=res.compile_seconds, peak_memory_gb=mem.peak_gb,
             memory_kind=mem.peak_kind, host_rss_gb=mem.host_rss_gb, buckets=res.buckets())
  if bytes_per_token and math.isfinite(bytes_per_token) and bytes_per_token > 0:
    out["bits_per_byte"] = loss / math.log(2.0) / bytes_per_token
    out["bytes_per_token"] = bytes_per_token
  return out


def evaluate_model(model: nnx.Module, config: ml_collections.ConfigDict, *, progress: bool = True,
                   log: Callable[[str], None] | None = print) -> dict:
  """Streams config.eval.eval_tokens tokens of config.eval.split through `model`.

  A split shorter than eval_tokens is read to its end; `tokens` reports the true count and
  `truncated_split` is set.
  """
  from bk_jax import data as bk_data

  e = config.eval
  split, want, chunk = _split(config), int(e.eval_tokens), int(e.chunk_size)
  if config.data.dataset == "synthetic":
    raise EvalError("streaming evaluation reads a text split; for the synthetic tasks use "
                    "scripts/eval_extrapolation.py (bk_jax.eval.extrapolation)")
  corpus = bk_data.load_corpus(config.data)
  if corpus.vocab_size > int(config.model.vocab_size):
    raise EvalError(f"data vocabulary {corpus.vocab_size} does not fit the model's "
                    f"vocab_size={config.model.vocab_size}")
  available = max(0, len(corpus.splits[split]) - 1)
  if available < 1:
    raise EvalError(f"split {split!r} of {config.data.dataset} is empty")
  expected = min(available, want) if want > 0 else available
  ev = StreamingEvaluator(model, chunk_size=chunk, edges=tuple(e.get("bucket_edges", DEFAULT_EDGES)),
                          sub_chunk=int(e.sub_chunk) or None)
  ev.compile()
  res = ev.run(text_chunks(bk_data.stream_tokens(config.data, split, want, chunk)),
               total_tokens=expected, progress=progress, log=log, desc=f"{split} stream")
  out = summarize(res, bytes_per_token=corpus.bytes_per_token(split)
                  if corpus.split_bytes.get(split) else None)
  out.update(split=split, dataset=config.data.dataset, tokenizer=config.data.tokenizer,
             requested_tokens=want, chunk_size=chunk, sub_chunks=ev.n_sub, model_kind=config.model.kind,
             truncated_split=bool(want > 0 and available < want))
  if out["truncated_split"]:
    out["note"] = (f"split {split!r} has only {available:,} scored tokens (< eval_tokens={want:,}); "
                   f"evaluated to its end")
  if config.model.kind == "transformer":
    w = int(config.model.transformer.cache_window)
    out["attention_window"] = w
    out["context_note"] = (f"transformer baseline streams with its KV-cache ring buffer: every token "
                           f"attends to at most the previous {w:,} tokens (sliding window), not the "
                           f"full stream")
  return out


def print_summary(out: dict, log: Callable[[str], None] = print) -> None:
  s = (f"Streaming eval ({out['split']}, chunk {out['chunk_size']}): {out['tokens']:,} tokens in "
       f"{out['chunks']} chunks | loss {out['loss']:.4f} | ppl {out['perplexity']:.3f}")
  if "bits_per_byte" in out:
    s += f" | {out['bits_per_byte']:.4f} bits/byte"
  s += (f" | {out['tokens_per_s']:,.0f} tok/s (compile {out['compile_seconds']:.1f}s) | peak "
        f"memory {out['peak_memory_gb']:.3f} GB ({out['memory_kind']})")
  log(s)
  if out.get("note"):
    log("note: " + out["note"])
  if out.get("context_note"):
    log("note: " + out["context_note"])
  log(format_bucket_table(out["buckets"]))


def default_output_path(save_dir: str, checkpoint_name: str, split: str) -> str:
  tag = checkpoint_name.replace(os.sep, "_")
  return os.path.join(os.path.abspath(save_dir), f"streaming_eval_{split}_{tag}.json")


def run_streaming_eval(config: ml_collections.ConfigDict, checkpoint: str | None = None, *,
                       config_is_explicit: bool = True, output: str | None = None) -> dict:
  """Loads a trainer checkpoint of config.save_dir and streams config.eval over it.

  Args:
    config: the run config (eval.eval_tokens, eval.chunk_size, eval.split, data, save_dir).
    checkpoint: None/"latest", a name ("checkpoint_seq8192_final"), a step or a path.
    config_is_explicit: check config.model against the checkpoint (EvalError on a mismatch);
      False uses the checkpoint's model config as is.
    output: JSON path (default save_dir/streaming_eval_<split>_<checkpoint>.json).

  Returns:
    dict with loss, perplexity, bits_per_byte (text data), tokens, chunks, tokens_per_s,
    peak_memory_gb + memory_kind, buckets (loss per position bucket), checkpoint, output path.
  """

  select_device(str(config.get("device", "auto")))
  ck = load_checkpoint(config.save_dir, checkpoint, config if config_is_explicit else None)
  cfg = ck.config
  if not config_is_explicit:  # the eval/data choices still come from the caller
    cfg.eval = ml_collections.ConfigDict(config.eval.to_dict())
    cfg.save_dir = config.save_dir
  console = bool(config.get("logging", {}).get("console", True))
  log = print if console else None
  progress = bool(config.get("logging", {}).get("progress_bar", True))
  out = evaluate_model(ck.model, cfg, progress=progress, log=log)
  out.update(checkpoint=ck.path, checkpoint_name=ck.name, backend=jax.default_backend(),
             n_params=sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(ck.model, nnx.Param))))
  warning = diverged_warning(ck)
  if warning:
    out["diverged_lengths"], out["warning"] = diverged_lengths(ck.meta), warning
  out["output"] = write_json(output or default_output_path(config.save_dir, ck.name, out["split"]),
                             stamped(out))
  if warning:
    print(f"WARNING: {warning}", file=sys.stderr)
  if console:
    print_summary(out)
    print(f"Results saved: {out['output']}")
  return out

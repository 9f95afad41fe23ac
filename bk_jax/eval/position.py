"""Perplexity by position inside long held-out documents: does loss keep falling with context?

Every document is streamed from a fresh state (position 0 = its first token) through the same
jitted chunk step as the streaming evaluation (`StreamingEvaluator`, state carried across
chunks), several documents side by side, and the loss is summed per position bucket
(`buckets.py`). All documents are cut to one length, so every bucket averages over the same
documents: a falling curve means later tokens are predicted better because of what came
before, not because the later buckets hold other documents. Past the training length the curve
shows whether a model uses context it was never trained on (for the Transformer, whose stream is
a sliding window of `transformer.cache_window` keys, only the last window counts).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from flax import nnx

from bk_jax.eval.buckets import bucket_table, check_edges
from bk_jax.eval.loading import EvalError
from bk_jax.eval.streaming import DEFAULT_SUB_CHUNK, StreamingEvaluator
from bk_jax.runtime.markdown import md_table
from bk_jax.runtime.metrics import perplexity


def doubling_edges(first: int, length: int) -> tuple[int, ...]:
  """Bucket edges 0, first, 2*first, ... below `length` (one bucket per doubling of context).

  Args:
    first: the end of the first bucket (> 0).
    length: the document length; the last bucket runs from the last edge to it.

  Returns:
    Edges starting at 0 (`buckets.check_edges`).
  """
  if first < 1:
    raise EvalError(f"first bucket end must be >= 1, got {first}")
  edges, e = [0], int(first)
  while e < length:
    edges.append(e)
    e *= 2
  return tuple(edges)


def position_table(model: nnx.Module, docs: Sequence[np.ndarray], *, doc_tokens: int,
                   edges: Sequence[int], chunk_size: int, batch_size: int = 1,
                   sub_chunk: int | None = DEFAULT_SUB_CHUNK) -> dict:
  """Loss per position bucket over the first `doc_tokens` predictions of every document.

  Args:
    model: a bk_jax LanguageModel (or any module with the streaming interface).
    docs: int token arrays, each at least `doc_tokens` + 1 tokens long (inputs and the shifted
      targets); longer ones are cut.
    doc_tokens: scored positions per document.
    edges: position-bucket edges (`doubling_edges`).
    chunk_size: streaming chunk (a divisor of `doc_tokens` avoids padding).
    batch_size: documents streamed side by side (a last partial batch is padded with masked rows).
    sub_chunk: see `StreamingEvaluator`.

  Returns:
    dict(documents, doc_tokens, tokens, loss, perplexity, buckets=[{bucket, start, end, tokens,
    loss, perplexity, accuracy}], per_document_loss=[...]).

  Raises:
    EvalError: no documents, or a document shorter than `doc_tokens` + 1.
  """
  short = [len(d) for d in docs if len(d) < doc_tokens + 1]
  if not docs or short:
    raise EvalError(f"perplexity by position needs documents of at least {doc_tokens + 1:,} "
                    f"tokens; got {len(docs)} document(s), {len(short)} too short")
  edges = check_edges(edges)
  ev = StreamingEvaluator(model, chunk_size=chunk_size, batch_size=batch_size, edges=edges,
                          sub_chunk=sub_chunk)
  ev.compile()
  per_doc = []
  total = np.zeros((3, len(edges)), np.float64)
  for s in range(0, len(docs), batch_size):
    group = [np.asarray(d[:doc_tokens + 1], np.int32) for d in docs[s:s + batch_size]]
    real = len(group)
    group += [np.zeros(doc_tokens + 1, np.int32)] * (batch_size - real)  # masked filler rows
    x = np.stack(group)
    mask = np.zeros((batch_size, doc_tokens), np.float32)
    mask[:real] = 1.0
    chunks = ((x[:, a:a + chunk_size], x[:, a + 1:a + 1 + chunk_size], mask[:, a:a + chunk_size])
              for a in range(0, doc_tokens, chunk_size))
    r = ev.run(chunks, progress=False, log=None)
    total += np.stack([r.nll, r.count, r.correct])
    rows = r.per_stream[:, :real].sum(-1)  # (3, real)
    per_doc += (rows[0] / rows[1]).tolist()
  loss = float(total[0].sum() / total[1].sum())
  return dict(documents=len(docs), doc_tokens=int(doc_tokens), tokens=int(total[1].sum()),
              loss=loss, perplexity=perplexity(loss),
              buckets=bucket_table(edges, total[0], total[1], total[2]),
              per_document_loss=per_doc)


def format_table(results: dict[str, dict]) -> str:
  """Markdown: one row per model (`position_table` results by name), the loss (nats/token) of
  every position bucket, then over all positions."""
  labels = [b["bucket"] for b in next(iter(results.values()))["buckets"]]
  return md_table(["model"] + labels + ["all"],
                  [[name] + [b["loss"] for b in r["buckets"]] + [r["loss"]]
                   for name, r in results.items()])

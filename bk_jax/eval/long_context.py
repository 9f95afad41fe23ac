"""The long-context evaluations of one trained checkpoint (scripts/eval_long_context.py).

`run_long_context` loads a trainer checkpoint and runs any of: loss by position inside long
held-out documents (`position`), passkey retrieval by depth x length (`passkey`) — both on a
checkpoint trained on text — and the MQAR grid (`mqar`) on a checkpoint trained on the synthetic
MQAR task. Each returns its rows and a markdown table; the scripts write them as JSON and heat
maps. The model comparison (bk_jax.reports.compare_models) runs the same functions per row.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import ml_collections

from bk_jax.eval import mqar, passkey, position
from bk_jax.eval.loading import EvalError, load_checkpoint


@dataclasses.dataclass(frozen=True)
class PositionSpec:
  """Loss by position: documents of `split` with at least `doc_tokens` + 1 tokens."""
  split: str = "valid"
  doc_tokens: int = 32768
  max_docs: int = 16
  first_edge: int = 512


@dataclasses.dataclass(frozen=True)
class PasskeySpec:
  """Passkey prompts of `lengths` x `depths`, filler from `split`; template None: "python" for
  the code corpora (pysource, pystdlib), else "prose"."""
  lengths: Sequence[int] = (2048, 8192, 32768)
  depths: Sequence[float] = (0.0, 0.25, 0.5, 0.75, 1.0)
  samples: int = 4
  split: str = "test"
  template: str | None = None
  digits: int = 5


@dataclasses.dataclass(frozen=True)
class MQARSpec:
  """The MQAR grid: `lengths` x `kv_pairs` (cells with N >= 4 D), `samples` per cell."""
  lengths: Sequence[int] = (256, 512, 1024, 2048, 4096)
  kv_pairs: Sequence[int] = (16, 32, 64, 128, 256)
  samples: int = 32


def run_long_context(config: ml_collections.ConfigDict, checkpoint: str | None = None, *,
                     position_spec: PositionSpec | None = None,
                     passkey_spec: PasskeySpec | None = None, mqar_spec: MQARSpec | None = None,
                     batch_size: int = 4, chunk_size: int = 8192) -> dict:
  """Runs the chosen evaluations on one checkpoint of config.save_dir.

  Args:
    config: the run config (the checkpoint's own, with any overrides): architecture fields must
      match the checkpoint; runtime fields are the caller's. A Transformer's KV window is widened
      to the longest evaluated context (no sliding window inside a prompt or document).
    checkpoint: None/"latest", a name, a step or a path.
    position_spec, passkey_spec, mqar_spec: the evaluations to run (None: skipped).
    batch_size: documents, prompts or samples streamed side by side.
    chunk_size: streaming chunk.

  Returns:
    {checkpoint, model_kind, position, passkey, mqar (each present when run), table (markdown)}.

  Raises:
    EvalError: nothing to run, a text evaluation on a synthetic-task checkpoint or the reverse.
  """
  from bk_jax.data import load_corpus
  from bk_jax.data.documents import long_documents

  if not (position_spec or passkey_spec or mqar_spec):
    raise EvalError("choose at least one of the position, passkey and MQAR evaluations")
  synthetic = config.data.dataset == "synthetic"
  if synthetic and (position_spec or passkey_spec):
    raise EvalError("loss by position and passkey read a text corpus; this run trained on "
                    "data.dataset='synthetic'")
  if mqar_spec and (not synthetic or config.data.synthetic.task != "mqar"):
    raise EvalError("the MQAR grid needs a checkpoint trained on data.synthetic.task='mqar'")
  if config.model.kind == "transformer":
    longest = max([position_spec.doc_tokens if position_spec else 0] +
                  list(passkey_spec.lengths if passkey_spec else []))
    config.model.transformer.cache_window = max(int(config.model.transformer.cache_window),
                                                longest)
  ck = load_checkpoint(config.save_dir, checkpoint, config)
  name = ck.config.model.kind
  out, tables = dict(checkpoint=ck.path, model_kind=name), []
  if position_spec:
    p = position_spec
    docs = long_documents(config.data, p.split, p.doc_tokens + 1, p.max_docs)
    out["position"] = position.position_table(
        ck.model, docs, doc_tokens=p.doc_tokens,
        edges=position.doubling_edges(p.first_edge, p.doc_tokens),
        chunk_size=min(chunk_size, p.doc_tokens), batch_size=batch_size,
        sub_chunk=int(config.eval.sub_chunk) or None)
    tables.append(f"Loss (nats/token) by position, {out['position']['documents']} {p.split} "
                  f"documents cut to {p.doc_tokens:,} tokens:\n\n" +
                  position.format_table({name: out["position"]}))
  if passkey_spec:
    k = passkey_spec
    template = k.template or ("python" if config.data.dataset in ("pysource", "pystdlib")
                              else "prose")
    corpus = load_corpus(config.data)
    out["passkey"] = passkey.passkey_table(
        ck.model, corpus.tokenizer, corpus.splits[k.split], lengths=list(k.lengths),
        depths=list(k.depths), samples=k.samples, template=template, digits=k.digits,
        chunk_size=chunk_size, batch_size=batch_size, sub_chunk=int(config.eval.sub_chunk) or None)
    tables.append(f"Passkey retrieval (%), template {template!r}:\n\n" +
                  passkey.format_table({name: out["passkey"]}))
  if mqar_spec:
    q = mqar_spec
    out["mqar"] = mqar.mqar_table(ck.model, config.data.synthetic, lengths=list(q.lengths),
                                  kv_pairs=list(q.kv_pairs), samples=q.samples,
                                  batch_size=batch_size, chunk_size=chunk_size,
                                  sub_chunk=int(config.eval.sub_chunk) or None)
    tables.append("MQAR accuracy (%):\n\n" + mqar.format_table({name: out["mqar"]}))
  out["table"] = "\n\n".join(tables)
  return out

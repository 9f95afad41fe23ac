"""Perplexity degradation (the reference's requirement 6.8).

Two views, both from real streaming runs:
  * loss per absolute-position bucket of one stream (StreamResult.buckets(), buckets.py);
  * loss as a function of the training length: every checkpoint_seq{N}_final of a multi-length
    run streamed over the same tokens of the same split.
"""

from __future__ import annotations

import os
from typing import Callable

import ml_collections

from bk_jax.eval.loading import (EvalError, diverged_lengths, load_checkpoint, per_length_checkpoints,
                                    read_meta)


def evaluate_per_length(config: ml_collections.ConfigDict, *, eval_tokens: int | None = None,
                        config_is_explicit: bool = True, progress: bool = True,
                        log: Callable[[str], None] | None = print) -> list[dict]:
  """Streams every per-length checkpoint of config.save_dir over config.eval.split.

  Args:
    config: run config; eval.split / eval.chunk_size / data are used for every checkpoint.
    eval_tokens: tokens per checkpoint (default config.eval.eval_tokens).
    config_is_explicit: check config.model against every checkpoint.

  Returns:
    Rows {train_len, checkpoint, status, loss, perplexity, tokens, tokens_per_s, buckets[,
    bits_per_byte]} sorted by training length. A length whose training DIVERGED is not scored:
    its checkpoint holds the weights restored from before the divergence, so its row has
    status "DIVERGED" and loss/perplexity None.

  Raises:
    EvalError: the run has no checkpoint_seq{N}_final checkpoints.
  """
  from bk_jax.eval.streaming import evaluate_model

  found = per_length_checkpoints(config.save_dir)
  if not found:
    raise EvalError(f"no checkpoint_seq<N>_final checkpoints in {config.save_dir} (a multi-length "
                    f"run writes one per training length)")
  rows = []
  for n, path in found:
    if n in diverged_lengths(read_meta(path)):
      rows.append(dict(train_len=n, checkpoint=os.path.basename(path), status="DIVERGED", loss=None,
                       perplexity=None, tokens=0, tokens_per_s=None, buckets=[]))
      if log is not None:
        log(f"N={n:>7}: not evaluated: training DIVERGED at this length ({os.path.basename(path)} "
            f"holds the weights restored from before the divergence)")
      continue
    ck = load_checkpoint(config.save_dir, path, config if config_is_explicit else None)
    cfg = ck.config
    cfg.eval = ml_collections.ConfigDict(config.eval.to_dict())
    if eval_tokens is not None:
      cfg.eval.eval_tokens = int(eval_tokens)
    out = evaluate_model(ck.model, cfg, progress=progress, log=None)
    row = dict(train_len=n, checkpoint=ck.name, status="trained", loss=out["loss"], perplexity=out["perplexity"],
               tokens=out["tokens"], tokens_per_s=out["tokens_per_s"], buckets=out["buckets"])
    if "bits_per_byte" in out:
      row["bits_per_byte"] = out["bits_per_byte"]
    rows.append(row)
    if log is not None:
      log(f"trained to N={n:>7}: loss {row['loss']:.4f} | ppl {row['perplexity']:.3f} over "
          f"{row['tokens']:,} {out['split']} tokens")
  return rows


def format_per_length(rows: list[dict]) -> str:
  lines = [f"{'train N':>9} {'tokens':>10} {'loss':>8} {'ppl':>10}"]
  for r in rows:
    if r.get("loss") is None:
      lines.append(f"{r['train_len']:>9} {'-':>10} {'-':>8} {'-':>10}  {r.get('status', '')} (not evaluated)")
      continue
    lines.append(f"{r['train_len']:>9} {r['tokens']:>10,} {r['loss']:>8.4f} {r['perplexity']:>10.3f}")
  return "\n".join(lines)

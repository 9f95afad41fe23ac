"""Length extrapolation on the synthetic tasks (the Mamba paper's induction-heads table).

A model trained at one length is scored at test lengths 2^6 ... 2^20. Every test sequence is
streamed through the same jitted chunk step as the text evaluation (state carried across
chunks, sequences shorter than a chunk padded and masked), so a 2^20-token sample costs the
memory of one chunk. Accuracy is exact: correct top-1 predictions over the task's scored
positions (`mask` of bk_jax.data.make_synthetic_batch), counted on the device.
"""

from __future__ import annotations

import math
import sys
from typing import Callable, Iterator, Sequence

import ml_collections
import numpy as np
from flax import nnx

from bk_jax.eval.loading import EvalError, load_checkpoint
from bk_jax.eval.streaming import DEFAULT_SUB_CHUNK, StreamingEvaluator
from bk_jax.runtime.run_config import train_lengths

DEFAULT_LENGTHS = tuple(2 ** k for k in range(6, 21))


def _chunks(batch: dict, chunk: int) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
  n = batch["inputs"].shape[1]
  for s in range(0, n, chunk):
    yield batch["inputs"][:, s:s + chunk], batch["targets"][:, s:s + chunk], batch["mask"][:, s:s + chunk]


def samples_at(length: int, samples: int, token_budget: int, batch_size: int) -> int:
  """Samples scored at `length`: `samples`, cut to `token_budget` tokens, at least one batch."""
  n = min(samples, max(1, token_budget // length)) if token_budget > 0 else samples
  return max(batch_size, int(math.ceil(n / batch_size)) * batch_size)


def task_row(ev: StreamingEvaluator, task_cfg: ml_collections.ConfigDict, length: int, *,
             samples: int, token_budget: int, seed: int) -> dict:
  """Accuracy and loss of `ev`'s model on the scored positions of one task at one length.

  Args:
    ev: a compiled evaluator; its batch size and chunk are used (sequences shorter than the chunk
      are padded to it).
    task_cfg: config.data.synthetic (validated).
    length: the test sequence length N.
    samples, token_budget: see `samples_at`.
    seed: content seed of the samples (bk_jax.data.synthetic.synthetic_seed).

  Returns:
    {length, samples, scored, accuracy, loss, seconds}.
  """
  from bk_jax.data import make_synthetic_batch

  n_samples = samples_at(length, samples, token_budget, ev.batch)
  nll = cnt = hit = secs = 0.0
  for i in range(n_samples // ev.batch):
    batch = make_synthetic_batch(task_cfg, int(length), ev.batch, seed=seed, index=i)
    r = ev.run(_chunks(batch, ev.chunk), progress=False, log=None)
    nll, cnt, hit, secs = nll + r.nll.sum(), cnt + r.count.sum(), hit + r.correct.sum(), secs + r.seconds
  return dict(length=int(length), samples=n_samples, scored=int(cnt), accuracy=hit / max(cnt, 1.0),
              loss=nll / max(cnt, 1.0), seconds=secs)


def extrapolation_table(model: nnx.Module, task_cfg: ml_collections.ConfigDict,
                        lengths: Sequence[int] = DEFAULT_LENGTHS, *, samples: int = 64,
                        token_budget: int = 4 << 20, batch_size: int = 4, chunk_size: int = 4096,
                        split: str = "test", sub_chunk: int | None = DEFAULT_SUB_CHUNK,
                        progress: bool = True, log: Callable[[str], None] | None = print) -> list[dict]:
  """Accuracy and loss on the scored positions at every test length.

  Args:
    model: a bk_jax LanguageModel whose vocabulary covers the task's.
    task_cfg: config.data.synthetic.
    lengths: test sequence lengths.
    samples: samples per length (fewer at long lengths when `token_budget` (tokens per length,
      0 = unlimited) binds; always a whole number of batches).
    batch_size: sequences streamed side by side.
    chunk_size: streaming chunk (shorter sequences are padded to it: one compile for all).
    split: content seed of the samples (bk_jax.data.synthetic.synthetic_seed).

  Returns:
    Rows {length, samples, scored, accuracy, loss, seconds}.
  """
  from bk_jax.data.synthetic import min_seq_len, synthetic_seed, task_vocab_size

  task_vocab_size(task_cfg)  # validates the task
  lo = min_seq_len(task_cfg)
  bad = [n for n in lengths if n < lo]
  if bad:
    raise EvalError(f"{task_cfg.task} needs sequences of at least {lo} tokens; got {bad}")
  seed = synthetic_seed(task_cfg, split)
  ev = StreamingEvaluator(model, chunk_size=chunk_size, batch_size=batch_size, edges=(0,),
                          sub_chunk=sub_chunk)
  ev.compile()
  rows = []
  bar = None
  if progress:
    from tqdm import tqdm
    bar = tqdm(total=len(lengths), desc="extrapolation", unit="len", file=sys.stderr)
  for n in lengths:
    row = task_row(ev, task_cfg, int(n), samples=samples, token_budget=token_budget, seed=seed)
    rows.append(row)
    secs = row["seconds"]
    if bar is not None:
      bar.update(1)
      bar.set_postfix(N=n, acc=f"{100 * row['accuracy']:.1f}%")
    if log is not None:
      msg = f"N={n:>8}: accuracy {100 * row['accuracy']:6.2f}% over {row['scored']} answers ({secs:.1f}s)"
      (bar.write(msg, file=sys.stderr) if bar is not None else log(msg))
  if bar is not None:
    bar.close()
  return rows


def format_table(rows: list[dict], *, train_len: int | None = None, task: str = "") -> str:
  """Markdown table: one column per test length (the Mamba paper's layout)."""
  def short(n: int) -> str:
    k = int(round(math.log2(n)))
    return f"2^{k}" if 2 ** k == n else str(n)
  head = "| model | " + " | ".join(short(r["length"]) for r in rows) + " |"
  sep = "|---|" + "---|" * len(rows)
  name = f"{task} trained at {train_len}" if train_len else task or "model"
  body = f"| {name} | " + " | ".join(f"{100 * r['accuracy']:.1f}" for r in rows) + " |"
  return "\n".join([head, sep, body])


def run_extrapolation(config: ml_collections.ConfigDict, checkpoint: str | None = None, *,
                      lengths: Sequence[int] = DEFAULT_LENGTHS, samples: int = 64,
                      token_budget: int = 4 << 20, batch_size: int = 4,
                      config_is_explicit: bool = False, untrained: bool = False,
                      progress: bool = True, log: Callable[[str], None] | None = print) -> dict:
  """Loads a checkpoint trained on a synthetic task (or builds an untrained model) and tabulates.

  Returns:
    {task, train_len, rows, table (markdown), checkpoint}.
  """
  if untrained:
    from bk_jax.data.synthetic import task_vocab_size
    from bk_jax.models import build_model
    cfg = ml_collections.ConfigDict(config.to_dict())
    cfg.model.vocab_size = task_vocab_size(cfg.data.synthetic)
    model, name = build_model(cfg.model, rngs=nnx.Rngs(int(cfg.seed))), "untrained"
  else:
    ck = load_checkpoint(config.save_dir, checkpoint, config if config_is_explicit else None)
    cfg, model, name = ck.config, ck.model, ck.path
  if cfg.data.dataset != "synthetic":
    raise EvalError(f"checkpoint {name} was trained on {cfg.data.dataset!r}, not a synthetic task "
                    f"(data.dataset='synthetic')")
  task_cfg = config.data.synthetic if untrained else cfg.data.synthetic
  from bk_jax.data.synthetic import task_vocab_size
  if task_vocab_size(task_cfg) > int(cfg.model.vocab_size):
    raise EvalError(f"task vocabulary {task_cfg.vocab_size} exceeds the model's vocab_size "
                    f"{cfg.model.vocab_size}")
  rows = extrapolation_table(model, task_cfg, lengths, samples=samples, token_budget=token_budget,
                             batch_size=batch_size, chunk_size=int(config.eval.chunk_size),
                             sub_chunk=int(config.eval.sub_chunk) or None, progress=progress, log=log)
  n = None if untrained else train_lengths(cfg)[-1]  # the last length trained
  return dict(task=task_cfg.task, train_len=n, rows=rows, checkpoint=name, model_kind=cfg.model.kind,
              table=format_table(rows, train_len=n, task=task_cfg.task))

"""Multi-query associative recall (Zoology's MQAR) over a grid of lengths and key-value counts.

The task is `bk_jax.data.synthetic`'s "mqar": D key-value pairs, then D queries (each key once)
among noise, every query scored on the value it must recall. A model trained on the task at one
(N, D) is tested on every (N, D) of the grid with N >= 4 D (the shortest layout of D pairs);
the cells show how recall degrades with the number of facts to hold (state capacity) and with
the distance to them. Scoring streams each sample with the state carried across chunks, exactly
as the length-extrapolation table does (`extrapolation.task_row`), so every cell is exact
accuracy over the scored queries.
"""

from __future__ import annotations

from typing import Sequence

import ml_collections
from flax import nnx

from bk_jax.eval.extrapolation import task_row
from bk_jax.eval.loading import EvalError
from bk_jax.eval.streaming import DEFAULT_SUB_CHUNK, StreamingEvaluator
from bk_jax.runtime.markdown import md_table


def mqar_cells(lengths: Sequence[int], kv_pairs: Sequence[int]) -> list[tuple[int, int]]:
  """The (N, D) cells of the grid that can be laid out (N >= 4 D), lengths outer."""
  return [(int(n), int(d)) for n in lengths for d in kv_pairs if int(n) >= 4 * int(d)]


def mqar_table(model: nnx.Module, task_cfg: ml_collections.ConfigDict, *, lengths: Sequence[int],
               kv_pairs: Sequence[int], samples: int, token_budget: int = 0, batch_size: int = 4,
               chunk_size: int = 4096, split: str = "test",
               sub_chunk: int | None = DEFAULT_SUB_CHUNK) -> list[dict]:
  """MQAR accuracy at every cell of the (length x key-value pairs) grid.

  Args:
    model: a bk_jax LanguageModel whose vocabulary covers the task's.
    task_cfg: config.data.synthetic with task "mqar" (its num_kv_pairs is replaced per cell;
      vocab_size must hold 2 * max(kv_pairs) + 2 ids).
    lengths: test lengths N.
    kv_pairs: key-value pair counts D.
    samples: samples per cell (fewer where `token_budget` binds; whole batches).
    token_budget: test tokens per cell (0: unlimited).
    batch_size: samples streamed side by side.
    chunk_size: the longest streaming chunk (the shortest length is used when shorter).
    split: content seed of the samples (the training samples use "train").
    sub_chunk: see `StreamingEvaluator`.

  Returns:
    Rows {length, kv_pairs, samples, scored, accuracy, loss, seconds}.

  Raises:
    EvalError: a task other than mqar, no cell with N >= 4 D, or a vocabulary too small.
  """
  from bk_jax.data.synthetic import synthetic_seed, task_vocab_size

  if task_cfg.task != "mqar":
    raise EvalError(f"mqar_table needs data.synthetic.task='mqar', got {task_cfg.task!r}")
  cells = mqar_cells(lengths, kv_pairs)
  if not cells:
    raise EvalError(f"no MQAR cell with N >= 4 D in lengths {list(lengths)} x pairs "
                    f"{list(kv_pairs)}")
  task = ml_collections.ConfigDict(task_cfg.to_dict())
  task.num_kv_pairs = max(d for _, d in cells)
  task_vocab_size(task)  # the largest D must fit the vocabulary
  # one compile for every cell: the shortest length in chunks (the others stream several chunks
  # with the state carried), so no sample is padded when every length is a multiple of it
  chunk = min(int(chunk_size), min(n for n, _ in cells))
  ev = StreamingEvaluator(model, chunk_size=chunk, batch_size=batch_size, edges=(0,),
                          sub_chunk=sub_chunk)
  ev.compile()
  rows = []
  for n, d in cells:
    task.num_kv_pairs = d
    row = task_row(ev, task, n, samples=samples, token_budget=token_budget,
                   seed=synthetic_seed(task, split))
    rows.append(dict(row, kv_pairs=d))
  return rows


def format_table(results: dict[str, list[dict]]) -> str:
  """Markdown: accuracy (%) per model and length N (rows) and key-value pairs D (columns), from
  `mqar_table` rows by model name; "-" where N < 4 D."""
  pairs = sorted({c["kv_pairs"] for rows in results.values() for c in rows})
  out = []
  for name, rows in results.items():
    for n in sorted({c["length"] for c in rows}):
      cell = {c["kv_pairs"]: c["accuracy"] for c in rows if c["length"] == n}
      out.append([name, n] + [f"{100 * cell[d]:.1f}" if d in cell else None for d in pairs])
  return md_table(["model", "N"] + [f"D={d}" for d in pairs], out)

"""Synthetic long-range tasks, generated on the fly, deterministic by (seed, index).

Every generator is vectorised numpy over (batch, length) and returns a token row of N+1 ids
per sample (``inputs = x[:-1]``, ``targets = x[1:]``, so ``targets[i] == inputs[i+1]``) plus a
float mask over the N target positions that are scored. Layouts (V = vocab_size):

* ``induction_heads`` (Mamba paper, V=16): tokens uniform in [0, V-2]; the trigger V-1 appears
  once at a random position p <= N-3 followed by the answer a = x[p+1]; the trigger again at
  input position N-1, whose target x[N] = a is the single scored position.
* ``mqar`` (Zoology's multi-query associative recall): D distinct keys from [1, V/2) with
  values from [V/2, V) laid out k1 v1 ... kD vD; then D queries (each key once, random order)
  at even offsets 2*g of the rest, gaps g drawn without replacement with p(g) ~ g^(power_a-1)
  (Gumbel top-k); a query's target is its value, scored at the query position. Other positions
  are uniform noise over [0, V) as in Zoology's ``random_non_queries``.
* ``selective_copying`` (Mamba paper): M data tokens from [0, V-2) at random sorted positions in
  a context of N-M noise tokens (V-2); a marker V-1 at input position N-M; then the M tokens
  in order; targets at positions N-M .. N-1 are scored (teacher forcing: the model sees its
  previous answers, as any LM loss does).

:func:`check_sample` re-derives each answer with plain Python loops (a brute-force checker).
"""

from __future__ import annotations

import numpy as np

from bk_jax.data.config import SYNTHETIC_TASKS
from bk_jax.data.errors import DataError


def _task(tc) -> str:
  if tc.task not in SYNTHETIC_TASKS:
    raise DataError(f"unknown synthetic task {tc.task!r}; valid: {', '.join(SYNTHETIC_TASKS)}")
  return tc.task


def task_vocab_size(tc) -> int:
  """Validates the task config and returns its vocabulary size.

  Args:
    tc: config.data.synthetic.
  Returns:
    ``tc.vocab_size``.
  Raises:
    DataError: unknown task, or a vocabulary too small for the task.
  """
  task, v = _task(tc), int(tc.vocab_size)
  if task == "mqar":
    d = int(tc.num_kv_pairs)
    if d < 1 or v // 2 - 1 < d or v - v // 2 < d:
      raise DataError(f"mqar with num_kv_pairs={d} needs vocab_size >= {2 * d + 2}, "
                      f"got {v}")
  elif v < 3:
    raise DataError(f"{task} needs vocab_size >= 3, got {v}")
  return v


def min_seq_len(tc) -> int:
  """Shortest sequence length N the task can be laid out in."""
  task = _task(tc)
  if task == "induction_heads":
    return 4
  if task == "mqar":
    return 4 * int(tc.num_kv_pairs)
  return 2 * int(tc.num_memorize)


def _top_k(scores: np.ndarray, k: int) -> np.ndarray:
  """Indices of the k largest entries of every row, in random-score order. (B, L) -> (B, k)."""
  part = np.argpartition(scores, scores.shape[1] - k, axis=1)[:, -k:]
  order = np.argsort(-np.take_along_axis(scores, part, 1), axis=1)
  return np.take_along_axis(part, order, 1)


def generate(tc, rng: np.random.Generator, batch: int,
             seq_len: int) -> tuple[np.ndarray, np.ndarray]:
  """Generates ``batch`` samples of the configured task.

  Args:
    tc: config.data.synthetic.
    rng: numpy Generator (consumed).
    batch: B.
    seq_len: N (number of input positions).
  Returns:
    tokens: int32 (B, N+1); mask: float32 (B, N), 1 at scored target positions.
  """
  task, v = _task(tc), task_vocab_size(tc)
  n, b = int(seq_len), int(batch)
  if n < min_seq_len(tc):
    raise DataError(f"synthetic task {task} needs seq_len >= {min_seq_len(tc)}, got {n}")
  rows = np.arange(b)[:, None]
  mask = np.zeros((b, n), np.float32)
  if task == "induction_heads":
    trig = v - 1
    x = rng.integers(0, v - 1, size=(b, n + 1), dtype=np.int32)
    p = rng.integers(0, n - 2, size=(b, 1))  # p+1 <= N-2: the answer precedes the query
    x[rows, p] = trig
    x[:, n - 1] = trig
    x[:, n] = x[rows, p + 1][:, 0]
    mask[:, n - 1] = 1.0
  elif task == "mqar":
    d, half = int(tc.num_kv_pairs), v // 2
    keys = _top_k(rng.random((b, half - 1)), d) + 1  # distinct keys in [1, V/2)
    vals = _top_k(rng.random((b, v - half)), d) + half  # distinct values in [V/2, V)
    x = rng.integers(0, v, size=(b, n + 1), dtype=np.int32)
    x[:, 0:2 * d:2], x[:, 1:2 * d:2] = keys, vals
    space = (n - 2 * d) // 2
    a = float(tc.power_a)
    logp = (a - 1.0) * np.log(np.arange(1, space + 1, dtype=np.float64))
    # Gumbel top-k == sequential sampling without replacement with p(g) ~ g^(a-1).
    gaps = _top_k(logp[None, :] + rng.gumbel(size=(b, space)), d)
    q = 2 * d + 2 * gaps  # (B, D) query input positions; value at q+1 <= N-1
    x[rows, q], x[rows, q + 1] = keys, vals
    mask[rows, q] = 1.0
  else:  # selective_copying
    m, noise, marker = int(tc.num_memorize), v - 2, v - 1
    c = n - m
    pos = np.sort(_top_k(rng.random((b, c)), m), axis=1)
    toks = rng.integers(0, v - 2, size=(b, m), dtype=np.int32)
    x = np.full((b, n + 1), noise, np.int32)
    x[rows, pos] = toks
    x[:, c] = marker
    x[:, c + 1:] = toks
    mask[:, c:] = 1.0
  return x.astype(np.int32, copy=False), mask


def synthetic_seed(tc, split: str) -> int:
  """Content seed of a split: the valid set stays fixed whatever the training seed."""
  return int(tc.seed) * 8 + {"train": 0, "valid": 1, "test": 2}[split]


def make_synthetic_batch(task_cfg, seq_len: int, batch_size: int, *, seed: int,
                         index: int) -> dict[str, np.ndarray]:
  """One batch, deterministic by (seed, index).

  Args:
    task_cfg: config.data.synthetic.
    seq_len: N.
    batch_size: B.
    seed: content seed (non-negative).
    index: batch index (non-negative).
  Returns:
    dict(inputs=int32 (B,N), targets=int32 (B,N), mask=float32 (B,N)).
  """
  rng = np.random.default_rng([int(seed), int(index)])
  x, mask = generate(task_cfg, rng, batch_size, seq_len)
  return dict(inputs=x[:, :-1], targets=x[:, 1:], mask=mask)


def check_sample(task_cfg, inputs, targets, mask) -> bool:
  """Brute-force checker: recomputes the answers of one sample with Python loops.

  Args:
    task_cfg: config.data.synthetic.
    inputs, targets, mask: one sample, each of shape (N,).
  Returns:
    True iff ``targets`` is ``inputs`` shifted by one where defined, the scored positions are
    exactly the task's answer positions and every scored target is the correct answer.
  """
  task, v = _task(task_cfg), int(task_cfg.vocab_size)
  xs, ts = [int(t) for t in inputs], [int(t) for t in targets]
  scored = [i for i, m in enumerate(mask) if m]
  n = len(xs)
  if any(ts[i] != xs[i + 1] for i in range(n - 1)) or any(not 0 <= t < v for t in xs + ts):
    return False
  if task == "induction_heads":
    trig = [i for i in range(n) if xs[i] == v - 1]
    if len(trig) != 2 or trig[1] != n - 1 or scored != [n - 1]:
      return False
    return ts[n - 1] == xs[trig[0] + 1]
  if task == "mqar":
    d = int(task_cfg.num_kv_pairs)
    if len(scored) != d:
      return False
    for q in scored:
      want = None
      for j in range(0, 2 * d, 2):  # the key-value prefix
        if xs[j] == xs[q]:
          want = xs[j + 1]
      if q < 2 * d or want is None or ts[q] != want:
        return False
    return True
  m = int(task_cfg.num_memorize)
  marks = [i for i in range(n) if xs[i] == v - 1]
  if not marks or scored != list(range(marks[0], n)) or len(scored) != m:
    return False
  data = [t for t in xs[: marks[0]] if t != v - 2]
  return data == [ts[i] for i in scored]

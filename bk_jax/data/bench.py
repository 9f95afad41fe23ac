"""Input-pipeline benchmarks (driven by scripts/bench_data.py).

Measures what a training loop sees: batches/s of ``make_iterator(make_train_dataset(...))``
converted to tokens/s, the one-time tokenize cost and the cached start-up cost, and, for
scale, a deliberately tiny jitted LM step (embedding -> one dense layer -> softmax
cross-entropy, forward and backward) whose tokens/s is an *upper bound* on any real model's
CPU training throughput.
"""

from __future__ import annotations

import shutil
import statistics
import tempfile
import time

from bk_jax.data.corpus import load_corpus
from bk_jax.data.pipeline import batch_size_for, make_iterator, make_train_dataset


def corpus_times(cfg) -> dict:
  """First-run (tokenize) and cached-load wall time of ``cfg`` in a fresh temporary cache.

  Returns:
    dict(tokenize_s, cached_load_s, train_tokens).
  """
  cfg = cfg.copy_and_resolve_references()
  tmp = tempfile.mkdtemp(prefix="bk_jax_bench_")
  try:
    cfg.cache_dir = tmp
    t0 = time.perf_counter()
    load_corpus(cfg)
    t1 = time.perf_counter()
    c = load_corpus(cfg)
    t2 = time.perf_counter()
    return dict(tokenize_s=t1 - t0, cached_load_s=t2 - t1, train_tokens=len(c.splits["train"]))
  finally:
    shutil.rmtree(tmp, ignore_errors=True)


def pipeline_throughput(cfg, seq_len: int, tokens_per_batch: int, *, batches: int = 20,
                        repeats: int = 5, seed: int = 0) -> dict:
  """Tokens/s of the batched pipeline (median over repeats of ``batches`` batches each).

  Args:
    cfg: config.data (cached corpus or synthetic).
    seq_len: N.
    tokens_per_batch: budget; the batch is ``max(1, tokens_per_batch // N)``.
    batches: batches per timed repeat.
    repeats: timed repeats (each on a fresh iterator at a different seed, after one warm-up).
  Returns:
    dict(seq_len, batch, tokens_per_s, ms_per_batch, startup_ms).
  """
  b = batch_size_for(seq_len, 0, tokens_per_batch)
  rates, startups = [], []
  for r in range(repeats + 1):
    t0 = time.perf_counter()
    it = make_iterator(make_train_dataset(cfg, seq_len, b, seed=seed + r), cfg)
    next(it)  # the first batch includes thread start-up: counted separately
    t1 = time.perf_counter()
    for _ in range(batches):
      next(it)
    t2 = time.perf_counter()
    if r:  # repeat 0 warms the page cache
      rates.append(batches * b * seq_len / (t2 - t1))
      startups.append(t1 - t0)
  tps = statistics.median(rates)
  return dict(seq_len=seq_len, batch=b, tokens_per_s=tps, ms_per_batch=1e3 * b * seq_len / tps,
              startup_ms=1e3 * statistics.median(startups))


def toy_step_throughput(seq_len: int, tokens_per_batch: int, vocab: int, *, width: int = 128,
                        repeats: int = 5) -> dict:
  """Tokens/s of a minimal jitted LM train step on the local device (an upper bound).

  Returns:
    dict(seq_len, batch, tokens_per_s, ms_per_step).
  """
  import jax
  import jax.numpy as jnp

  b = batch_size_for(seq_len, 0, tokens_per_batch)
  k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
  params = dict(emb=jax.random.normal(k1, (vocab, width)) * 0.02,
                w=jax.random.normal(k2, (width, width)) * 0.02,
                out=jax.random.normal(k3, (width, vocab)) * 0.02)
  x = jnp.zeros((b, seq_len), jnp.int32)

  def loss(p, x, y):
    h = jnp.tanh(p["emb"][x] @ p["w"])
    logits = h @ p["out"]
    return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), y[..., None], -1))

  @jax.jit
  def step(p, x, y):
    g = jax.grad(loss)(p, x, y)
    return jax.tree.map(lambda a, b: a - 1e-3 * b, p, g)

  jax.block_until_ready(step(params, x, x))
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    params = jax.block_until_ready(step(params, x, x))
    times.append(time.perf_counter() - t0)
  dt = statistics.median(times)
  return dict(seq_len=seq_len, batch=b, tokens_per_s=b * seq_len / dt, ms_per_step=1e3 * dt)


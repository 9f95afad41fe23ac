"""The causal attention mixer alone, forward + backward, per implementation (scripts/bench_attention.py).

For each d_model (heads of width 32, as `throughput` sizes the Transformer) and length N, one
jitted value-and-grad of sum(attention(q, k, v) * w) with respect to (q, k, v) on random inputs of
batch 1: median seconds after a warm-up, tokens/s and XLA's compiled memory. An implementation
whose compiled memory exceeds `max_gb` is compiled, reported and not run. This is the
measurement behind `bk_jax.models.transformer.attention_implementation`'s CPU choice.
"""

from __future__ import annotations

import statistics
import time

import jax
import jax.numpy as jnp

from bk_jax.models.transformer import causal_attention


def bench(impl: str, d_model: int, n: int, repeats: int, max_gb: float, dtype) -> dict:
  """Compiles and (memory allowing) times one implementation at one size.

  Args:
    impl: `causal_attention`'s implementation ("xla", "blockwise", ...).
    d_model: model width; heads = max(1, d_model // 32) of width 32.
    n: sequence length.
    repeats: timed calls after one warm-up call.
    max_gb: compiled memory (arguments + outputs + temporaries, GiB) above which it is not run.
    dtype: dtype of q, k, v and the weights w.

  Returns:
    dict(impl, d_model, heads, n, compile_s, mem_gb, step_s, tok_s); step_s and tok_s are None
    when the memory exceeded max_gb.
  """
  h, dh = max(1, d_model // 32), 32
  keys = jax.random.split(jax.random.key(0), 4)
  q, k, v, w = (jax.random.normal(kk, (1, n, h, dh), dtype) for kk in keys)

  def loss(q, k, v, w):  # w is an argument: a captured array would be constant-folded by XLA
    out = causal_attention(q, k, v, implementation=impl, block=512)
    return jnp.sum(out.astype(jnp.float32) * w.astype(jnp.float32))

  fn = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))
  t0 = time.perf_counter()
  compiled = fn.lower(q, k, v, w).compile()
  compile_s = time.perf_counter() - t0
  m = compiled.memory_analysis()
  gb = (m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes) / 2**30
  row = dict(impl=impl, d_model=d_model, heads=h, n=n, compile_s=compile_s, mem_gb=gb)
  if gb > max_gb:
    return dict(row, step_s=None, tok_s=None)
  jax.block_until_ready(compiled(q, k, v, w))
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(compiled(q, k, v, w))
    times.append(time.perf_counter() - t0)
  s = statistics.median(times)
  return dict(row, step_s=s, tok_s=n / s)


def run_attention_bench(d_models: list[int], lengths: list[int], impls: list[str], *,
                        repeats: int, max_gb: float, dtype: str) -> list[dict]:
  """Prints a markdown table with one `bench` row per (d_model, N, implementation), as it goes.

  Args:
    d_models, lengths, impls: the grid (d_model outermost, implementation innermost).
    repeats, max_gb: see `bench`.
    dtype: "float32" or "bfloat16".

  Returns:
    the `bench` rows, in printed order.
  """
  dt = jnp.dtype(dtype)
  print(f"# jax {jax.__version__}, backend {jax.default_backend()}, dtype {dtype}, "
        f"batch 1, head dim 32, fwd+bwd of the attention alone")
  print("| impl | d_model | heads | N | compiled GB | step s | tokens/s |")
  print("|---|---|---|---|---|---|---|", flush=True)
  rows = []
  for d in d_models:
    for n in lengths:
      for impl in impls:
        r = bench(impl, d, n, repeats, max_gb, dt)
        rows.append(r)
        step = "skipped (> --max-gb)" if r["step_s"] is None else f"{r['step_s']:.3f}"
        tok = "-" if r["tok_s"] is None else f"{r['tok_s']:,.0f}"
        print(f"| {impl} | {d} | {r['heads']} | {n} | {r['mem_gb']:.2f} | {step} | {tok} |",
              flush=True)
  return rows

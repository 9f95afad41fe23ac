"""Causal attention mixer alone, forward + backward: every implementation available here.

For each d_model (heads of width 32, as bk_jax.reports.throughput sizes the Transformer) and
sequence length N, one jitted value-and-grad of sum(attention(q, k, v) * w) with respect to
(q, k, v) runs on random float32 inputs of batch 1. Reported: median seconds over `--repeats`
runs after a warm-up, tokens/s, and XLA's compiled memory (arguments + outputs + temporaries).
An implementation whose compiled memory exceeds `--max-gb` is reported and not run (XLA's
dot_product_attention materialises the (h, N, N) scores).

This is the measurement behind `bk_jax.models.transformer.attention_implementation`'s choice
on the CPU ("auto").

Usage:
  python scripts/bench_attention.py [--d-models 128,256,512] [--lengths 2048,8192]
      [--impls xla,blockwise] [--repeats 3] [--max-gb 8] [--dtype float32]
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp

from bk_jax.models.transformer import causal_attention


def bench(impl: str, d_model: int, n: int, repeats: int, max_gb: float, dtype) -> dict:
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


def main():
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  ap.add_argument("--d-models", default="128,256,512")
  ap.add_argument("--lengths", default="2048,8192")
  ap.add_argument("--impls", default="xla,blockwise")
  ap.add_argument("--repeats", type=int, default=3)
  ap.add_argument("--max-gb", type=float, default=8.0)
  ap.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
  args = ap.parse_args()
  dtype = jnp.dtype(args.dtype)
  print(f"# jax {jax.__version__}, backend {jax.default_backend()}, dtype {args.dtype}, "
        f"batch 1, head dim 32, fwd+bwd of the attention alone")
  print("| impl | d_model | heads | N | compiled GB | step s | tokens/s |")
  print("|---|---|---|---|---|---|---|", flush=True)
  for d in (int(x) for x in args.d_models.split(",")):
    for n in (int(x) for x in args.lengths.split(",")):
      for impl in args.impls.split(","):
        r = bench(impl, d, n, args.repeats, args.max_gb, dtype)
        step = "skipped (> --max-gb)" if r["step_s"] is None else f"{r['step_s']:.3f}"
        tok = "-" if r["tok_s"] is None else f"{r['tok_s']:,.0f}"
        print(f"| {impl} | {d} | {r['heads']} | {n} | {r['mem_gb']:.2f} | {step} | {tok} |",
              flush=True)


if __name__ == "__main__":
  main()

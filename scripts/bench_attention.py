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

from bk_jax.reports.attention_bench import run_attention_bench


def main():
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  ap.add_argument("--d-models", default="128,256,512")
  ap.add_argument("--lengths", default="2048,8192")
  ap.add_argument("--impls", default="xla,blockwise")
  ap.add_argument("--repeats", type=int, default=3)
  ap.add_argument("--max-gb", type=float, default=8.0)
  ap.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
  args = ap.parse_args()
  run_attention_bench([int(x) for x in args.d_models.split(",")],
                      [int(x) for x in args.lengths.split(",")], args.impls.split(","),
                      repeats=args.repeats, max_gb=args.max_gb, dtype=args.dtype)


if __name__ == "__main__":
  main()

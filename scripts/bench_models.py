"""Training throughput and peak memory of every model kind at equal parameter count.

For each kind and sequence length N, one jitted AdamW training step (forward, backward, update;
remat "full", scan over layers) runs on random tokens with batch B = max(1, T // N) for
`--tokens-per-step` T, so every kind processes the same tokens per step at a given N (and every
N the same T while N <= T). Reported: median step time over `--repeats` timed steps after one
warm-up step, training tokens/s, and XLA's peak memory for the compiled step
(`compiled.memory_analysis()`: arguments + outputs + temporaries - aliased), also per token.

Model sizes: ResNet-BK uses the `--d-model`/`--n-layers` given; the baselines use the same
d_model and the number of layers that brings their parameter count closest to ResNet-BK's.

The Transformer's attention is quadratic in N; lengths above `--transformer-max-len` are
skipped and reported as such. Targets (issue 3): resnet_bk tokens/s at 131k >= 0.8x at 2k;
peak bytes/token at 131k <= 1.3x at 8k; resnet_bk >= 3x transformer tokens/s at 8k and
>= mamba tokens/s at every N.

Usage:
  python scripts/bench_models.py [--lengths 2048,8192,32768,131072] [--tokens-per-step 131072]
      [--repeats 3] [--kinds resnet_bk,mamba,transformer] [--json out.json]
"""

from __future__ import annotations

import argparse
import json

import jax

# The step, model sizing and timing live in bk_jax.reports.throughput (shared with scripts/benchmark.py).
from bk_jax.runtime.provenance import stamped
from bk_jax.reports.throughput import bench_one, layers_for_params, model_config, param_count


def main():
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  ap.add_argument("--kinds", default="resnet_bk,mamba,transformer")
  ap.add_argument("--lengths", default="2048,8192,32768,131072")
  ap.add_argument("--tokens-per-step", type=int, default=131072)
  ap.add_argument("--repeats", type=int, default=3)
  ap.add_argument("--d-model", type=int, default=128)
  ap.add_argument("--n-layers", type=int, default=8, help="ResNet-BK layers (baselines matched)")
  ap.add_argument("--vocab", type=int, default=259)
  ap.add_argument("--transformer-max-len", type=int, default=8192)
  ap.add_argument("--json", default=None, help="also write the rows to this file")
  args = ap.parse_args()
  kinds = args.kinds.split(",")
  lengths = [int(x) for x in args.lengths.split(",")]

  target = param_count(model_config("resnet_bk", args.d_model, args.n_layers, args.vocab))
  cfgs = {}
  for kind in kinds:
    layers = (args.n_layers if kind == "resnet_bk"
              else layers_for_params(model_config(kind, args.d_model, 1, args.vocab), target))
    cfgs[kind] = model_config(kind, args.d_model, layers, args.vocab)
    print(f"# {kind}: d_model={args.d_model} n_layers={layers} "
          f"params={param_count(cfgs[kind]):,}", flush=True)
  print(f"# jax {jax.__version__}, backend {jax.default_backend()}, "
        f"{jax.device_count()} device(s); repeats={args.repeats}", flush=True)
  print("| kind | N | batch | tokens/step | step s | tokens/s | peak MB | peak B/token |")
  print("|---|---|---|---|---|---|---|---|", flush=True)
  rows = []
  for n in lengths:
    for kind in kinds:
      if kind == "transformer" and n > args.transformer_max_len:
        print(f"| {kind} | {n} | - | - | - | skipped (quadratic, > --transformer-max-len) | - | - |",
              flush=True)
        continue
      r = bench_one(cfgs[kind], n, args.tokens_per_step, args.repeats)
      rows.append(r)
      print(f"| {kind} | {n} | {r['batch']} | {r['tokens_per_step']} | {r['step_s']:.2f} | "
            f"{r['tokens_per_s']:,.0f} | {r['peak_mb']:.0f} | {r['peak_bytes_per_token']:,.0f} |",
            flush=True)
  by = {(r["kind"], r["n"]): r for r in rows}
  checks = []
  if ("resnet_bk", 2048) in by and ("resnet_bk", 131072) in by:
    ratio = by["resnet_bk", 131072]["tokens_per_s"] / by["resnet_bk", 2048]["tokens_per_s"]
    checks.append(("resnet_bk tokens/s 131k / 2k >= 0.8", ratio, ratio >= 0.8))
  if ("resnet_bk", 8192) in by and ("resnet_bk", 131072) in by:
    ratio = (by["resnet_bk", 131072]["peak_bytes_per_token"]
             / by["resnet_bk", 8192]["peak_bytes_per_token"])
    checks.append(("resnet_bk peak B/token 131k / 8k <= 1.3", ratio, ratio <= 1.3))
  if ("resnet_bk", 8192) in by and ("transformer", 8192) in by:
    ratio = by["resnet_bk", 8192]["tokens_per_s"] / by["transformer", 8192]["tokens_per_s"]
    checks.append(("resnet_bk / transformer tokens/s at 8k >= 3", ratio, ratio >= 3))
  for n in lengths:
    if ("resnet_bk", n) in by and ("mamba", n) in by:
      ratio = by["resnet_bk", n]["tokens_per_s"] / by["mamba", n]["tokens_per_s"]
      checks.append((f"resnet_bk / mamba tokens/s at {n} >= 1", ratio, ratio >= 1))
  for name, value, ok in checks:
    print(f"# {'PASS' if ok else 'FAIL'} {name}: {value:.2f}")
  if args.json:
    with open(args.json, "w") as f:
      json.dump(stamped({"rows": rows, "checks": [dict(name=n, value=v, ok=o) for n, v, o in checks]}),
                f, indent=1)


if __name__ == "__main__":
  main()

"""Stability comparison: ResNet-BK vs Mamba, Mamba-2 and Transformer over seeds and lengths.

Every (kind, seed, N) is one independent run of bk_jax.train.loop.run with identical data
(char-level Tiny Shakespeare by default), identical budgets (`--steps` steps of `--tokens`
tokens each, batch = tokens // N), identical optimizer and (nearly) equal parameters (layers
matched to ResNet-BK's count). Per run, from long_context_results.json: DIVERGED or not (and
the step divergence was first detected), loss spikes per 1,000 steps (the trainer's detector:
loss > spike_factor x previous loss), gradient-norm mean and std/mean, final training loss and
the validation perplexity of the final checkpoint at the training length
(bk_jax.train.evaluate). Perplexity degradation with length = val ppl at the longest N over
val ppl at the shortest N (same kind and seed). For each metric and N it prints ResNet-BK vs each
baseline with Welch's t-test and the Mann-Whitney U test across seeds (scipy p-values).
Outputs under --out (default results/stability/compare_stability/): stability.json, stability.md,
loss_curves.png, grad_norm_bands.png, spikes.png. The logic lives in bk_jax.reports.stability.

  python scripts/compare_stability.py --seeds 0,1,2,3,4 --lengths 128,512,2048 --steps 500
  python scripts/compare_stability.py --quick
"""

from __future__ import annotations

import argparse
import os

from bk_jax.reports import common, runs, stability


def main(argv=None) -> dict:
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  ap.add_argument("--kinds", default="resnet_bk,mamba,mamba2,transformer")
  ap.add_argument("--seeds", default=None, help="default 0,1,2 (0,1 with --quick)")
  ap.add_argument("--lengths", default=None, help="default 128,512 (16,32 with --quick)")
  ap.add_argument("--steps", type=int, default=200)
  ap.add_argument("--tokens", type=int, default=4096, help="tokens per step at every N")
  ap.add_argument("--data", default=runs.TINY_SHAKESPEARE)
  ap.add_argument("--d_model", type=int, default=64)
  ap.add_argument("--n_layers", type=int, default=2, help="ResNet-BK layers (baselines matched)")
  ap.add_argument("--n_heads", type=int, default=16)
  ap.add_argument("--lr", type=float, default=3e-3)
  ap.add_argument("--eval_tokens", type=int, default=16384)
  ap.add_argument("--quick", action="store_true")
  ap.add_argument("--out", default=None)
  args = ap.parse_args(argv)
  try:
    runs.check_rows(args.kinds.split(","), variants=False)  # before any training
  except ValueError as e:
    ap.error(str(e))
  if args.quick:
    args.seeds, args.lengths = args.seeds or "0,1", args.lengths or "16,32"
    args.steps, args.tokens = 4, 64
    args.d_model, args.n_layers, args.n_heads, args.eval_tokens = 16, 1, 2, 128
  args.seeds, args.lengths = args.seeds or "0,1,2", args.lengths or "128,512"
  grid = stability.Grid(
      kinds=tuple(args.kinds.split(",")), seeds=tuple(int(s) for s in args.seeds.split(",")),
      lengths=tuple(int(n) for n in args.lengths.split(",")), steps=args.steps,
      tokens=args.tokens, data=os.path.abspath(args.data), d_model=args.d_model,
      n_layers=args.n_layers, n_heads=args.n_heads, lr=args.lr, eval_tokens=args.eval_tokens)
  out = common.out_dir(args.out, "stability/compare_stability", args.quick)
  res = stability.compare_stability(grid, out, vars(args))
  print(res["markdown"])
  return res


if __name__ == "__main__":
  main()

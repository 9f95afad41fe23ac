"""Quality anchor: char-level Tiny Shakespeare at ~0.8-1M parameters, equal tokens or equal time.

Every kind (ResNet-BK, Mamba, Mamba-2, Transformer) gets the same data (the bundled Tiny Shakespeare,
byte tokenizer, cut 0.9/0.05/0.05), the same d_model, a layer count matched to `--params`, the
same batch x length and optimizer, and either the same number of training tokens (`--tokens`)
or the same wall-clock budget (`--budget_s`, compile included; steps planned from the median of
several warm steps). Then the validation loss (nats/char) of the final checkpoint over
`--eval_tokens` characters of the validation split. Rows report steps, tokens seen and seconds
per step beside the wall clock (bk_jax.reports.quality). Published reference: nanoGPT's
char-level Shakespeare on a CPU, a 0.8M-parameter GPT, val loss 1.88 nats/char after ~3
CPU-minutes.

  python scripts/quality_anchor.py                        # 10 minutes per kind (the full anchor)
  python scripts/quality_anchor.py --tokens 4000000       # equal tokens: 4M per kind
  python scripts/quality_anchor.py --budget_s 150         # reduced
  python scripts/quality_anchor.py --quick                # seconds (tests)
  # a ResNet-BK block variant as a row of its own, beside the default block and the baselines
  python scripts/quality_anchor.py --kinds resnet_bk:green_keyed,resnet_bk,mamba,mamba2,transformer
  # rebuild the table and figure from result JSONs (no training)
  python scripts/quality_anchor.py --out results/quality/equal_time_600s --merge \
      results/quality/equal_time_600s/quality_anchor.json results/quality/equal_time_600s/quality_anchor_resnet_bk.json
"""

from __future__ import annotations

import argparse
import os

from bk_jax.reports import common, quality, runs


def main(argv=None) -> dict:
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  ap.add_argument("--kinds", default="resnet_bk,mamba,mamba2,transformer",
                  help="rows: model kinds, or resnet_bk:VARIANT for a block variant of "
                       "scripts/ablations.py (e.g. resnet_bk:green_keyed)")
  ap.add_argument("--data", default=runs.TINY_SHAKESPEARE)
  ap.add_argument("--budget_s", type=float, default=600.0, help="training wall clock per kind")
  ap.add_argument("--tokens", type=int, default=0,
                  help="> 0: equal tokens: every kind trains on this many tokens (ignores --budget_s)")
  ap.add_argument("--timing_steps", type=int, default=5,
                  help="warm steps timed (median) to plan an equal-wall-clock run")
  ap.add_argument("--steps", type=int, default=0, help="> 0: fixed steps per kind (tests)")
  ap.add_argument("--params", type=int, default=900_000, help="target parameter count (layers matched)")
  ap.add_argument("--d_model", type=int, default=128)
  ap.add_argument("--n_heads", type=int, default=16, help="BK heads")
  ap.add_argument("--seq_len", type=int, default=256)
  ap.add_argument("--batch", type=int, default=32)
  ap.add_argument("--lr", type=float, default=3e-3)
  ap.add_argument("--eval_tokens", type=int, default=50_000)
  ap.add_argument("--seed", type=int, default=0)
  ap.add_argument("--quick", action="store_true")
  ap.add_argument("--out", default=None)
  ap.add_argument("--merge", nargs="+", default=None, metavar="JSON",
                  help="no training: rebuild --out's quality_anchor.md/.png from these result JSONs")
  args = ap.parse_args(argv)
  if args.merge:
    from bk_jax.reports import quality_merge
    if not args.out:
      ap.error("--merge needs --out DIR")
    os.makedirs(args.out, exist_ok=True)
    md, png = quality_merge.merge(args.merge, args.out, common.command())
    print(open(md).read() + f"Plot saved: {png}")
    return dict(out=args.out)
  if args.quick:
    args.budget_s, args.params, args.d_model, args.n_heads = 20.0, 20_000, 32, 4
    args.seq_len, args.batch, args.eval_tokens, args.steps = 32, 4, 512, args.steps or 6
  try:
    runs.check_rows(args.kinds.split(","))
  except ValueError as e:
    ap.error(str(e))
  out = common.out_dir(args.out, "quality/quality_anchor", args.quick)
  budget = quality.Budget(tokens=args.tokens) if args.tokens else quality.Budget(seconds=args.budget_s)
  if args.steps:  # fixed steps (tests): expressed as the equal-tokens budget they amount to
    budget = quality.Budget(tokens=args.steps * args.batch * args.seq_len)
  return quality.run_anchor(
      args.kinds.split(","), budget, out=out, data=os.path.abspath(args.data), params=args.params,
      d_model=args.d_model, n_heads=args.n_heads, seq_len=args.seq_len, batch=args.batch,
      lr=args.lr, seed=args.seed, eval_tokens=args.eval_tokens, timing_steps=args.timing_steps,
      args=vars(args))


if __name__ == "__main__":
  main()

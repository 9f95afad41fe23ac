"""Capability anchor: induction heads trained at 256 tokens, accuracy at 2^6 ... 2^20.

Each kind trains on bk_jax.data's `induction_heads` task (Mamba paper: vocab 16, the trigger
appears once followed by the answer; at the end the trigger reappears and the answer is scored)
at N = `--train_len` through bk_jax.train.loop.run, with the same d_model, matched parameters,
batch, steps and optimizer. Then bk_jax.eval.extrapolation streams test sequences of every
length in `--lengths` through the model (state carried across chunks) and reports exact
accuracy on the scored answers. The Transformer streams with its sliding-window cache
(model.transformer.cache_window), so beyond that window it cannot see the trigger: that is
the baseline's design here, as in the paper's collapse of attention past ~2x. Published
reference (Mamba paper, Table 2): Mamba 100% at every length up to 2^20; attention variants
collapse beyond ~2x the training length.

  python scripts/induction_anchor.py                               # up to 2^20
  python scripts/induction_anchor.py --steps 400 --max_log2 14     # reduced
  python scripts/induction_anchor.py --quick
  # the Mamba paper's model (2 layers, d_model 64, batch 8, Adam lr 1e-3 without weight decay),
  # no parameter matching, a wall-clock cap, and a ResNet-BK variant ("resnet_bk:" overrides):
  python scripts/induction_anchor.py --kinds mamba --no_match --batch 8 --lr 1e-3 \
      --weight_decay 0 --steps 4000 --budget_s 2400 --max_log2 12
  python scripts/induction_anchor.py --kinds resnet_bk --bk_overrides \
      model.bk_mixer=green,model.bk_conv=True,model.bk_gate=True

Recipe of the Mamba paper's induction-heads table (arXiv 2312.00752, appendix E.1; check these
figures against the paper before quoting them): vocab 16, trained at 256, 2-layer models of
d_model 64, fresh random batches of 8 every step, Adam without weight decay, results after 25
"epochs" of 8192 steps (204,800 steps) for Mamba. The H3/safari generator it reuses scores the
last token only at test time and trains on every token; only the answer is predictable, so our
loss masked to the answer carries the same signal.
"""

from __future__ import annotations

import argparse

from bk_jax.reports import common, induction


def main(argv=None) -> dict:
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  ap.add_argument("--kinds", default="resnet_bk,mamba,mamba2,transformer",
                  help="rows: model kinds, or resnet_bk:VARIANT for a block variant of "
                       "scripts/ablations.py (e.g. resnet_bk:green_keyed)")
  ap.add_argument("--train_len", type=int, default=256)
  ap.add_argument("--steps", type=int, default=2000)
  ap.add_argument("--budget_s", type=float, default=0.0, help="> 0: also stop training at this wall clock")
  ap.add_argument("--batch", type=int, default=32)
  ap.add_argument("--d_model", type=int, default=64)
  ap.add_argument("--n_layers", type=int, default=2, help="ResNet-BK layers (baselines matched)")
  ap.add_argument("--n_heads", type=int, default=16)
  ap.add_argument("--lr", type=float, default=3e-3)
  ap.add_argument("--weight_decay", type=float, default=None, help="default: configs/base.py's")
  ap.add_argument("--no_match", action="store_true",
                  help="every kind uses --n_layers (no matching of parameters to resnet_bk)")
  ap.add_argument("--bk_overrides", default="",
                  help="comma list of key=value config overrides for resnet_bk (block variants)")
  ap.add_argument("--min_log2", type=int, default=6)
  ap.add_argument("--max_log2", type=int, default=20)
  ap.add_argument("--samples", type=int, default=64, help="test sequences per length (fewer when --token_budget binds)")
  ap.add_argument("--token_budget", type=int, default=4 << 20, help="test tokens per length")
  ap.add_argument("--seed", type=int, default=0)
  ap.add_argument("--quick", action="store_true")
  ap.add_argument("--out", default=None)
  args = ap.parse_args(argv)
  kinds = args.kinds.split(",")
  if args.quick:
    args.train_len, args.steps, args.batch, args.d_model, args.n_layers = 32, 3, 4, 16, 1
    args.n_heads, args.max_log2, args.samples, args.token_budget = common.QUICK_N_HEADS, 7, 4, 1024
  out = common.out_dir(args.out, "long_range/induction_anchor", args.quick)
  setup = induction.Setup(
      train_len=args.train_len, steps=args.steps, batch=args.batch, d_model=args.d_model,
      n_layers=args.n_layers, n_heads=args.n_heads, lr=args.lr, weight_decay=args.weight_decay,
      seed=args.seed, match=not args.no_match, bk_overrides=args.bk_overrides,
      budget_s=args.budget_s, lengths=tuple(2 ** k for k in range(args.min_log2, args.max_log2 + 1)),
      samples=args.samples, token_budget=args.token_budget)
  try:  # a bad row or --bk_overrides: one line, before any training
    induction.check_configs(kinds, setup)
  except ValueError as e:
    ap.error(str(e))
  return induction.run_induction(kinds, setup, out, vars(args))


if __name__ == "__main__":
  main()

"""Compare ResNet-BK, Mamba (Mamba-2 when registered) and the Transformer at matched parameters
on equal tokens: validation loss, loss by position in long documents, passkey retrieval, MQAR.

  python scripts/compare_models.py --suite gpu           # ~20M params, N 8192, pysource, < 8 min
  python scripts/compare_models.py --suite cpu           # ~1M params, 16M tokens, Tiny Shakespeare
  python scripts/compare_models.py --quick               # the same stages, tiny, on the CPU
  python scripts/compare_models.py --suite gpu --rows resnet_bk:green_keyed,transformer \\
      --tokens 50000000 --budget-scale 3
  python scripts/compare_models.py --suite gpu --stages mqar --budget-scale 2   # rerun MQAR only
  python scripts/compare_models.py --suite cpu --stages train,eval               # no MQAR
  python scripts/compare_models.py --suite cpu --rows mamba --stages train,eval  # add a row
  python scripts/compare_models.py --suite cpu --rows resnet_bk:green_keyed --stages train,eval \\
      --dropout 0 --out /tmp/cpu_no_dropout           # the CPU suite without its dropout
  python scripts/compare_models.py --suite cpu --rows mamba --stages train,eval --resume  # after a kill

Writes comparison.json (provenance-stamped), comparison.md, comparison.png, and passkey.png and
mqar.png where some row has those cells, under --out (default results/quality/compare_models/<suite>[_quick]/). Stages, sizes and what each
table means: docs/guides/comparison.md.
"""

from __future__ import annotations

import argparse
import os
import sys

from bk_jax.reports import compare_models


def parser() -> argparse.ArgumentParser:
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  ap.add_argument("--suite", choices=sorted(compare_models.SUITES), default="gpu",
                  help="gpu: ~20M parameters on pysource (one GPU, < 8 min); cpu: ~1M parameters "
                       "on Tiny Shakespeare (hours on an idle CPU)")
  ap.add_argument("--quick", action="store_true",
                  help="the suite's stages at tiny sizes, in this process (CPU, for tests)")
  ap.add_argument("--rows", default="",
                  help="comma-separated rows: KIND or resnet_bk:VARIANT (default: seed BK, "
                       f"resnet_bk:{compare_models.BEST_BK}, then every registered kind of "
                       f"{', '.join(compare_models.BASELINES)})")
  ap.add_argument("--tokens", type=int, default=0,
                  help="training tokens per row (default: the suite's)")
  ap.add_argument("--dropout", type=float, default=None,
                  help="training dropout of every row's embedding and residual branches "
                       "(model.dropout; default the suite's: cpu 0.1, gpu 0)")
  ap.add_argument("--budget-scale", type=float, default=1.0,
                  help="multiply every stage's time budget")
  ap.add_argument("--stages", default="",
                  help="comma-separated stage kinds to run: train, eval, mqar (default all); in "
                       "an earlier run's --out (same suite, --quick, --tokens) they replace that "
                       "run's stages of these rows and new rows join it (eval without train "
                       "needs that run's checkpoints)")
  ap.add_argument("--resume", action="store_true",
                  help="stages that train continue from their run's latest checkpoint in --out "
                       "(a stage stopped by its budget, or the command killed) instead of "
                       "starting over")
  ap.add_argument("--out", default=None)
  return ap


def main(argv=None) -> dict:
  args = parser().parse_args(argv)
  out = args.out or os.path.join("results", "quality", "compare_models",
                                 args.suite + ("_quick" if args.quick else ""))
  try:
    return compare_models.run_compare(out, suite=args.suite, quick=args.quick,
                                      rows=[r for r in args.rows.split(",") if r] or None,
                                      tokens=args.tokens, budget_scale=args.budget_scale,
                                      dropout=args.dropout, resume=args.resume,
                                      stages=[s for s in args.stages.split(",") if s] or None,
                                      args=vars(args))
  except ValueError as e:  # a bad row, stage or earlier run: found before anything runs
    print(f"compare_models: error: {e}", file=sys.stderr)
    raise SystemExit(2) from None


if __name__ == "__main__":
  main()

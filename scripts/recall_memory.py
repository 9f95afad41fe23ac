#!/usr/bin/env python
"""What a trained recurrent model (a selective ResNet-BK block or Mamba) keeps of an
induction-heads answer until it is asked for: per test length, the accuracy and, per layer, the
state unit that holds most of the answer at the read and how much of the write it kept (its
retention), then that unit's decay rate by position (bk_jax.eval.recall_memory); on the test
sequences eval_extrapolation.py and induction_anchor.py score.

    python scripts/induction_anchor.py --kinds resnet_bk:selective,mamba --out runs/induction ...
    python scripts/recall_memory.py --checkpoint_dir runs/induction/runs/resnet_bk_selective \\
        --max_log2 16 --samples 16
    python scripts/recall_memory.py --checkpoint_dir runs/induction/runs/resnet_bk_selective \\
        --rate_scale 0=0.1 --output runs/induction/layer0_slower/recall_memory.json
    python scripts/recall_memory.py --checkpoint_dir runs/induction/runs/resnet_bk_selective \
        --filler 0=skip --filler 1=skip --output runs/induction/no_filler/recall_memory.json

Writes recall_memory.json (provenance-stamped) and recall_memory.md beside the checkpoint, or
at --output. Errors: one line `recall_memory.py: error: ...`, exit status 2.
"""

import argparse
import json
import os
import sys

from bk_jax.runtime.errors import one_line_errors


def main(argv=None) -> int:
  with one_line_errors("recall_memory.py"):
    p = argparse.ArgumentParser(prog="recall_memory.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint_dir", required=True, help="the run directory")
    p.add_argument("--checkpoint", default=None, help="a checkpoint name (default: the latest)")
    p.add_argument("--min_log2", type=int, default=6)
    p.add_argument("--max_log2", type=int, default=16)
    p.add_argument("--samples", type=int, default=16, help="test sequences per length")
    p.add_argument("--batch_size", type=int, default=4)
    p.add_argument("--rate_scale", action="append", default=[], metavar="LAYER[.UNIT]=F",
                   help="before probing, multiply the decay rate of a layer's units (or of one "
                        "selective head or Mamba channel) by F: does the model answer at longer "
                        "lengths if that layer forgets F times slower? (repeatable)")
    p.add_argument("--filler", action="append", default=[], metavar="LAYER=drop|skip",
                   help="a selective layer that treats every position but the answer's window "
                        "and the last --keep_recent as filler: drop (no write there) or skip (no "
                        "write and no decay): does the model answer at longer lengths then? "
                        "(repeatable)")
    p.add_argument("--keep_recent", type=int, default=256,
                   help="with --filler, the positions before the read that are not filler")
    p.add_argument("--output", default=None, help="the JSON path (default: in --checkpoint_dir)")
    args = p.parse_args(sys.argv[1:] if argv is None else argv)

    from bk_jax.eval.loading import load_checkpoint
    from bk_jax.eval.recall_memory import (format_positions, format_table, memory_table,
                                           parse_filler, parse_rate_scales, scale_rates)
    from bk_jax.runtime.provenance import stamped

    # a bad spec is one line before any loading
    scales, filler = parse_rate_scales(args.rate_scale), parse_filler(args.filler)
    ck = load_checkpoint(args.checkpoint_dir, args.checkpoint)
    scale_rates(ck.model, scales)
    lengths = [2 ** k for k in range(args.min_log2, args.max_log2 + 1)]
    rows = memory_table(ck.model, ck.config.data.synthetic, lengths, samples=args.samples,
                        batch_size=args.batch_size, filler=filler,
                        keep_recent=args.keep_recent)
    table = (format_table(rows) + f"\nDecay by position at {rows[-1]['length']:,} tokens:\n\n"
             + format_positions(rows[-1]))
    print(table)
    path = args.output or os.path.join(os.path.abspath(args.checkpoint_dir), "recall_memory.json")
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w") as f:
      json.dump(stamped(dict(args=vars(args), checkpoint=ck.name, rows=rows)), f, indent=2)
    with open(os.path.splitext(path)[0] + ".md", "w") as f:
      scaled = (f" with decay rates scaled ({', '.join(args.rate_scale)})" if args.rate_scale
                else "")
      if filler:
        scaled += (f" with filler ({', '.join(args.filler)}) outside the answer and the last "
                   f"{args.keep_recent} positions")
      f.write(f"# What holds the induction answer: {ck.name} of {args.checkpoint_dir}{scaled}"
              f"\n\n{table}")
    print(f"Results saved: {path}")
  return 0


if __name__ == "__main__":
  sys.exit(main())

#!/usr/bin/env python
"""Length extrapolation on a synthetic task: accuracy at test lengths 2^6 ... 2^20 for a model
trained at one length (the Mamba paper's induction-heads table), as a markdown table, JSON and PNG.

    # train at 256 on induction heads, then tabulate (bk_jax.train's loop; CPU: minutes)
    python scripts/eval_extrapolation.py --train --config configs/base.py \\
        --config.data.dataset=synthetic --config.train.seq_len=256 \\
        --config.train.steps_per_length=2000 --config.save_dir=runs/induction256
    # a run trained on data.dataset=synthetic already
    python scripts/eval_extrapolation.py --checkpoint_dir runs/induction256 --max_log2 16
    # machinery check without training
    python scripts/eval_extrapolation.py --untrained --config configs/base.py \\
        --config.data.dataset=synthetic --max_log2 12

Errors: one line `eval_extrapolation.py: error: ...`, exit status 2.
"""

import argparse
import json
import os
import sys

from bk_jax.runtime.errors import one_line_errors


def main(argv=None) -> int:
  argv = sys.argv[1:] if argv is None else argv
  with one_line_errors("eval_extrapolation.py"):
    from bk_jax.train.cli import DEFAULT_CONFIG, add_config_help, apply_override, load_config
    from bk_jax.train.config_validation import ConfigError
    from eval_streaming import split_config_args

    path, overrides, rest = split_config_args(argv)
    p = argparse.ArgumentParser(
        prog="eval_extrapolation.py",
        description="Length extrapolation on a synthetic task. --train and --untrained need "
                    "--config FILE (with --config.data.dataset=synthetic); --checkpoint_dir "
                    "alone uses the checkpoint's own config.")
    add_config_help(p)
    p.add_argument("--checkpoint_dir", default=None)
    p.add_argument("--checkpoint", default=None)
    p.add_argument("--train", action="store_true", help="train with --config first")
    p.add_argument("--untrained", action="store_true", help="random-init model of --config")
    p.add_argument("--min_log2", type=int, default=6)
    p.add_argument("--max_log2", type=int, default=20)
    p.add_argument("--samples", type=int, default=64)
    p.add_argument("--token_budget", type=int, default=4 << 20, help="tokens per length (0: no cap)")
    p.add_argument("--batch_size", type=int, default=4)
    p.add_argument("--chunk_size", type=int, default=None)
    p.add_argument("--output", default=None)
    p.add_argument("--no_progress", action="store_true")
    args, unknown = p.parse_known_args(rest)
    if unknown:
      raise ConfigError(f"unrecognised arguments: {' '.join(unknown)}")
    if path is not None:
      config = load_config(path)
    elif args.checkpoint_dir:
      from bk_jax.eval.loading import checkpoint_config
      config = checkpoint_config(args.checkpoint_dir, args.checkpoint, load_config(DEFAULT_CONFIG))
    else:
      raise ConfigError("give --checkpoint_dir or --config FILE")
    for key, val in overrides:
      apply_override(config, key, val)
    if args.checkpoint_dir:
      config.save_dir = args.checkpoint_dir
    if args.chunk_size:
      config.eval.chunk_size = args.chunk_size
    if args.train:
      if config.data.dataset != "synthetic":
        raise ConfigError("--train needs --config.data.dataset=synthetic")
      from bk_jax.train.loop import run
      run(config)
    from bk_jax.eval.extrapolation import run_extrapolation
    from bk_jax.eval.plots import plot_extrapolation
    from bk_jax.runtime.provenance import stamped
    lengths = tuple(2 ** k for k in range(args.min_log2, args.max_log2 + 1))
    out = run_extrapolation(config, args.checkpoint, lengths=lengths, samples=args.samples,
                            token_budget=args.token_budget, batch_size=args.batch_size,
                            config_is_explicit=path is not None and not args.untrained,
                            untrained=args.untrained, progress=not args.no_progress)
    print(out["table"])
    base = args.output or os.path.join(os.path.abspath(config.save_dir),
                                       f"extrapolation_{out['task']}.json")
    os.makedirs(os.path.dirname(base) or ".", exist_ok=True)
    with open(base, "w") as f:
      json.dump(stamped(out), f, indent=2)
    png = plot_extrapolation(os.path.splitext(base)[0] + ".png", out["rows"], train_len=out["train_len"],
                             title=f"{out['task']}: {out['model_kind']} trained at {out['train_len']}")
    print(f"Results saved: {base}\nPlot saved: {png}")
  return 0


if __name__ == "__main__":
  
  sys.exit(main())

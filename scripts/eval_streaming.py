#!/usr/bin/env python
"""Streaming evaluation of a trained checkpoint (state carried across chunks) to 1M+ tokens.

    python scripts/eval_streaming.py --checkpoint_dir runs/quickstart
    python scripts/eval_streaming.py --checkpoint_dir runs/multi_length \\
        --checkpoint checkpoint_seq8192_final --split valid --eval_tokens 1000000 --per_length

Without --config the checkpoint's own config is used; `--config FILE` must match the
checkpoint's architecture. `--config.a.b=value` overrides apply either way. Writes a JSON (and
with --plot / --per_length a PNG) next to the checkpoints unless --output is given. A split
shorter than --eval_tokens is read to its end and the true token count is reported.
Errors: one line `eval_streaming.py: error: ...`, exit status 2.
"""

import argparse
import os
import sys

from bk_jax.runtime.errors import one_line_errors
from bk_jax.train.cli import add_config_help, split_config_args


def parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="eval_streaming.py", description=__doc__.split("\n\n")[0])
  p.add_argument("--checkpoint_dir", default=None, help="run directory (default: config.save_dir)")
  p.add_argument("--checkpoint", default=None,
                 help="latest (default), a name such as checkpoint_seq8192_final, a step, or a path")
  p.add_argument("--split", default=None, choices=("train", "valid", "test"), help="default test")
  p.add_argument("--eval_tokens", type=int, default=None, help="default 1,000,000 (<= 0: whole split)")
  p.add_argument("--chunk_size", type=int, default=None)
  p.add_argument("--output", default=None, help="JSON path")
  p.add_argument("--plot", default=None, help="PNG path for the degradation plot")
  p.add_argument("--per_length", action="store_true",
                 help="also stream every checkpoint_seq<N>_final (loss vs training length)")
  p.add_argument("--per_length_tokens", type=int, default=None,
                 help="tokens per per-length checkpoint (default: --eval_tokens)")
  p.add_argument("--no_progress", action="store_true")
  return add_config_help(p)


def main(argv=None) -> int:
  argv = sys.argv[1:] if argv is None else argv
  with one_line_errors("eval_streaming.py"):
    from bk_jax.train.cli import DEFAULT_CONFIG, apply_override, load_config
    from bk_jax.train.config_validation import ConfigError

    path, overrides, rest = split_config_args(argv)
    args, unknown = parser().parse_known_args(rest)
    if unknown:
      raise ConfigError(f"unrecognised arguments: {' '.join(unknown)}")
    from bk_jax.eval.loading import checkpoint_config
    if path is not None:
      config = load_config(path)
      save_dir = args.checkpoint_dir or config.save_dir
    else:
      if not args.checkpoint_dir:
        raise ConfigError("give --checkpoint_dir (the run directory) or --config FILE")
      save_dir = args.checkpoint_dir
      config = checkpoint_config(save_dir, args.checkpoint, load_config(DEFAULT_CONFIG))
      config.eval.split = "test"  # the script's default split
    config.save_dir = save_dir
    for key, val in overrides:
      apply_override(config, key, val)
    for flag, field in (("split", "split"), ("eval_tokens", "eval_tokens"), ("chunk_size", "chunk_size")):
      v = getattr(args, flag)
      if v is not None:
        config.eval[field] = v
    config.eval.eval_only, config.eval.streaming = True, True
    config.logging.console = True  # this script's job is to print the results
    if args.no_progress:
      config.logging.progress_bar = False

    from bk_jax.eval.streaming import run_streaming_eval, write_json
    from bk_jax.runtime.provenance import stamped
    out = run_streaming_eval(config, args.checkpoint, config_is_explicit=path is not None,
                             output=args.output)
    per_length = None
    if args.per_length:
      from bk_jax.eval.degradation import evaluate_per_length, format_per_length
      per_length = evaluate_per_length(config, eval_tokens=args.per_length_tokens,
                                       config_is_explicit=path is not None,
                                       progress=not args.no_progress)
      print("Loss vs training length:\n" + format_per_length(per_length))
      out["per_length"] = per_length
      write_json(out["output"], stamped(out))
    if args.plot or per_length:
      from bk_jax.eval.plots import plot_degradation
      png = args.plot or os.path.splitext(out["output"])[0] + ".png"
      plot_degradation(png, out["buckets"], per_length,
                       title=f"{out['model_kind']} | {out['checkpoint_name']} | {out['split']} split")
      print(f"Plot saved: {png}")
  return 0


if __name__ == "__main__":
  sys.exit(main())

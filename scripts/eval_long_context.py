#!/usr/bin/env python
"""Long-context evaluations of a trained checkpoint: loss by position inside long held-out
documents (--position), passkey retrieval by depth x length (--passkey), and the MQAR accuracy
grid (--mqar, for a run trained on data.synthetic.task=mqar). Prints markdown tables; writes a
JSON and heat maps (passkey, MQAR).

    python scripts/eval_long_context.py --checkpoint_dir runs/pysource8k --position --passkey
    python scripts/eval_long_context.py --checkpoint_dir runs/pysource8k --passkey \\
        --passkey_lengths 1024,4096,16384 --depths 0,0.5,1 --samples 8
    python scripts/eval_long_context.py --checkpoint_dir runs/mqar512 --mqar --kv_pairs 16,64,256

Without --config the checkpoint's own config is used; `--config.a.b=value` overrides apply. The
evaluations and their tables: docs/guides/comparison.md. Errors: one line
`eval_long_context.py: error: ...`, exit status 2.
"""

import argparse
import os
import sys

from bk_jax.runtime.errors import one_line_errors
from bk_jax.train.cli import add_config_help, split_config_args


def _ints(text: str) -> list[int]:
  return [int(x) for x in text.split(",") if x]


def _floats(text: str) -> list[float]:
  return [float(x) for x in text.split(",") if x]


def parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="eval_long_context.py", description=__doc__.split("\n\n")[0])
  p.add_argument("--checkpoint_dir", default=None, help="run directory (default: config.save_dir)")
  p.add_argument("--checkpoint", default=None, help="latest (default), a name, a step or a path")
  p.add_argument("--position", action="store_true", help="loss by position in long documents")
  p.add_argument("--doc_tokens", type=int, default=32768, help="--position: tokens per document")
  p.add_argument("--max_docs", type=int, default=16, help="--position: documents (longest first)")
  p.add_argument("--first_edge", type=int, default=512, help="--position: end of the first bucket")
  p.add_argument("--doc_split", default="valid", choices=("train", "valid", "test"))
  p.add_argument("--passkey", action="store_true", help="passkey retrieval by depth x length")
  p.add_argument("--passkey_lengths", type=_ints, default=[2048, 8192, 32768])
  p.add_argument("--depths", type=_floats, default=[0.0, 0.25, 0.5, 0.75, 1.0])
  p.add_argument("--samples", type=int, default=4, help="--passkey: prompts per cell")
  p.add_argument("--template", default=None, choices=("python", "prose"),
                 help="--passkey: default python for pysource/pystdlib, else prose")
  p.add_argument("--filler_split", default="test", choices=("train", "valid", "test"))
  p.add_argument("--mqar", action="store_true", help="MQAR accuracy over N x key-value pairs")
  p.add_argument("--mqar_lengths", type=_ints, default=[256, 512, 1024, 2048, 4096])
  p.add_argument("--kv_pairs", type=_ints, default=[16, 32, 64, 128, 256])
  p.add_argument("--mqar_samples", type=int, default=32)
  p.add_argument("--batch_size", type=int, default=4)
  p.add_argument("--chunk_size", type=int, default=8192)
  p.add_argument("--output", default=None, help="JSON path (default: next to the checkpoints)")
  return add_config_help(p)


def main(argv=None) -> int:
  argv = sys.argv[1:] if argv is None else argv
  with one_line_errors("eval_long_context.py"):
    from bk_jax.eval import long_context as lc
    from bk_jax.eval.loading import checkpoint_config
    from bk_jax.eval.plots import plot_heatmaps
    from bk_jax.runtime.jsonio import write_json
    from bk_jax.runtime.provenance import stamped
    from bk_jax.train.cli import DEFAULT_CONFIG, apply_override, load_config
    from bk_jax.train.config_validation import ConfigError

    path, overrides, rest = split_config_args(argv)
    args, unknown = parser().parse_known_args(rest)
    if unknown:
      raise ConfigError(f"unrecognised arguments: {' '.join(unknown)}")
    if path is not None:
      config = load_config(path)
    elif args.checkpoint_dir:
      config = checkpoint_config(args.checkpoint_dir, args.checkpoint, load_config(DEFAULT_CONFIG))
    else:
      raise ConfigError("give --checkpoint_dir (the run directory) or --config FILE")
    config.save_dir = args.checkpoint_dir or config.save_dir
    for key, val in overrides:
      apply_override(config, key, val)
    out = lc.run_long_context(
        config, args.checkpoint,
        position_spec=lc.PositionSpec(args.doc_split, args.doc_tokens, args.max_docs,
                                      args.first_edge) if args.position else None,
        passkey_spec=lc.PasskeySpec(args.passkey_lengths, args.depths, args.samples,
                                    args.filler_split, args.template) if args.passkey else None,
        mqar_spec=lc.MQARSpec(args.mqar_lengths, args.kv_pairs, args.mqar_samples)
        if args.mqar else None,
        batch_size=args.batch_size, chunk_size=args.chunk_size)
    print(out["table"])
    base = args.output or os.path.join(os.path.abspath(config.save_dir), "long_context_eval.json")
    write_json(base, stamped(out), indent=1)
    print(f"Results saved: {base}")
    for key, x, y in (("passkey", "length", "depth"), ("mqar", "length", "kv_pairs")):
      if key in out:
        png = plot_heatmaps(os.path.splitext(base)[0] + f"_{key}.png",
                            {out["model_kind"]: out[key]}, x=x, y=y, title=f"{key}: accuracy (%)")
        print(f"Plot saved: {png}")
  return 0


if __name__ == "__main__":
  sys.exit(main())

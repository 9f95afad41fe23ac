#!/usr/bin/env python
"""Generate text from a trained run with the streaming cache (O(1) work per new token).

    python scripts/generate.py --checkpoint_dir runs/quickstart --prompt "def main(" \\
        --max_new_tokens 200 --temperature 0.8 --top_k 40 --top_p 0.95 --seed 0

Prints the prompt followed by each continuation. --temperature 0 is greedy decoding.
Errors: one line `generate.py: error: ...`, exit status 2. A run that DIVERGED gives one line
`generate.py: warning: ...` (its weights are the restored ones from before the divergence).
"""

import argparse
import json
import sys

from bk_jax.runtime.errors import one_line_errors


def parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="generate.py", description=__doc__.split("\n\n")[0])
  p.add_argument("--checkpoint_dir", required=True, help="run directory (the training save_dir)")
  p.add_argument("--checkpoint", default=None,
                 help="latest (default: the most recently written), a name such as "
                      "checkpoint_final or checkpoint_seq256_best, a step, or a path")
  p.add_argument("--prompt", default="", help="text to continue (default: start of a document)")
  p.add_argument("--max_new_tokens", type=int, default=200)
  p.add_argument("--temperature", type=float, default=0.8, help="0 = greedy")
  p.add_argument("--top_k", type=int, default=0, help="keep the k most likely tokens (0 = off)")
  p.add_argument("--top_p", type=float, default=1.0, help="nucleus mass in (0, 1] (1 = off)")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--num_samples", type=int, default=1)
  p.add_argument("--json", action="store_true", help="print the result as JSON")
  return p


def main(argv=None) -> int:
  args = parser().parse_args(sys.argv[1:] if argv is None else argv)
  with one_line_errors("generate.py"):
    from bk_jax.eval.generate import generate_text

    out = generate_text(args.checkpoint_dir, args.prompt, max_new_tokens=args.max_new_tokens,
                        temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                        seed=args.seed, checkpoint=args.checkpoint, num_samples=args.num_samples)
  if out["warning"]:
    print(f"generate.py: warning: {out['warning']}", file=sys.stderr)
  if args.json:
    print(json.dumps(out, indent=1))
    return 0
  for i, s in enumerate(out["samples"]):
    if len(out["samples"]) > 1:
      print(f"--- sample {i + 1} ---")
    print(args.prompt + s)
  print(f"[{out['checkpoint']} | {args.max_new_tokens} tokens x {args.num_samples} in "
        f"{out['seconds']:.2f} s incl. compile]", file=sys.stderr)
  return 0


if __name__ == "__main__":
  sys.exit(main())

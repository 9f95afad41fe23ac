"""The chunkwise scalar-decay kernel vs the per-token recurrence, over chunk lengths.

    python scripts/bench_chunkwise.py                       # batch 4, N 2048, 16 heads, n = d = 8
    python scripts/bench_chunkwise.py --chunks 8,16,32,64 --n 8192 --batch 1
    python scripts/bench_chunkwise.py --quick               # seconds (tests)

Prints the median of --repeats timed calls (forward, and forward+backward), XLA's temporary
memory, and the speed ratio to the recurrence; writes the rows (provenance-stamped) to --out.
"""

from __future__ import annotations

import argparse
import json
import os

from bk_jax.reports import chunkwise_bench
from bk_jax.runtime.provenance import stamped


def main(argv=None) -> list[dict]:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--batch", type=int, default=4)
  ap.add_argument("--n", type=int, default=2048, help="sequence length")
  ap.add_argument("--heads", type=int, default=16)
  ap.add_argument("--key-dim", type=int, default=8)
  ap.add_argument("--value-dim", type=int, default=8)
  ap.add_argument("--chunks", default="8,16,32,64")
  ap.add_argument("--real", action="store_true", help="a real decay (|G|, Mamba-2), not complex")
  ap.add_argument("--repeats", type=int, default=5)
  ap.add_argument("--quick", action="store_true", help="tiny sizes, for tests")
  ap.add_argument("--out", default=None, help="JSON file for the rows")
  args = ap.parse_args(argv)
  if args.quick:
    args.batch, args.n, args.heads, args.chunks, args.repeats = 1, 64, 2, "8,16", 1
  rows = chunkwise_bench.run(args.batch, args.n, args.heads, args.key_dim, args.value_dim,
                             [int(c) for c in args.chunks.split(",")], args.repeats,
                             rotating=not args.real)
  if args.out:
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as f:
      json.dump(stamped({"args": vars(args), "rows": rows}), f, indent=1)
    print(f"wrote {args.out}")
  return rows


if __name__ == "__main__":
  main()

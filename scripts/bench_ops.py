"""Benchmark the BK resolvent methods: ns per element, XLA temp memory, and a bandwidth roofline.

    python scripts/bench_ops.py                   # full grid (a few minutes on 2 CPU cores)
    python scripts/bench_ops.py --quick           # tiny grid (seconds), used by the test suite
    python scripts/bench_ops.py --op green --d 8  # resolvent.causal_green (d values per head)

For every method in bk_jax.ops.resolvent.METHODS, sequence length N and head count H it times
the jitted forward pass and forward+backward (gradient of a scalar loss w.r.t. v), reports the
median over repeats in ns per (position, head) element, XLA's temporary-memory estimate of the
compiled program, and the ratio to a memory-bandwidth roofline measured in the same run: a numpy
copy of the bytes the op must touch (float32 v in, complex64 g out: 12 bytes per element; for
--op green also float32 x in and complex64 y out, 4 + 12 d bytes). temp/g is XLA's temporary
memory over the output's size (g, or y for --op green).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import jax

from bk_jax.ops import resolvent
from bk_jax.runtime.provenance import stamped
# the timing (bench_resolvent, shared with the GPU suite) and the grid live in bk_jax.reports
from bk_jax.reports.throughput import resolvent_grid


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true", help="tiny grid for smoke tests")
  parser.add_argument("--methods", default=",".join(resolvent.METHODS))
  parser.add_argument("--lengths", default="1024,8192,65536,131072")
  parser.add_argument("--heads", default="16,256")
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--op", choices=("diag", "green"), default="diag",
                      help="causal_diag, or causal_green with d values per head")
  parser.add_argument("--d", type=int, default=8, help="values per head for --op green")
  parser.add_argument("--out", default="results/speed_cpu/ops/bench_ops.json")
  args = parser.parse_args(argv)
  if args.quick:
    args.lengths, args.heads, args.repeats = "256,1024", "4", 2
  methods = [m for m in args.methods.split(",") if m]
  for m in methods:
    if m not in resolvent.METHODS:
      print(f"error: unknown method {m!r}; choose from {resolvent.METHODS}", file=sys.stderr)
      return 2
  lengths = [int(x) for x in args.lengths.split(",")]
  heads_list = [int(x) for x in args.heads.split(",")]

  op_name = f"green (d={args.d})" if args.op == "green" else "diag"
  print(f"op {op_name}; jax {jax.__version__} on {jax.devices()[0].device_kind} x{jax.device_count()}, "
        f"{os.cpu_count()} host cores; medians of {args.repeats} repeats", flush=True)
  rows = resolvent_grid(methods, lengths, heads_list, args.repeats, op=args.op, d=args.d)
  if args.out:
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as f:
      json.dump(stamped({"jax": jax.__version__, "device": jax.devices()[0].device_kind,
                         "repeats": args.repeats, "rows": rows}), f, indent=1)
    print(f"wrote {args.out}")
  return 0


if __name__ == "__main__":
  sys.exit(main())

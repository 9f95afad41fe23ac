#!/usr/bin/env python
"""Benchmark the bk_jax input pipeline (tokens/s at N = 2048 and 131072).

Usage::

    python scripts/bench_data.py [--dataset pystdlib] [--path P] [--tokens_per_batch 65536]
                                 [--out results/speed_cpu/data_pipeline/bench_data.json]

Prints a table (median of repeats) and writes the numbers as JSON to --out.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
from pathlib import Path

from bk_jax.data import cli_errors, default_data_config, load_corpus, vocab_size
from bk_jax.data import bench
from bk_jax.runtime.provenance import stamped


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[1])
  ap.add_argument("--dataset", default="pystdlib")
  ap.add_argument("--path", default="")
  ap.add_argument("--tokenizer", default="byte")
  ap.add_argument("--seq_lens", default="2048,131072")
  ap.add_argument("--tokens_per_batch", type=int, default=65536)
  ap.add_argument("--batches", type=int, default=20)
  ap.add_argument("--repeats", type=int, default=5)
  ap.add_argument("--no_step", action="store_true", help="skip the toy JAX step comparison")
  ap.add_argument("--out", default="results/speed_cpu/data_pipeline/bench_data.json")
  args = ap.parse_args()

  cfg = default_data_config()
  cfg.update(dataset=args.dataset, path=args.path, tokenizer=args.tokenizer)
  seq_lens = [int(s) for s in args.seq_lens.split(",")]
  rows, report = [], dict(platform=platform.platform(), cpus=os.cpu_count(), config=cfg.to_dict())
  with cli_errors("bench_data"):
    if args.dataset != "synthetic":
      report["corpus"] = bench.corpus_times(cfg)
      load_corpus(cfg)  # make sure the real cache exists before timing the pipeline
    for n in seq_lens:
      # Synchronous reads (no background thread) measure the pipeline's own cost; the
      # prefetching iterator (config defaults) is what the trainer uses.
      sync = cfg.copy_and_resolve_references()
      sync.prefetch_batches = 0
      p = bench.pipeline_throughput(sync, n, args.tokens_per_batch, batches=args.batches,
                                    repeats=args.repeats)
      p["prefetch_tokens_per_s"] = bench.pipeline_throughput(
          cfg, n, args.tokens_per_batch, batches=args.batches,
          repeats=args.repeats)["tokens_per_s"]
      s = None if args.no_step else bench.toy_step_throughput(
          n, args.tokens_per_batch, vocab_size(cfg))
      rows.append(dict(pipeline=p, toy_step=s))
  report["rows"] = rows

  if "corpus" in report:
    c = report["corpus"]
    print(f"{args.dataset}/{args.tokenizer}: {c['train_tokens']:,} train tokens; "
          f"first run (tokenize) {c['tokenize_s']:.2f} s, "
          f"cached load {1e3 * c['cached_load_s']:.1f} ms")
  print(f"{'N':>8} {'batch':>5} {'sync tok/s':>13} {'ms/batch':>9} {'startup ms':>10} "
        f"{'prefetch tok/s':>15} "
        f"{'toy step tok/s':>15} {'ms/step':>8} {'ratio':>6}")
  for r in rows:
    p, s = r["pipeline"], r["toy_step"]
    tail = (f"{s['tokens_per_s']:>15,.0f} {s['ms_per_step']:>8.1f} "
            f"{p['tokens_per_s'] / s['tokens_per_s']:>6.0f}x") if s else ""
    print(f"{p['seq_len']:>8} {p['batch']:>5} {p['tokens_per_s']:>13,.0f} "
          f"{p['ms_per_batch']:>9.2f} {p['startup_ms']:>10.1f} "
          f"{p['prefetch_tokens_per_s']:>15,.0f} {tail}")
  out = Path(args.out)
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text(json.dumps(stamped(report), indent=1))
  print(f"wrote {out}")


if __name__ == "__main__":
  main()

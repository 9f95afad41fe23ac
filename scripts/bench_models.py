"""Alias of scripts/benchmark.py with this script's former defaults (8 ResNet-BK layers, 3 repeats,
Transformer up to N = 8192); every flag of benchmark.py works (e.g. --json out.json).

  python scripts/bench_models.py [--lengths 2048,8192,32768,131072] [--json out.json]
"""

import benchmark

if __name__ == "__main__":
  ap = benchmark.parser()
  ap.set_defaults(n_layers=8, repeats=3, transformer_max_len=8192)
  benchmark.main(ap=ap)

"""Training throughput, step time, peak memory and MFU per model kind and sequence length.

Every kind at (nearly) equal parameters (baselines get the layer count closest to ResNet-BK's)
and equal tokens per step (B = max(1, T // N)). Each cell is the trainer's jitted step
(bk_jax.reports.throughput.bench_one, run by bk_jax.reports.benchmark): one warm-up then
`--repeats` timed steps; median, min and max step time; XLA's peak memory of the compiled step;
MFU = model FLOP/s (XLA's cost analysis of the step, and 6·params·tokens) over a float32 matmul
peak measured on this machine in the same run. Writes benchmark.json, benchmark.md and
benchmark.png (tokens/s and memory against N) under --out (default results/speed_cpu/benchmark/), prints
PASS/FAIL for the speed and memory targets the grid allows (also in benchmark.json "checks"), and with
`--json FILE` also writes {"rows", "checks"} to FILE (scripts/bench_models.py is an alias).

  python scripts/benchmark.py                                     # 2k ... 131k, 131,072 tokens/step
  python scripts/benchmark.py --lengths 2048,8192,32768 --tokens-per-step 32768
  python scripts/benchmark.py --quick                             # seconds: tiny sizes (tests)
  python scripts/benchmark.py --suite gpu                         # the GPU suite (< 6 min, one GPU)
  python scripts/benchmark.py --suite gpu --quick                 # the same stages, tiny, on CPU

`--suite gpu` runs bk_jax.reports.gpu_suite instead (ops grid, every kind at d_model 512 on its
fastest path in bf16, configs/seq32k.py for 40 steps, 1M-token streaming; each stage under its
own time budget) and writes gpu_suite.json/.md/.png under --out (default results/speed_gpu/gpu_suite/).
"""

from __future__ import annotations

import argparse

from bk_jax.data.tokenizers import ByteTokenizer
from bk_jax.reports import benchmark, common, runs


def parser() -> argparse.ArgumentParser:
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  ap.add_argument("--kinds", default="resnet_bk,mamba,mamba2,transformer",
                  help="rows: model kinds or resnet_bk:VARIANT (a block variant of scripts/ablations.py)")
  ap.add_argument("--lengths", default="2048,8192,32768,131072")
  ap.add_argument("--tokens-per-step", type=int, default=131072)
  ap.add_argument("--repeats", type=int, default=5)
  ap.add_argument("--d-model", type=int, default=128)
  ap.add_argument("--n-layers", type=int, default=4, help="ResNet-BK layers (baselines matched)")
  ap.add_argument("--vocab", type=int, default=ByteTokenizer.vocab_size,
                  help="vocabulary (default: the byte tokenizer's)")
  ap.add_argument("--transformer-max-len", type=int, default=32768,
                  help="skip the (quadratic) Transformer above this N")
  ap.add_argument("--quick", action="store_true", help="tiny sizes, for tests")
  ap.add_argument("--out", default=None)
  ap.add_argument("--json", default=None, help="also write the rows and target checks to this file")
  ap.add_argument("--suite", choices=("cpu", "gpu"), default="cpu",
                  help="cpu: the table above; gpu: the time-bounded GPU suite")
  ap.add_argument("--stages", default=None, help="--suite gpu: comma-separated subset of stages")
  ap.add_argument("--budget-scale", type=float, default=1.0,
                  help="--suite gpu: multiply every stage's time budget")
  return ap


def main(argv=None, ap: argparse.ArgumentParser | None = None) -> dict:
  ap = ap or parser()
  args = ap.parse_args(argv)
  try:
    runs.check_rows(args.kinds.split(","))  # before any timing
  except ValueError as e:
    ap.error(str(e))
  if args.suite == "gpu":
    from bk_jax.reports import gpu_suite
    return gpu_suite.run_suite(common.out_dir(args.out, "speed_gpu/gpu_suite", args.quick), quick=args.quick,
                               stages=args.stages.split(",") if args.stages else None,
                               budget_scale=args.budget_scale)
  if args.quick:
    args.lengths, args.tokens_per_step, args.repeats = "64", 128, 1
    args.d_model, args.n_layers = 32, 1
  return benchmark.run_benchmark(
      args.kinds.split(","), [int(x) for x in args.lengths.split(",")],
      tokens_per_step=args.tokens_per_step, repeats=args.repeats, d_model=args.d_model,
      n_layers=args.n_layers, vocab=args.vocab, transformer_max_len=args.transformer_max_len,
      out=common.out_dir(args.out, "speed_cpu/benchmark", args.quick), args=vars(args), json_path=args.json)


if __name__ == "__main__":
  main()

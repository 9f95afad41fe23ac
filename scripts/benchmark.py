"""Training throughput, step time, peak memory and MFU per model kind and sequence length.

Every kind at (nearly) equal parameters (baselines get the layer count closest to ResNet-BK's)
and equal tokens per step (B = max(1, T // N)). Each cell is one jitted AdamW step
(bk_jax.reports.throughput.bench_one, the same step as scripts/bench_models.py): one warm-up then
`--repeats` timed steps; median, min and max step time; XLA's peak memory of the compiled step;
MFU = model FLOP/s (XLA's cost analysis of the step, and 6·params·tokens) over a float32 matmul
peak measured on this machine in the same run. Writes benchmark.json, benchmark.md and
benchmark.png (tokens/s and memory against N) under --out (default results/benchmark/).

  python scripts/benchmark.py                                     # 2k ... 131k, 131,072 tokens/step
  python scripts/benchmark.py --lengths 2048,8192,32768 --tokens-per-step 32768
  python scripts/benchmark.py --quick                             # seconds: tiny sizes (tests)
  python scripts/benchmark.py --suite gpu                         # the GPU suite (< 5 min, one GPU)
  python scripts/benchmark.py --suite gpu --quick                 # the same stages, tiny, on CPU

`--suite gpu` runs bk_jax.reports.gpu_suite instead (ops grid, every kind at d_model 512 on its
fastest path in bf16, configs/seq32k.py for 40 steps, 1M-token streaming; each stage under its
own time budget) and writes gpu_suite.json/.md/.png under --out (default results/gpu_suite/).
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from bk_jax.data.tokenizers import ByteTokenizer  # noqa: E402
from bk_jax.reports import common, plots, throughput  # noqa: E402


def main(argv=None) -> dict:
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  ap.add_argument("--kinds", default="resnet_bk,mamba,transformer")
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
  ap.add_argument("--suite", choices=("cpu", "gpu"), default="cpu",
                  help="cpu: the table above; gpu: the time-bounded GPU suite")
  ap.add_argument("--stages", default=None, help="--suite gpu: comma-separated subset of stages")
  ap.add_argument("--budget-scale", type=float, default=1.0,
                  help="--suite gpu: multiply every stage's time budget")
  args = ap.parse_args(argv)
  if args.suite == "gpu":
    from bk_jax.reports import gpu_suite
    return gpu_suite.run_suite(common.out_dir(args.out, "gpu_suite", args.quick), quick=args.quick,
                               stages=args.stages.split(",") if args.stages else None,
                               budget_scale=args.budget_scale)
  if args.quick:
    args.lengths, args.tokens_per_step, args.repeats = "64", 128, 1
    args.d_model, args.n_layers = 32, 1
  out = common.out_dir(args.out, "benchmark", args.quick)
  kinds = args.kinds.split(",")
  lengths = [int(x) for x in args.lengths.split(",")]

  target = throughput.param_count(throughput.model_config("resnet_bk", args.d_model, args.n_layers, args.vocab))
  cfgs, sizes = {}, {}
  for kind in kinds:
    layers = (args.n_layers if kind == "resnet_bk"
              else throughput.layers_for_params(
                  throughput.model_config(kind, args.d_model, 1, args.vocab), target))
    cfgs[kind] = throughput.model_config(kind, args.d_model, layers, args.vocab)
    sizes[kind] = dict(n_layers=layers, d_model=args.d_model, params=throughput.param_count(cfgs[kind]))
    print(f"# {kind}: d_model={args.d_model} n_layers={layers} params={sizes[kind]['params']:,}", flush=True)
  peak0 = throughput.matmul_peak_flops()
  print(f"# measured f32 matmul peak: {peak0 / 1e9:.1f} GFLOP/s", flush=True)
  rows, skipped = [], []
  header = ["kind", "N", "batch", "step s (median)", "step s min-max", "tokens/s", "peak MB",
            "peak B/token", "MFU (XLA flops)", "MFU (6ND)"]
  print(common.md_table(header, []), flush=True)
  for n in lengths:
    for kind in kinds:
      if kind == "transformer" and n > args.transformer_max_len:
        skipped.append(dict(kind=kind, n=n, reason=f"N > --transformer-max-len={args.transformer_max_len}"))
        print(f"| {kind} | {n} | skipped (quadratic attention, > --transformer-max-len) |", flush=True)
        continue
      r = throughput.bench_one(cfgs[kind], n, args.tokens_per_step, args.repeats)
      rows.append(r)
      print(common.md_table(header, [table_row(throughput.add_mfu(r, peak0))]).split("\n")[2], flush=True)
  peak1 = throughput.matmul_peak_flops()
  peak = max(peak0, peak1)  # the better of the two measurements: MFU is then a lower bound
  for r in rows:
    throughput.add_mfu(r, peak)
  md = (f"matmul peak (f32, measured before/after): {peak0 / 1e9:.1f} / {peak1 / 1e9:.1f} GFLOP/s\n\n"
        + common.md_table(header, [table_row(r) for r in rows]))
  with open(os.path.join(out, "benchmark.md"), "w") as f:
    f.write(md + "\n")
  common.write_json(out, "benchmark.json", dict(
      args=vars(args), sizes=sizes, matmul_peak_flops=[peak0, peak1], rows=rows, skipped=skipped))
  plots.plot_benchmark(os.path.join(out, "benchmark.png"), rows,
                       title=f"equal params (~{target:,}), {args.tokens_per_step} tokens/step; {common.machine()['cpu']}")
  print(md)
  print(f"# wrote {out}/benchmark.json, benchmark.md, benchmark.png")
  return dict(rows=rows, out=out)


def table_row(r: dict) -> list:
  def pct(x):
    return None if x is None else f"{100 * x:.1f}%"
  return [r["kind"], r["n"], r["batch"], round(r["step_s"], 3),
          f"{r['step_s_min']:.3f}-{r['step_s_max']:.3f}", r["tokens_per_s"], r["peak_mb"],
          r["peak_bytes_per_token"], pct(r.get("mfu_xla")), pct(r.get("mfu_6nd"))]


if __name__ == "__main__":
  main()

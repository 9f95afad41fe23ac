"""The CPU benchmark table of scripts/benchmark.py: every kind at equal parameters per N.

Each cell is `throughput.bench_one` (the trainer's jitted step; median, min and max of the timed
steps; XLA's peak memory); MFU is taken against the better of two float32 matmul peaks measured
before and after the grid. `target_checks` evaluates the speed and memory targets on the rows.
"""

from __future__ import annotations

import json
import os

from bk_jax.models import execution_paths
from bk_jax.reports import common, plots, runs, throughput
from bk_jax.runtime.provenance import stamped

HEADER = ["kind", "N", "batch", "step s (median)", "step s min-max", "tokens/s", "peak MB",
          "peak B/token", "MFU (XLA flops)", "MFU (6ND)"]


def table_row(r: dict) -> list:
  """One markdown row of a `bench_one` row (after `throughput.add_mfu`)."""
  def pct(x):
    return None if x is None else f"{100 * x:.1f}%"
  return [r["kind"], r["n"], r["batch"], round(r["step_s"], 3),
          f"{r['step_s_min']:.3f}-{r['step_s_max']:.3f}", r["tokens_per_s"], r["peak_mb"],
          r["peak_bytes_per_token"], pct(r.get("mfu_xla")), pct(r.get("mfu_6nd"))]


def target_checks(rows: list[dict], lengths: list[int]) -> list[dict]:
  """The speed and memory targets that the measured cells allow to check.

  resnet_bk tokens/s at 131k >= 0.8x at 2k; peak bytes/token at 131k <= 1.3x at 8k;
  resnet_bk >= 3x the attention baseline's tokens/s at 8k and >= the fastest state-space
  baseline's (Mamba or Mamba-2, named in the check) at every N (`common.BASELINE_FAMILIES`);
  the keyed Green block (resnet_bk:green_keyed) within 1.5x the default block's step and 2x its peak.

  Returns:
    list of dict(name, value, ok), in that order.
  """
  by = {(r["kind"], r["n"]): r for r in rows}
  tps = {key: r["tokens_per_s"] for key, r in by.items()}
  checks = []
  if ("resnet_bk", 2048) in by and ("resnet_bk", 131072) in by:
    ratio = by["resnet_bk", 131072]["tokens_per_s"] / by["resnet_bk", 2048]["tokens_per_s"]
    checks.append(("resnet_bk tokens/s 131k / 2k >= 0.8", ratio, ratio >= 0.8))
  if ("resnet_bk", 8192) in by and ("resnet_bk", 131072) in by:
    ratio = (by["resnet_bk", 131072]["peak_bytes_per_token"]
             / by["resnet_bk", 8192]["peak_bytes_per_token"])
    checks.append(("resnet_bk peak B/token 131k / 8k <= 1.3", ratio, ratio <= 1.3))
  if ("resnet_bk", 8192) in by and (att := common.fastest_baseline(tps, "attention", 8192)):
    ratio = tps["resnet_bk", 8192] / att[1]
    checks.append((f"resnet_bk / attention ({att[0]}) tokens/s at 8k >= 3", ratio, ratio >= 3))
  for n in lengths:
    if ("resnet_bk", n) in by and (ssm := common.fastest_baseline(tps, "state-space", n)):
      ratio = tps["resnet_bk", n] / ssm[1]
      checks.append((f"resnet_bk / fastest state-space ({ssm[0]}) tokens/s at {n} >= 1", ratio,
                     ratio >= 1))
  keyed = "resnet_bk:green_keyed"  # the keyed Green block: step within 1.5x, memory within 2x
  for n in lengths:
    if ("resnet_bk", n) in by and (keyed, n) in by:
      ratio = by["resnet_bk", n]["tokens_per_s"] / by[keyed, n]["tokens_per_s"]
      checks.append((f"{keyed} step / resnet_bk step at {n} <= 1.5", ratio, ratio <= 1.5))
      ratio = by[keyed, n]["peak_mb"] / by["resnet_bk", n]["peak_mb"]
      checks.append((f"{keyed} peak / resnet_bk peak at {n} <= 2", ratio, ratio <= 2))
  return [dict(name=n, value=v, ok=o) for n, v, o in checks]


def run_benchmark(kinds: list[str], lengths: list[int], *, tokens_per_step: int, repeats: int,
                  d_model: int, n_layers: int, vocab: int, transformer_max_len: int, out: str,
                  args: dict, json_path: str | None = None) -> dict:
  """Times every (kind, N) cell and writes benchmark.json, benchmark.md, benchmark.png.

  Args:
    kinds, lengths: the grid; the Transformer is skipped above `transformer_max_len`.
    tokens_per_step: T (batch = max(1, T // N)).
    repeats: timed steps per cell after one warm-up.
    d_model, n_layers, vocab: ResNet-BK's size; the other kinds get the layer count whose
      parameter total is closest (`throughput.layers_for_params`).
    out: output directory (exists).
    args: the command-line settings, recorded in benchmark.json.
    json_path: also write {"rows", "checks"} (stamped) to this file.
  Returns:
    dict(rows, checks, out).
  """
  target = throughput.param_count(throughput.model_config("resnet_bk", d_model, n_layers, vocab))
  cfgs, sizes = {}, {}
  for kind in kinds:  # a model kind, or "resnet_bk:VARIANT" (a block variant, same layers)
    base, variant = runs.parse_row(kind)
    ov = {k[len("model."):]: v for k, v in variant.items()}
    layers = (n_layers if base == "resnet_bk"
              else throughput.layers_for_params(
                  throughput.model_config(base, d_model, 1, vocab), target))
    cfgs[kind] = throughput.model_config(base, d_model, layers, vocab, **ov)
    sizes[kind] = dict(n_layers=layers, d_model=d_model, params=throughput.param_count(cfgs[kind]))
    print(f"# {kind}: d_model={d_model} n_layers={layers} params={sizes[kind]['params']:,}",
          flush=True)
  peak0 = throughput.matmul_peak_flops()
  print(f"# measured f32 matmul peak: {peak0 / 1e9:.1f} GFLOP/s", flush=True)
  rows, skipped = [], []
  print(common.md_table(HEADER, []), flush=True)
  for n in lengths:
    for kind in kinds:
      if kind == "transformer" and n > transformer_max_len:
        skipped.append(dict(kind=kind, n=n,
                            reason=f"N > --transformer-max-len={transformer_max_len}"))
        print(f"| {kind} | {n} | skipped (quadratic attention, > --transformer-max-len) |",
              flush=True)
        continue
      r = throughput.bench_one(cfgs[kind], n, tokens_per_step, repeats)
      r["kind"] = kind  # the row's name (a kind or a block variant)
      r["paths"] = execution_paths(cfgs[kind], batch=r["batch"], seq_len=n)
      rows.append(r)
      print(common.md_table(HEADER, [table_row(throughput.add_mfu(r, peak0))]).split("\n")[2],
            flush=True)
  peak1 = throughput.matmul_peak_flops()
  peak = max(peak0, peak1)  # the better of the two measurements: MFU is then a lower bound
  for r in rows:
    throughput.add_mfu(r, peak)
  checks = target_checks(rows, lengths)
  md = (f"matmul peak (f32, measured before/after): {peak0 / 1e9:.1f} / {peak1 / 1e9:.1f} "
        f"GFLOP/s\n\n" + common.md_table(HEADER, [table_row(r) for r in rows]))
  with open(os.path.join(out, "benchmark.md"), "w") as f:
    f.write(md + "\n")
  common.write_json(out, "benchmark.json", dict(
      args=args, sizes=sizes, matmul_peak_flops=[peak0, peak1], rows=rows, skipped=skipped,
      checks=checks))
  plots.plot_benchmark(os.path.join(out, "benchmark.png"), rows,
                       title=f"equal params (~{target:,}), {tokens_per_step} tokens/step; "
                             f"{common.machine()['cpu']}")
  print(md)
  for c in checks:
    print(f"# {'PASS' if c['ok'] else 'FAIL'} {c['name']}: {c['value']:.2f}")
  if json_path:
    with open(json_path, "w") as f:
      json.dump(stamped({"rows": rows, "checks": checks}), f, indent=1)
  print(f"# wrote {out}/benchmark.json, benchmark.md, benchmark.png")
  return dict(rows=rows, checks=checks, out=out)

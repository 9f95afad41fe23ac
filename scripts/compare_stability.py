"""Stability comparison: ResNet-BK vs Mamba vs Transformer over seeds and sequence lengths.

Every (kind, seed, N) is one independent run of bk_jax.train.loop.run with identical data
(char-level Tiny Shakespeare by default), identical budgets (`--steps` steps of `--tokens`
tokens each, batch = tokens // N), identical optimizer and (nearly) equal parameters (layers
matched to ResNet-BK's count). Per run, from long_context_results.json: DIVERGED or not (and
the step divergence was first detected), loss spikes per 1,000 steps (the trainer's detector:
loss > spike_factor x previous loss), gradient-norm mean and std/mean, final training loss and
the validation perplexity of the final checkpoint at the training length
(bk_jax.train.evaluate). Perplexity degradation with length = val ppl at the longest N over
val ppl at the shortest N (same kind and seed). For each metric and N it prints ResNet-BK vs each
baseline with Welch's t-test and the Mann-Whitney U test across seeds (scipy p-values).
Outputs under --out (default results/compare_stability/): stability.json, stability.md,
loss_curves.png, grad_norm_bands.png, spikes.png.

  python scripts/compare_stability.py --seeds 0,1,2,3,4 --lengths 128,512,2048 --steps 500
  python scripts/compare_stability.py --quick
"""

from __future__ import annotations

import argparse
import math
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from bk_jax.data.tokenizers import ByteTokenizer  # noqa: E402
from bk_jax.reports import common, plots, runs, stats  # noqa: E402
from bk_jax.train.monitors import perplexity  # noqa: E402

METRICS = (("val_loss", True), ("val_ppl", True), ("grad_norm_cv", True),
           ("spikes_per_1000", True), ("final_train_loss", True))


def main(argv=None) -> dict:
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  ap.add_argument("--kinds", default="resnet_bk,mamba,transformer")
  ap.add_argument("--seeds", default=None, help="default 0,1,2 (0,1 with --quick)")
  ap.add_argument("--lengths", default=None, help="default 128,512 (16,32 with --quick)")
  ap.add_argument("--steps", type=int, default=200)
  ap.add_argument("--tokens", type=int, default=4096, help="tokens per step at every N")
  ap.add_argument("--data", default=runs.TINY_SHAKESPEARE)
  ap.add_argument("--d_model", type=int, default=64)
  ap.add_argument("--n_layers", type=int, default=2, help="ResNet-BK layers (baselines matched)")
  ap.add_argument("--n_heads", type=int, default=16)
  ap.add_argument("--lr", type=float, default=3e-3)
  ap.add_argument("--eval_tokens", type=int, default=16384)
  ap.add_argument("--quick", action="store_true")
  ap.add_argument("--out", default=None)
  args = ap.parse_args(argv)
  if args.quick:
    args.seeds, args.lengths = args.seeds or "0,1", args.lengths or "16,32"
    args.steps, args.tokens = 4, 64
    args.d_model, args.n_layers, args.n_heads, args.eval_tokens = 16, 1, 2, 128
  args.seeds, args.lengths = args.seeds or "0,1,2", args.lengths or "128,512"
  out = common.out_dir(args.out, "compare_stability", args.quick)
  kinds = args.kinds.split(",")
  seeds = [int(s) for s in args.seeds.split(",")]
  lengths = [int(n) for n in args.lengths.split(",")]
  data = os.path.abspath(args.data)

  def cfg(kind, seed, n):
    return runs.make_config(kind, os.path.join(out, "runs", f"{kind}_s{seed}_n{n}"), {
        "seed": seed, "data.dataset": "text", "data.path": data, "data.tokenizer": "byte",
        "data.cache_dir": os.path.join(out, "cache"), "model.d_model": args.d_model,
        "model.n_layers": args.n_layers, "model.n_heads": args.n_heads, "model.d_ff": 4 * args.d_model,
        "model.transformer.n_heads": max(1, args.d_model // 32), "train.seq_len": n,
        "train.tokens_per_batch": args.tokens, "train.steps_per_length": args.steps,
        "train.lr": args.lr, "train.warmup_steps": max(1, args.steps // 10)})

  target = runs.n_params(cfg("resnet_bk", 0, lengths[0]).model, ByteTokenizer.vocab_size)
  layers = {}
  for kind in kinds:
    c = cfg(kind, 0, lengths[0])
    layers[kind] = int(c.model.n_layers) if kind == "resnet_bk" else None
    if kind != "resnet_bk":
      runs.match_params(c, target)
      layers[kind] = int(c.model.n_layers)
  records = []
  for n in lengths:
    for seed in seeds:
      for kind in kinds:
        c = cfg(kind, seed, n)
        c.model.n_layers = layers[kind]
        res = runs.train(c)
        f = runs.length_figures(res, n)
        try:
          val = runs.validate(c, args.eval_tokens)
          f["val_loss"] = val["loss"]
        except Exception as e:  # a diverged run may have nothing finite to evaluate
          f["val_loss"], f["val_error"] = math.nan, f"{type(e).__name__}: {e}"
        f["val_ppl"] = perplexity(f["val_loss"])
        f.update(kind=kind, seed=seed, params=res["n_params"], n_layers=layers[kind],
                 wall_s=res["wall_s"])
        records.append(f)
        print(f"# {kind} seed={seed} N={n}: {f['status']} val_loss={f['val_loss']:.4f} "
              f"spikes/1k={f['spikes_per_1000']:.1f} gn_mean={f['grad_norm_mean']:.3f} "
              f"gn_cv={f['grad_norm_cv']:.3f} ({f['wall_s']:.0f}s)", flush=True)
  # degradation with length, per kind and seed
  if len(lengths) > 1:
    for kind in kinds:
      for seed in seeds:
        by = {r["seq_len"]: r for r in records if r["kind"] == kind and r["seed"] == seed}
        deg = by[lengths[-1]]["val_ppl"] / by[lengths[0]]["val_ppl"]
        for r in by.values():
          r["ppl_degradation"] = deg
  claims = []
  base = "resnet_bk" if "resnet_bk" in kinds else kinds[0]
  metrics = list(METRICS) + ([("ppl_degradation", True)] if len(lengths) > 1 else [])
  for other in (k for k in kinds if k != base):
    for name, lower in metrics:
      for n in (lengths if name != "ppl_degradation" else lengths[:1]):
        a = [r[name] for r in records if r["kind"] == base and r["seq_len"] == n]
        b = [r[name] for r in records if r["kind"] == other and r["seq_len"] == n]
        c = stats.compare(f"{name}" + ("" if name == "ppl_degradation" else f" @N={n}"), a, b,
                          label_a=base, label_b=other, lower_is_better=lower)
        claims.append(c)
        print("CLAIM " + stats.format_claim(c), flush=True)
  # tables
  header = ["kind", "N", "seeds", "DIVERGED", "spikes/1k steps", "grad-norm mean", "grad-norm std/mean",
            "final train loss", "val loss", "val ppl"]
  trows = []
  for n in lengths:
    for kind in kinds:
      rr = [r for r in records if r["kind"] == kind and r["seq_len"] == n]
      def ms(key, rr=rr):
        s = stats.summary([r[key] for r in rr])
        return f"{s['mean']:.3f} ± {s['std']:.3f}" if s["n"] else "n/a"
      trows.append([kind, n, len(rr), sum(r["diverged"] for r in rr), ms("spikes_per_1000"),
                    ms("grad_norm_mean"), ms("grad_norm_cv"), ms("final_train_loss"), ms("val_loss"),
                    ms("val_ppl")])
  md = common.md_table(header, trows)
  if len(lengths) > 1:
    md += "\n\n" + common.md_table(
        ["kind", f"ppl(N={lengths[-1]}) / ppl(N={lengths[0]})"],
        [[k, (lambda s: f"{s['mean']:.3f} ± {s['std']:.3f}")(stats.summary(
            [r["ppl_degradation"] for r in records if r["kind"] == k and r["seq_len"] == lengths[0]]))]
         for k in kinds])
  md += "\n\n" + common.md_table(
      ["claim", "mean a", "mean b", "Welch p", "Mann-Whitney p"],
      [[f"{c['metric']}: {c['a']} vs {c['b']}", c["summary_a"].get("mean"), c["summary_b"].get("mean"),
        c["welch"]["p"], c["mann_whitney"]["p"]] for c in claims])
  with open(os.path.join(out, "stability.md"), "w") as f:
    f.write(md + "\n")
  common.write_json(out, "stability.json", dict(args=vars(args), n_layers=layers, records=records,
                                               claims=claims))
  curves = [dict(kind=r["kind"], seed=r["seed"], seq_len=r["seq_len"], steps=r["curve_steps"],
                 values=r["curve_loss"]) for r in records]
  plots.plot_curves(os.path.join(out, "loss_curves.png"), curves, ylabel="training loss",
                    title="every seed; identical data and tokens per step")
  plots.plot_curves(os.path.join(out, "grad_norm_bands.png"),
                    [dict(d, values=r["curve_grad_norm"]) for d, r in zip(curves, records)],
                    ylabel="gradient norm (pre-clip)", band=True, title="mean and min-max over seeds")
  plots.plot_bars(os.path.join(out, "spikes.png"), [f"N={n}" for n in lengths],
                  {k: [stats.summary([r["spikes_per_1000"] for r in records
                                      if r["kind"] == k and r["seq_len"] == n]).get("mean", math.nan)
                       for n in lengths] for k in kinds},
                  ylabel="loss spikes per 1,000 steps (mean over seeds)")
  print(md)
  return dict(records=records, claims=claims, out=out)


if __name__ == "__main__":
  main()

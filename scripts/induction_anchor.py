"""Capability anchor: induction heads trained at 256 tokens, accuracy at 2^6 ... 2^20.

Each kind trains on bk_jax.data's `induction_heads` task (Mamba paper: vocab 16, the trigger
appears once followed by the answer; at the end the trigger reappears and the answer is scored)
at N = `--train_len` through bk_jax.train.loop.run, with the same d_model, matched parameters,
batch, steps and optimizer. Then bk_jax.eval.extrapolation streams test sequences of every
length in `--lengths` through the model (state carried across chunks) and reports exact
accuracy on the scored answers. The Transformer streams with its sliding-window cache
(model.transformer.cache_window), so beyond that window it cannot see the trigger: that is
the baseline's design here, as in the paper's collapse of attention past ~2x. Published
reference (Mamba paper, Table 2): Mamba 100% at every length up to 2^20; attention variants
collapse beyond ~2x the training length.

  python scripts/induction_anchor.py                               # up to 2^20
  python scripts/induction_anchor.py --steps 400 --max_log2 14     # reduced
  python scripts/induction_anchor.py --quick
  # the Mamba paper's model (2 layers, d_model 64, batch 8, Adam lr 1e-3 without weight decay),
  # no parameter matching, a wall-clock cap, and a ResNet-BK variant ("resnet_bk:" overrides):
  python scripts/induction_anchor.py --kinds mamba --no_match --batch 8 --lr 1e-3 \
      --weight_decay 0 --steps 4000 --budget_s 2400 --max_log2 12
  python scripts/induction_anchor.py --kinds resnet_bk --bk_overrides \
      model.bk_mixer=green,model.bk_conv=True,model.bk_gate=True

Recipe of the Mamba paper's induction-heads table (arXiv 2312.00752, appendix E.1, as recalled:
the search tool did not return the appendix text): vocab 16, trained at 256, 2-layer models of
d_model 64, fresh random batches of 8 every step, Adam without weight decay, results after 25
"epochs" of 8192 steps (204,800 steps) for Mamba. The H3/safari generator it reuses scores the
last token only at test time and trains on every token; only the answer is predictable, so our
loss masked to the answer carries the same signal.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from bk_jax.reports import common, plots, runs  # noqa: E402


def main(argv=None) -> dict:
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  ap.add_argument("--kinds", default="resnet_bk,mamba,transformer")
  ap.add_argument("--train_len", type=int, default=256)
  ap.add_argument("--steps", type=int, default=2000)
  ap.add_argument("--budget_s", type=float, default=0.0, help="> 0: also stop training at this wall clock")
  ap.add_argument("--batch", type=int, default=32)
  ap.add_argument("--d_model", type=int, default=64)
  ap.add_argument("--n_layers", type=int, default=2, help="ResNet-BK layers (baselines matched)")
  ap.add_argument("--n_heads", type=int, default=16)
  ap.add_argument("--lr", type=float, default=3e-3)
  ap.add_argument("--weight_decay", type=float, default=None, help="default: configs/base.py's")
  ap.add_argument("--no_match", action="store_true",
                  help="every kind uses --n_layers (no matching of parameters to resnet_bk)")
  ap.add_argument("--bk_overrides", default="",
                  help="comma list of key=value config overrides for resnet_bk (block variants)")
  ap.add_argument("--min_log2", type=int, default=6)
  ap.add_argument("--max_log2", type=int, default=20)
  ap.add_argument("--samples", type=int, default=64, help="test sequences per length (fewer when --token_budget binds)")
  ap.add_argument("--token_budget", type=int, default=4 << 20, help="test tokens per length")
  ap.add_argument("--seed", type=int, default=0)
  ap.add_argument("--quick", action="store_true")
  ap.add_argument("--out", default=None)
  args = ap.parse_args(argv)
  if args.quick:
    args.train_len, args.steps, args.batch, args.d_model, args.n_layers = 32, 3, 4, 16, 1
    args.n_heads, args.max_log2, args.samples, args.token_budget = 2, 7, 4, 1024
  from bk_jax.eval.extrapolation import format_table, run_extrapolation

  out = common.out_dir(args.out, "induction_anchor", args.quick)
  lengths = [2 ** k for k in range(args.min_log2, args.max_log2 + 1)]
  target, results = None, []
  for kind in args.kinds.split(","):
    c = runs.make_config(kind, os.path.join(out, "runs", kind), {
        "seed": args.seed, "data.dataset": "synthetic", "data.synthetic.task": "induction_heads",
        "model.d_model": args.d_model, "model.n_layers": args.n_layers, "model.n_heads": args.n_heads,
        "model.d_ff": 4 * args.d_model, "model.transformer.n_heads": max(1, args.d_model // 32),
        "train.seq_len": args.train_len, "train.batch_size": args.batch,
        "train.steps_per_length": args.steps, "train.lr": args.lr,
        "train.warmup_steps": max(1, min(100, args.steps // 10)), "train.log_interval": 10,
        **({} if args.weight_decay is None else {"train.weight_decay": args.weight_decay}),
        **(parse_overrides(args.bk_overrides) if kind == "resnet_bk" else {})})
    if target is None:
      target = runs.n_params(c.model, runs.vocab_of(c))
    if kind != "resnet_bk" and not args.no_match:
      runs.match_params(c, target)
    res = runs.train(c, budget_s=args.budget_s or None)
    fig = runs.length_figures(res, args.train_len)
    ext = run_extrapolation(c, lengths=lengths, samples=args.samples, token_budget=args.token_budget,
                            batch_size=4, progress=False, log=None)
    r = dict(kind=kind, overrides=args.bk_overrides if kind == "resnet_bk" else "", params=res["n_params"], n_layers=int(c.model.n_layers),
             steps=int(res["total_steps"]), train_wall_s=res["wall_s"],
             stopped_by_budget=res["stopped_by_budget"], final_train_loss=fig["final_train_loss"],
             rows=ext["rows"], curve_steps=fig["curve_steps"], curve_loss=fig["curve_loss"])
    results.append(r)
    print(f"# {kind}: params={r['params']:,} steps={r['steps']} train {r['train_wall_s']:.0f}s "
          f"final train loss {r['final_train_loss']:.3f}", flush=True)
    print(format_table(ext["rows"], train_len=args.train_len, task=kind), flush=True)
  def short(n):
    return f"2^{n.bit_length() - 1}"
  header = ["model (trained at %d)" % args.train_len, "params", "steps"] + [short(n) for n in lengths]
  trows = [[r["kind"] + (f" ({r['overrides']})" if r["overrides"] else ""), r["params"], r["steps"]] + [f"{100 * x['accuracy']:.1f}" for x in r["rows"]]
           for r in results]
  trows.append(["Mamba (paper, Table 2)", "~74k", "-"] + ["100.0"] * len(lengths))
  md = common.md_table(header, trows)
  with open(os.path.join(out, "induction_anchor.md"), "w") as f:
    f.write(md + "\n")
  common.write_json(out, "induction_anchor.json", dict(args=vars(args), lengths=lengths, results=results))
  _plot(os.path.join(out, "induction_anchor.png"), results, args.train_len)
  print(md)
  return dict(results=results, out=out)


def parse_overrides(text: str) -> dict:
  """'model.a=1,model.b=green' -> {"model.a": 1, "model.b": "green"} (ints, floats, booleans)."""
  out = {}
  for item in filter(None, text.split(",")):
    key, _, val = item.partition("=")
    low = val.lower()
    if low in ("true", "false"):
      out[key] = low == "true"
    else:
      try:
        out[key] = int(val)
      except ValueError:
        try:
          out[key] = float(val)
        except ValueError:
          out[key] = val
  return out


def _plot(path, results, train_len):
  plt = plots.pyplot()
  fig, ax = plt.subplots(figsize=(6.5, 3.8))
  for r in results:
    ax.plot([x["length"] for x in r["rows"]], [100 * x["accuracy"] for x in r["rows"]], marker="o",
            color=plots.COLORS.get(r["kind"]), label=r["kind"])
  ax.axvline(train_len, color="gray", ls="--", lw=1, label=f"train length {train_len}")
  ax.set_xscale("log", base=2)
  ax.set_ylim(-2, 102)
  ax.set_xlabel("test sequence length")
  ax.set_ylabel("induction-heads accuracy (%)")
  ax.grid(True, alpha=0.3)
  ax.legend(fontsize=8)
  plots.save_figure(fig, path)


if __name__ == "__main__":
  main()

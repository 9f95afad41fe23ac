"""Quality anchor: char-level Tiny Shakespeare at ~0.8-1M parameters, a fixed wall-clock budget.

Every kind (ResNet-BK, Mamba, Transformer) gets the same data (byte tokenizer, the file cut
0.9/0.05/0.05), the same d_model, a layer count matched to `--params`, the same batch x length,
optimizer and the same wall-clock budget for its training loop (`--budget_s`, compile included).
The number of steps is planned from a timed step of the same model (bk_jax.reports.throughput)
so the cosine schedule ends near the budget; SIGTERM at the budget stops the loop regardless.
Then the validation loss (nats/char) of the final checkpoint over `--eval_tokens` characters of
the validation split (bk_jax.train.evaluate). Published reference: nanoGPT's char-level
Shakespeare on a CPU, a 0.8M-parameter GPT, val loss 1.88 nats/char after ~3 CPU-minutes.

  python scripts/quality_anchor.py                        # 10 minutes per kind (the full anchor)
  python scripts/quality_anchor.py --budget_s 150         # reduced
  python scripts/quality_anchor.py --quick                # seconds (tests)
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from bk_jax.reports import common, plots, runs, throughput  # noqa: E402

NANOGPT = dict(params=800_000, val_loss=1.88, cpu_minutes=3,
               source="nanoGPT README, 'I only have a macbook' char-level Shakespeare CPU run")


def main(argv=None) -> dict:
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  ap.add_argument("--kinds", default="resnet_bk,mamba,transformer")
  ap.add_argument("--data", default=runs.TINY_SHAKESPEARE)
  ap.add_argument("--budget_s", type=float, default=600.0, help="training wall clock per kind")
  ap.add_argument("--steps", type=int, default=0, help="> 0: fixed steps instead of planning from the budget")
  ap.add_argument("--params", type=int, default=900_000, help="target parameter count (layers matched)")
  ap.add_argument("--d_model", type=int, default=128)
  ap.add_argument("--n_heads", type=int, default=16, help="BK heads")
  ap.add_argument("--seq_len", type=int, default=256)
  ap.add_argument("--batch", type=int, default=32)
  ap.add_argument("--lr", type=float, default=3e-3)
  ap.add_argument("--eval_tokens", type=int, default=50_000)
  ap.add_argument("--seed", type=int, default=0)
  ap.add_argument("--quick", action="store_true")
  ap.add_argument("--out", default=None)
  args = ap.parse_args(argv)
  if args.quick:
    args.budget_s, args.params, args.d_model, args.n_heads = 20.0, 20_000, 32, 4
    args.seq_len, args.batch, args.eval_tokens, args.steps = 32, 4, 512, args.steps or 6
  out = common.out_dir(args.out, "quality_anchor", args.quick)
  data = os.path.abspath(args.data)
  rows = []
  for kind in args.kinds.split(","):
    c = runs.make_config(kind, os.path.join(out, "runs", kind), {
        "seed": args.seed, "data.dataset": "text", "data.path": data, "data.tokenizer": "byte",
        "data.cache_dir": os.path.join(out, "cache"),
        "model.d_model": args.d_model, "model.n_heads": args.n_heads, "model.d_ff": 4 * args.d_model,
        "model.transformer.n_heads": max(1, args.d_model // 32),
        "train.seq_len": args.seq_len, "train.batch_size": args.batch, "train.lr": args.lr,
        "train.warmup_steps": 40, "train.log_interval": 10})
    params = runs.match_params(c, args.params)
    steps, step_s = args.steps, None
    if not steps:
      m = c.model.copy_and_resolve_references()
      m.vocab_size = runs.vocab_of(c)
      b = throughput.bench_one(m, args.seq_len, args.batch * args.seq_len, 2)
      step_s = b["step_s"]
      steps = max(10, int(0.85 * args.budget_s / step_s))  # headroom for compile and log syncs
    c.train.steps_per_length = steps
    c.train.warmup_steps = min(40, max(1, steps // 10))
    print(f"# {kind}: n_layers={c.model.n_layers} params={params:,} planned steps={steps} "
          f"(timed step {step_s if step_s is None else round(step_s, 3)} s)", flush=True)
    res = runs.train(c, budget_s=args.budget_s)
    val = runs.validate(c, args.eval_tokens)
    fig = runs.length_figures(res, args.seq_len)
    row = dict(kind=kind, params=res["n_params"], n_layers=int(c.model.n_layers),
               planned_steps=steps, steps=int(res["total_steps"]), wall_s=res["wall_s"],
               stopped_by_budget=res["stopped_by_budget"], val_loss=val["loss"],
               val_tokens=val["tokens"], train_loss_last=fig["final_train_loss"],
               tokens_seen=int(res["total_steps"]) * args.batch * args.seq_len,
               curve_steps=fig["curve_steps"], curve_loss=fig["curve_loss"])
    rows.append(row)
    print(f"# {kind}: val loss {row['val_loss']:.4f} nats/char after {row['steps']} steps, "
          f"{row['wall_s']:.0f} s", flush=True)
  header = ["model", "params", "layers", "budget s", "steps", "train wall s", "tokens seen",
            "val loss (nats/char)"]
  trows = [[r["kind"], r["params"], r["n_layers"], args.budget_s, r["steps"], round(r["wall_s"]),
            r["tokens_seen"], round(r["val_loss"], 4)] for r in rows]
  trows.append(["nanoGPT GPT (published)", NANOGPT["params"], 4, 180, 2000, "-", "-", NANOGPT["val_loss"]])
  md = common.md_table(header, trows)
  with open(os.path.join(out, "quality_anchor.md"), "w") as f:
    f.write(md + "\n")
  common.write_json(out, "quality_anchor.json", dict(args=vars(args), rows=rows, published=NANOGPT))
  plots.plot_curves(os.path.join(out, "quality_anchor.png"),
                    [dict(kind=r["kind"], seed=args.seed, seq_len=args.seq_len, steps=r["curve_steps"],
                          values=r["curve_loss"]) for r in rows],
                    ylabel="training loss (nats/char)",
                    title=f"Tiny Shakespeare, {args.budget_s:.0f} s per kind")
  print(md)
  return dict(rows=rows, out=out)


if __name__ == "__main__":
  main()

"""Rebuild the quality-anchor table and figure from result JSONs already written (no training).

`scripts/quality_anchor.py --merge A.json B.json ... --out DIR` reads every JSON (a
`quality_anchor.json` with `rows`, or a single-kind JSON such as `quality_anchor_resnet_bk.json`
written when one kind's validation was rerun on its checkpoint) and writes DIR/quality_anchor.md and
DIR/quality_anchor.png with one row per kind. Fields a file lacks are derived and marked: `tokens
seen` = steps x batch x seq_len of the `args` found in the files (a single-kind file records no
args), `train wall s` = its `train_epoch_time_s`; a kind without a recorded loss curve is drawn
only in the validation panel.
"""

from __future__ import annotations

import json
import os

from bk_jax.eval.plots import pyplot, save_figure
from bk_jax.reports import common
from bk_jax.reports.plots import COLORS

HEADER = ["model", "params", "layers", "budget s", "steps", "train wall s", "tokens seen",
          "val loss (nats/char)", "source"]


def load_rows(paths: list[str]) -> tuple[list[dict], dict | None, dict | None]:
  """Normalised rows of every JSON, the first `args` and the first `published` reference found.

  Args:
    paths: result JSONs of scripts/quality_anchor.py (with `rows`) or single-kind JSONs (`kind`).
  Returns:
    (rows, args, published); a row has kind, params, n_layers, budget_s, steps, wall_s,
    tokens_seen, val_loss, curve_steps, curve_loss, source, derived (names of derived fields).
  Raises:
    ValueError: a file is neither layout, or two files hold the same kind.
  """
  docs = [(p, json.load(open(p))) for p in paths]
  args = next((d["args"] for _, d in docs if "args" in d), None)
  published = next((d["published"] for _, d in docs if "published" in d), None)
  rows, seen = [], set()
  for p, d in docs:
    if "rows" in d:
      budget = d.get("args", {}).get("budget_s")
      items = [(r, budget) for r in d["rows"]]
    elif "kind" in d:
      items = [(d, d.get("budget_s"))]
    else:
      raise ValueError(f"{p}: neither a quality_anchor.json (rows) nor a single-kind JSON (kind)")
    for r, budget in items:
      if r["kind"] in seen:
        raise ValueError(f"{p}: kind {r['kind']} appears in two files")
      seen.add(r["kind"])
      derived = []
      wall = r.get("wall_s")
      if wall is None and "train_epoch_time_s" in r:
        wall = r["train_epoch_time_s"]
      tokens = r.get("tokens_seen")
      if tokens is None and args is not None:
        tokens, derived = int(r["steps"]) * int(args["batch"]) * int(args["seq_len"]), ["tokens seen"]
      rows.append(dict(kind=r["kind"], params=r["params"], n_layers=r["n_layers"], budget_s=budget,
                       steps=r["steps"], wall_s=wall, tokens_seen=tokens, val_loss=r["val_loss"],
                       curve_steps=r.get("curve_steps"), curve_loss=r.get("curve_loss"),
                       source=os.path.basename(p), derived=derived))
  return rows, args, published


def merge(paths: list[str], out: str, command: str) -> tuple[str, str]:
  """Writes out/quality_anchor.md and out/quality_anchor.png from `paths`; returns both paths."""
  rows, args, published = load_rows(paths)
  trows = [[r["kind"], r["params"], r["n_layers"], r["budget_s"], r["steps"],
            None if r["wall_s"] is None else round(r["wall_s"]),
            None if r["tokens_seen"] is None else
            (f"{r['tokens_seen']} (derived)" if "tokens seen" in r["derived"] else r["tokens_seen"]),
            round(r["val_loss"], 4), r["source"]] for r in rows]
  if published:
    trows.append(["nanoGPT GPT (published)", published["params"], 4, 180, 2000, None, None,
                  published["val_loss"], "nanoGPT README"])
  md = (common.md_table(HEADER, trows) + "\n\nMerged from the result JSONs (no training) by `"
        + command + "`. `(derived)`: steps x batch x seq_len of the recorded args "
        + (f"({args['batch']} x {args['seq_len']})" if args else "") + "; a kind without a curve "
        "in its JSON appears only in the validation panel of quality_anchor.png.\n")
  md_path = os.path.join(out, "quality_anchor.md")
  with open(md_path, "w") as f:
    f.write(md)
  plt = pyplot()
  fig, (a0, a1) = plt.subplots(1, 2, figsize=(11, 4))
  for r in rows:
    if r["curve_steps"] and r["curve_loss"]:
      a0.plot(r["curve_steps"], r["curve_loss"], color=COLORS.get(r["kind"]), label=r["kind"])
    else:
      a0.plot([], [], color=COLORS.get(r["kind"]), label=f"{r['kind']} (no curve recorded)")
  a0.set_xlabel("step")
  a0.set_ylabel("training loss (nats/char)")
  a0.grid(True, alpha=0.3)
  a0.legend(fontsize=8)
  names = [r["kind"] for r in rows]
  a1.bar(names, [r["val_loss"] for r in rows], color=[COLORS.get(k, "tab:gray") for k in names])
  for i, r in enumerate(rows):
    a1.text(i, r["val_loss"], f"{r['val_loss']:.3f}", ha="center", va="bottom", fontsize=8)
  if published:
    a1.axhline(published["val_loss"], color="k", ls="--", lw=1,
               label=f"nanoGPT (published) {published['val_loss']}")
    a1.legend(fontsize=8, loc="lower right")
  a1.set_ylim(0, 1.15 * max([r["val_loss"] for r in rows] + [published["val_loss"] if published else 0]))
  a1.set_ylabel("validation loss (nats/char)")
  a1.grid(True, axis="y", alpha=0.3)
  budgets = sorted({r["budget_s"] for r in rows if r["budget_s"] is not None})
  fig.suptitle("Tiny Shakespeare, " + " / ".join(f"{b:.0f} s" for b in budgets) + " per kind", fontsize=9)
  png = save_figure(fig, os.path.join(out, "quality_anchor.png"))
  return md_path, png

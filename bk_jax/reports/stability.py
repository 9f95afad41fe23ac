"""Stability comparison across model kinds, seeds and sequence lengths (scripts/compare_stability.py).

Every (kind, seed, N) is one independent run of bk_jax.train.loop.run (`runs.train`) with
identical data, budgets and optimizer and (nearly) equal parameters: the baselines' layer count
is matched to ResNet-BK's (`runs.match_params`). Per run the figures of `runs.length_figures`
plus the validation loss/perplexity of the final checkpoint; per kind and seed the perplexity
degradation with length; per metric and N, ResNet-BK against each baseline with Welch's t-test
and the Mann-Whitney U test (`stats.compare`).
"""

from __future__ import annotations

import dataclasses
import math
import os

from bk_jax.data.tokenizers import ByteTokenizer
from bk_jax.reports import common, plots, runs, stats, throughput
from bk_jax.runtime.metrics import perplexity

#: (record field, lower is better) compared across kinds at every N.
METRICS = (("val_loss", True), ("val_ppl", True), ("grad_norm_cv", True),
           ("spikes_per_1000", True), ("final_train_loss", True))


@dataclasses.dataclass(frozen=True)
class Grid:
  """What to run: every (kind, seed, N) trains `steps` steps of `tokens` tokens.

  Attributes:
    kinds: model kinds; "resnet_bk" (or else the first) is the reference the others are
      compared against and matched to.
    seeds, lengths: training seeds and sequence lengths N.
    steps, tokens: steps per run and tokens per step (batch = tokens // N).
    data: the UTF-8 text corpus (bytes).
    d_model, n_layers, n_heads, lr: the model and optimizer (n_layers is ResNet-BK's).
    eval_tokens: validation tokens scored per run.
  """

  kinds: tuple[str, ...]
  seeds: tuple[int, ...]
  lengths: tuple[int, ...]
  steps: int
  tokens: int
  data: str
  d_model: int
  n_layers: int
  n_heads: int
  lr: float
  eval_tokens: int


def run_config(grid: Grid, out: str, kind: str, seed: int, n: int):
  """The training config of one (kind, seed, N) run (save_dir under `out`/runs)."""
  return runs.make_config(kind, os.path.join(out, "runs", f"{kind}_s{seed}_n{n}"), {
      "seed": seed, "data.dataset": "text", "data.path": grid.data, "data.tokenizer": "byte",
      "data.cache_dir": os.path.join(out, "cache"), "model.d_model": grid.d_model,
      "model.n_layers": grid.n_layers, "model.n_heads": grid.n_heads,
      "model.d_ff": 4 * grid.d_model, "model.transformer.n_heads": max(1, grid.d_model // 32),
      "model.mamba2.headdim": throughput.mamba2_headdim(grid.d_model),
      "train.seq_len": n, "train.tokens_per_batch": grid.tokens,
      "train.steps_per_length": grid.steps, "train.lr": grid.lr,
      "train.warmup_steps": max(1, grid.steps // 10)})


def matched_layers(grid: Grid, out: str) -> dict[str, int]:
  """kind -> n_layers: ResNet-BK's as given, the others matched to its parameter count."""
  target = runs.n_params(run_config(grid, out, "resnet_bk", 0, grid.lengths[0]).model,
                         ByteTokenizer.vocab_size)
  layers = {}
  for kind in grid.kinds:
    c = run_config(grid, out, kind, 0, grid.lengths[0])
    if kind != "resnet_bk":
      runs.match_params(c, target)
    layers[kind] = int(c.model.n_layers)
  return layers


def run_one(grid: Grid, out: str, kind: str, seed: int, n: int, n_layers: int) -> dict:
  """Trains one (kind, seed, N) and returns its record (`runs.length_figures` + validation)."""
  c = run_config(grid, out, kind, seed, n)
  c.model.n_layers = n_layers
  res = runs.train(c)
  f = runs.length_figures(res, n)
  try:
    val = runs.validate(c, grid.eval_tokens)
    f["val_loss"] = val["loss"]
  except Exception as e:  # a diverged run may have nothing finite to evaluate
    f["val_loss"], f["val_error"] = math.nan, f"{type(e).__name__}: {e}"
  f["val_ppl"] = perplexity(f["val_loss"])
  f.update(kind=kind, seed=seed, params=res["n_params"], n_layers=n_layers, wall_s=res["wall_s"])
  return f


def add_degradation(records: list[dict], grid: Grid) -> None:
  """Sets ppl_degradation = val ppl at the longest N / at the shortest N, per kind and seed."""
  if len(grid.lengths) < 2:
    return
  for kind in grid.kinds:
    for seed in grid.seeds:
      by = {r["seq_len"]: r for r in records if r["kind"] == kind and r["seed"] == seed}
      deg = by[grid.lengths[-1]]["val_ppl"] / by[grid.lengths[0]]["val_ppl"]
      for r in by.values():
        r["ppl_degradation"] = deg


def claims(records: list[dict], grid: Grid) -> list[dict]:
  """The reference kind against every other kind, per metric and N (`stats.compare`)."""
  kinds, lengths = grid.kinds, grid.lengths
  out = []
  base = "resnet_bk" if "resnet_bk" in kinds else kinds[0]
  metrics = list(METRICS) + ([("ppl_degradation", True)] if len(lengths) > 1 else [])
  for other in (k for k in kinds if k != base):
    for name, lower in metrics:
      for n in (lengths if name != "ppl_degradation" else lengths[:1]):
        a = [r[name] for r in records if r["kind"] == base and r["seq_len"] == n]
        b = [r[name] for r in records if r["kind"] == other and r["seq_len"] == n]
        c = stats.compare(f"{name}" + ("" if name == "ppl_degradation" else f" @N={n}"), a, b,
                          label_a=base, label_b=other, lower_is_better=lower)
        out.append(c)
        print("CLAIM " + stats.format_claim(c), flush=True)
  return out


def markdown(records: list[dict], claim_list: list[dict], grid: Grid) -> str:
  """stability.md: per (kind, N) mean ± std over seeds, the degradation table and the claims."""
  kinds, lengths = grid.kinds, grid.lengths
  header = ["kind", "N", "seeds", "DIVERGED", "spikes/1k steps", "grad-norm mean",
            "grad-norm std/mean", "final train loss", "val loss", "val ppl"]
  trows = []
  for n in lengths:
    for kind in kinds:
      rr = [r for r in records if r["kind"] == kind and r["seq_len"] == n]

      def ms(key, rr=rr):
        s = stats.summary([r[key] for r in rr])
        return f"{s['mean']:.3f} ± {s['std']:.3f}" if s["n"] else "n/a"
      trows.append([kind, n, len(rr), sum(r["diverged"] for r in rr), ms("spikes_per_1000"),
                    ms("grad_norm_mean"), ms("grad_norm_cv"), ms("final_train_loss"),
                    ms("val_loss"), ms("val_ppl")])
  md = common.md_table(header, trows)
  if len(lengths) > 1:
    md += "\n\n" + common.md_table(
        ["kind", f"ppl(N={lengths[-1]}) / ppl(N={lengths[0]})"],
        [[k, (lambda s: f"{s['mean']:.3f} ± {s['std']:.3f}")(stats.summary(
            [r["ppl_degradation"] for r in records
             if r["kind"] == k and r["seq_len"] == lengths[0]]))]
         for k in kinds])
  md += "\n\n" + common.md_table(
      ["claim", "mean a", "mean b", "Welch p", "Mann-Whitney p"],
      [[f"{c['metric']}: {c['a']} vs {c['b']}", c["summary_a"].get("mean"),
        c["summary_b"].get("mean"), c["welch"]["p"], c["mann_whitney"]["p"]] for c in claim_list])
  return md


def write_plots(out: str, records: list[dict], grid: Grid) -> None:
  """loss_curves.png, grad_norm_bands.png and spikes.png under `out`."""
  curves = [dict(kind=r["kind"], seed=r["seed"], seq_len=r["seq_len"], steps=r["curve_steps"],
                 values=r["curve_loss"]) for r in records]
  plots.plot_curves(os.path.join(out, "loss_curves.png"), curves, ylabel="training loss",
                    title="every seed; identical data and tokens per step")
  plots.plot_curves(os.path.join(out, "grad_norm_bands.png"),
                    [dict(d, values=r["curve_grad_norm"]) for d, r in zip(curves, records)],
                    ylabel="gradient norm (pre-clip)", band=True,
                    title="mean and min-max over seeds")
  plots.plot_bars(os.path.join(out, "spikes.png"), [f"N={n}" for n in grid.lengths],
                  {k: [stats.summary([r["spikes_per_1000"] for r in records
                                      if r["kind"] == k and r["seq_len"] == n]).get("mean",
                                                                                     math.nan)
                       for n in grid.lengths] for k in grid.kinds},
                  ylabel="loss spikes per 1,000 steps (mean over seeds)")


def compare_stability(grid: Grid, out: str, args: dict) -> dict:
  """Runs the grid and writes stability.json, stability.md and the three plots under `out`.

  Args:
    grid: what to run.
    out: output directory (exists).
    args: the command-line settings, recorded in stability.json.
  Returns:
    dict(records, claims, out, markdown).
  """
  layers = matched_layers(grid, out)
  records = []
  for n in grid.lengths:
    for seed in grid.seeds:
      for kind in grid.kinds:
        f = run_one(grid, out, kind, seed, n, layers[kind])
        records.append(f)
        print(f"# {kind} seed={seed} N={n}: {f['status']} val_loss={f['val_loss']:.4f} "
              f"spikes/1k={f['spikes_per_1000']:.1f} gn_mean={f['grad_norm_mean']:.3f} "
              f"gn_cv={f['grad_norm_cv']:.3f} ({f['wall_s']:.0f}s)", flush=True)
  add_degradation(records, grid)
  claim_list = claims(records, grid)
  md = markdown(records, claim_list, grid)
  with open(os.path.join(out, "stability.md"), "w") as f:
    f.write(md + "\n")
  common.write_json(out, "stability.json", dict(args=args, n_layers=layers, records=records,
                                               claims=claim_list))
  write_plots(out, records, grid)
  return dict(records=records, claims=claim_list, out=out, markdown=md)

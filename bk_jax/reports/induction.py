"""The induction-heads capability anchor of scripts/induction_anchor.py.

Each kind trains on bk_jax.data's synthetic `induction_heads` task at one length through
bk_jax.train.loop.run (`runs.train`), the baselines at parameters matched to the first kind's
(unless `match` is off); then bk_jax.eval.extrapolation streams test sequences of every length
through the model (state carried across chunks) and scores exact accuracy on the answers.
"""

from __future__ import annotations

import dataclasses
import os

from bk_jax.eval.extrapolation import format_table, run_extrapolation
from bk_jax.reports import common, plots, runs, throughput

@dataclasses.dataclass(frozen=True)
class Setup:
  """What every kind trains and how it is tested.

  Attributes:
    train_len, steps, batch: training length, steps and batch.
    d_model, n_layers, n_heads: the model (n_layers is ResNet-BK's unless match is off).
    lr, weight_decay: optimizer (weight_decay None: configs/base.py's).
    seed: training seed.
    match: match the layer count of every kind but resnet_bk to the first kind's parameters.
    bk_overrides: "key=value,..." config overrides applied to resnet_bk only.
    budget_s: > 0: also stop training at this wall clock.
    lengths: test lengths.
    samples, token_budget: test sequences per length and test tokens per length.
  """

  train_len: int
  steps: int
  batch: int
  d_model: int
  n_layers: int
  n_heads: int
  lr: float
  weight_decay: float | None
  seed: int
  match: bool
  bk_overrides: str
  budget_s: float
  lengths: tuple[int, ...]
  samples: int
  token_budget: int


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


def run_config(setup: Setup, out: str, spec: str):
  """The training config of one row, "KIND" or "resnet_bk:VARIANT" (`runs.parse_row`; save_dir
  out/runs/<row>), before parameter matching."""
  s = setup
  kind, variant = runs.parse_row(spec)
  return runs.make_config(kind, os.path.join(out, "runs", spec.replace(":", "_")), {
      "seed": s.seed, "data.dataset": "synthetic", "data.synthetic.task": "induction_heads",
      "model.d_model": s.d_model, "model.n_layers": s.n_layers, "model.n_heads": s.n_heads,
      "model.d_ff": 4 * s.d_model, "model.transformer.n_heads": max(1, s.d_model // 32),
      "model.mamba2.headdim": throughput.mamba2_headdim(s.d_model),
      "train.seq_len": s.train_len, "train.batch_size": s.batch,
      "train.steps_per_length": s.steps, "train.lr": s.lr,
      "train.warmup_steps": max(1, min(100, s.steps // 10)), "train.log_interval": 10,
      **({} if s.weight_decay is None else {"train.weight_decay": s.weight_decay}),
      **variant, **(parse_overrides(s.bk_overrides) if kind == "resnet_bk" else {})})


def check_configs(kinds: list[str], setup: Setup) -> None:
  """Validates every row and its training config, so that a bad row or `--bk_overrides` (an
  unknown field, a value out of range) fails in one line before anything trains.

  Raises:
    ValueError: an unknown row; ConfigError: the first bad config's message.
  """
  from bk_jax.train.config_validation import validate_config

  runs.check_rows(kinds)
  for kind in kinds:
    validate_config(run_config(setup, "", kind))


def markdown(results: list[dict], lengths: list[int], train_len: int) -> str:
  """induction_anchor.md: accuracy (%) per kind and length, then the paper's row."""
  def short(n):
    return f"2^{n.bit_length() - 1}"
  header = ["model (trained at %d)" % train_len, "params", "steps"] + [short(n) for n in lengths]
  # a DIVERGED row is scored on the weights restored from before its divergence: say so
  trows = [[r["kind"] + (f" ({r['overrides']})" if r["overrides"] else "")
            + (" DIVERGED" if r.get("status") == "DIVERGED" else ""), r["params"],
            r["steps"]] + [f"{100 * x['accuracy']:.1f}" for x in r["rows"]] for r in results]
  # the published reference (Mamba paper, Table 2): 100% at every length up to 2^20
  trows.append(["Mamba (paper, Table 2)", "~74k", "-"] + ["100.0"] * len(lengths))
  return common.md_table(header, trows)


def plot(path: str, results: list[dict], train_len: int) -> None:
  """Accuracy (%) against test length per kind, the training length marked."""
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


def run_induction(kinds: list[str], setup: Setup, out: str, args: dict) -> dict:
  """Trains and tests every kind; writes induction_anchor.json/.md/.png under `out`.

  Args:
    kinds: the rows, in order: model kinds or "resnet_bk:VARIANT" (`runs.parse_row`); the first
      sets the parameter target.
    setup: training and test sizes.
    out: output folder.
    args: the command's arguments, recorded in induction_anchor.json.

  Returns:
    {"results": per kind (kind, overrides, params, n_layers, steps, train_wall_s,
    stopped_by_budget, status ("trained" / "DIVERGED" / "interrupted"), recoveries (restores by
    the divergence monitor), final_train_loss, the extrapolation rows, the loss curve), "out": out}.
  """
  s = setup
  lengths = list(s.lengths)
  target, results = None, []
  runs.check_rows(kinds)  # a bad row fails before any training
  for kind in kinds:
    c = run_config(s, out, kind)
    if target is None:
      target = runs.n_params(c.model, runs.vocab_of(c))
    if c.model.kind != "resnet_bk" and s.match:
      runs.match_params(c, target)
    res = runs.train(c, budget_s=s.budget_s or None)
    fig = runs.length_figures(res, s.train_len)
    ext = run_extrapolation(c, lengths=lengths, samples=s.samples, token_budget=s.token_budget,
                            batch_size=4, progress=False, log=None)
    r = dict(kind=kind, overrides=s.bk_overrides if c.model.kind == "resnet_bk" else "",
             params=res["n_params"], n_layers=int(c.model.n_layers),
             steps=int(res["total_steps"]), train_wall_s=res["wall_s"],
             stopped_by_budget=res["stopped_by_budget"], status=fig["status"],
             recoveries=fig["recoveries"], final_train_loss=fig["final_train_loss"],
             rows=ext["rows"], curve_steps=fig["curve_steps"], curve_loss=fig["curve_loss"])
    results.append(r)
    print(f"# {kind}: params={r['params']:,} steps={r['steps']} train {r['train_wall_s']:.0f}s "
          f"final train loss {r['final_train_loss']:.3f}", flush=True)
    print(format_table(ext["rows"], train_len=s.train_len, task=kind), flush=True)
  md = markdown(results, lengths, s.train_len)
  with open(os.path.join(out, "induction_anchor.md"), "w") as f:
    f.write(md + "\n")
  common.write_json(out, "induction_anchor.json", dict(args=args, lengths=lengths, results=results))
  plot(os.path.join(out, "induction_anchor.png"), results, s.train_len)
  print(md)
  return dict(results=results, out=out)

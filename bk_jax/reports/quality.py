"""Quality anchor: char-level Tiny Shakespeare per model kind at matched parameters.

Two comparisons, chosen by `budget`:

* equal tokens (`Budget(tokens=T)`): every kind trains ceil(T / (batch * seq_len)) steps. The
  plan is a pure function of the arguments, so it does not depend on how loaded the machine is;
  this is the comparison of what a model learns per token.
* equal wall clock (`Budget(seconds=S)`): the number of steps is planned from the median of
  `timing_steps` warm steps of the same compiled training step (bk_jax.reports.throughput), so the
  cosine schedule ends near the budget; a SIGTERM at the budget stops the loop regardless. A
  single timed step (the old planner) was dominated by one-off costs and by whatever else ran at
  that moment: on one idle machine it planned 1,150 steps where ~1,960 fitted.

Every row reports the steps, tokens seen and seconds per step beside the wall clock, then the
validation loss (nats/char) of the final checkpoint (bk_jax.train.evaluate). `run_anchor` runs
every kind and writes the report of scripts/quality_anchor.py.
"""

from __future__ import annotations

import dataclasses
import math
import os

from bk_jax.reports import common, plots, runs, throughput

#: The published reference row of the anchor table.
NANOGPT = dict(params=800_000, val_loss=1.88, cpu_minutes=3,
               source="nanoGPT README, 'I only have a macbook' char-level Shakespeare CPU run")


@dataclasses.dataclass(frozen=True)
class Budget:
  """What every kind gets: `tokens` (> 0: equal tokens) or `seconds` (equal wall clock)."""
  tokens: int = 0
  seconds: float = 0.0

  def __post_init__(self):
    if (self.tokens > 0) == (self.seconds > 0):
      raise ValueError("quality budget: give exactly one of tokens > 0 or seconds > 0")

  @property
  def mode(self) -> str:
    return "equal_tokens" if self.tokens > 0 else "equal_wall_clock"


def plan_steps(c, budget: Budget, *, timing_steps: int = 5) -> dict:
  """Steps for config `c` under `budget`.

  Args:
    c: a run config (train.seq_len and train.batch_size set).
    budget: the shared budget.
    timing_steps: warm steps timed (median) in equal-wall-clock mode.

  Returns:
    {"steps", "timed_step_s" (None in equal-tokens mode), "timed_steps"}.
  """
  tokens_per_step = int(c.train.batch_size) * int(c.train.seq_len)
  if budget.tokens > 0:
    return dict(steps=max(1, math.ceil(budget.tokens / tokens_per_step)), timed_step_s=None,
                timed_steps=0)
  m = c.model.copy_and_resolve_references()
  m.vocab_size = runs.vocab_of(c)
  b = throughput.bench_one(m, int(c.train.seq_len), tokens_per_step, max(1, timing_steps))
  # 0.9: headroom for the log-interval host syncs and the final checkpoint inside the budget.
  steps = max(10, int(0.9 * budget.seconds / b["step_s"]))
  return dict(steps=steps, timed_step_s=b["step_s"], timed_steps=len(b["step_s_all"]))


def run_kind(spec: str, budget: Budget, *, out: str, data: str, params: int, overrides: dict,
             eval_tokens: int, timing_steps: int = 5) -> dict:
  """Trains one row (a kind, or a ResNet-BK block variant) under `budget` and validates it.

  Args:
    spec: "KIND" or "resnet_bk:VARIANT" (`runs.parse_row`).
    budget: equal tokens or equal wall clock.
    out: output folder (the run goes to out/runs/<spec>, the token cache to out/cache).
    data: path of the text corpus.
    params: target parameter count (the layer count is matched to it).
    overrides: dotted config overrides shared by every kind (model width, batch, lr, ...).
    eval_tokens: validation characters scored.
    timing_steps: see `plan_steps`.

  Returns:
    The row written to the report (see `row_fields`).
  """
  kind, variant = runs.parse_row(spec)
  c = runs.make_config(kind, os.path.join(out, "runs", spec.replace(":", "_")), {
      "data.dataset": "text", "data.path": data, "data.tokenizer": "byte",
      "data.cache_dir": os.path.join(out, "cache"), **overrides, **variant})
  n_params = runs.match_params(c, params)
  plan = plan_steps(c, budget, timing_steps=timing_steps)
  steps = plan["steps"]
  c.train.steps_per_length = steps
  c.train.warmup_steps = min(int(c.train.warmup_steps), max(1, steps // 10))
  print(f"# {spec}: n_layers={c.model.n_layers} params={n_params:,} {budget.mode}: planned "
        f"steps={steps} (timed step {plan['timed_step_s']})", flush=True)
  res = runs.train(c, budget_s=budget.seconds or None)
  val = runs.validate(c, eval_tokens)
  fig = runs.length_figures(res, int(c.train.seq_len))
  done = int(res["total_steps"])
  tokens_per_step = int(c.train.batch_size) * int(c.train.seq_len)
  row = dict(kind=spec, params=res["n_params"], n_layers=int(c.model.n_layers),
             mode=budget.mode, planned_steps=steps, timed_step_s=plan["timed_step_s"],
             steps=done, wall_s=res["wall_s"], s_per_step=res["wall_s"] / max(done, 1),
             stopped_by_budget=res["stopped_by_budget"], tokens_seen=done * tokens_per_step,
             val_loss=val["loss"], val_tokens=val["tokens"],
             train_loss_last=fig["final_train_loss"], curve_steps=fig["curve_steps"],
             curve_loss=fig["curve_loss"])
  print(f"# {spec}: val loss {row['val_loss']:.4f} nats/char after {done} steps "
        f"({row['tokens_seen']:,} tokens, {row['wall_s']:.0f} s, {row['s_per_step']:.3f} s/step)",
        flush=True)
  return row


TABLE_HEADER = ["model", "params", "layers", "mode", "steps", "tokens seen", "train wall s",
                "s/step", "val loss (nats/char)"]


def table_row(r: dict) -> list:
  """One markdown row (TABLE_HEADER's columns) of a `run_kind` row."""
  return [r["kind"], r["params"], r["n_layers"], r["mode"], r["steps"], r["tokens_seen"],
          round(r["wall_s"]), round(r["s_per_step"], 4), round(r["val_loss"], 4)]


def run_anchor(kinds: list[str], budget: Budget, *, out: str, data: str, params: int,
               d_model: int, n_heads: int, seq_len: int, batch: int, lr: float, seed: int,
               eval_tokens: int, timing_steps: int, args: dict) -> dict:
  """scripts/quality_anchor.py: every kind under `budget` (`run_kind`), then the report.

  Args:
    kinds: the rows, in order: model kinds or "resnet_bk:VARIANT" (`runs.parse_row`).
    budget: equal tokens or equal wall clock.
    out: output folder; quality_anchor.json/.md/.png are written there.
    data: path of the text corpus.
    params: target parameter count (layers matched per kind).
    d_model, n_heads, seq_len, batch, lr, seed: shared by every kind (n_heads: BK heads).
    eval_tokens: validation characters scored.
    timing_steps: see `plan_steps`.
    args: the command's arguments, recorded in quality_anchor.json.

  Returns:
    {"rows": one `run_kind` row per kind, "out": out}.
  """
  shared = {"seed": seed, "model.d_model": d_model, "model.n_heads": n_heads,
            "model.d_ff": 4 * d_model, "model.transformer.n_heads": max(1, d_model // 32),
            "model.mamba2.headdim": throughput.mamba2_headdim(d_model),
            "train.seq_len": seq_len, "train.batch_size": batch, "train.lr": lr,
            "train.warmup_steps": 40, "train.log_interval": 10}
  runs.check_rows(kinds)  # fail on a bad row before any training
  rows = [run_kind(kind, budget, out=out, data=data, params=params, overrides=shared,
                   eval_tokens=eval_tokens, timing_steps=timing_steps)
          for kind in kinds]
  trows = [table_row(r) for r in rows]
  trows.append(["nanoGPT GPT (published)", NANOGPT["params"], 4, "180 s CPU", 2000, "-", 180, "-",
                NANOGPT["val_loss"]])
  md = common.md_table(TABLE_HEADER, trows)
  with open(os.path.join(out, "quality_anchor.md"), "w") as f:
    f.write(md + "\n")
  common.write_json(out, "quality_anchor.json", dict(args=args, mode=budget.mode, rows=rows,
                                                        published=NANOGPT))
  plots.plot_curves(os.path.join(out, "quality_anchor.png"),
                    [dict(kind=r["kind"], seed=seed, seq_len=seq_len, steps=r["curve_steps"],
                          values=r["curve_loss"]) for r in rows],
                    ylabel="training loss (nats/char)",
                    title=(f"Tiny Shakespeare, {budget.tokens:,} tokens per kind" if budget.tokens
                           else f"Tiny Shakespeare, {budget.seconds:.0f} s per kind"))
  print(md)
  return dict(rows=rows, out=out)

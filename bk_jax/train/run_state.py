"""The run's record besides the train state: `RunState`, saved as JSON with every checkpoint and
the source of the results file, and the per-epoch and per-length summaries written into it."""

from __future__ import annotations

import dataclasses
from typing import Any

from bk_jax.runtime.metrics import perplexity
from bk_jax.train import attempts
from bk_jax.train.results import seed_named


@dataclasses.dataclass
class RunState:
  """Where the run is and what it has recorded (every field is JSON).

  Attributes:
    config: the full run config (what a resume checks the model against).
    plan: `schedule.plan_table` of the plan trained to: [[seq_len, batch_size, steps], ...].
    position: [length index, steps done in that length].
    metrics_history: one record per logged step (`metrics.LongContextMetrics` and extras).
    eval_history: one record per validation.
    best_eval: per length (str N): the best validation {"step", "eval/loss", "path"}.
    results_by_length: per length: one entry per epoch (`epoch_record`).
    gradient_statistics: per length: gradient-norm mean, std, min, max (all attempts).
    length_summary: per length: `length_summary`.
    status: per length: "trained" or "DIVERGED".
    recoveries: one entry per divergence recovery.
    retries: per length: recoveries tried.
    abandoned: per length: counts of the steps abandoned by recoveries (`attempts.segment`).
    compile_s: per length: seconds the train step took to compile in the latest process.
    epoch_elapsed_s: the current epoch's time so far (a resumed epoch reports its whole time).
    data_iterator: what rebuilds the data pipeline of the checkpoint's iterator.
  """

  config: dict
  plan: list
  position: list = dataclasses.field(default_factory=lambda: [0, 0])
  metrics_history: list = dataclasses.field(default_factory=list)
  eval_history: list = dataclasses.field(default_factory=list)
  best_eval: dict = dataclasses.field(default_factory=dict)
  results_by_length: dict = dataclasses.field(default_factory=dict)
  gradient_statistics: dict = dataclasses.field(default_factory=dict)
  length_summary: dict = dataclasses.field(default_factory=dict)
  status: dict = dataclasses.field(default_factory=dict)
  recoveries: list = dataclasses.field(default_factory=list)
  retries: dict = dataclasses.field(default_factory=dict)
  abandoned: dict = dataclasses.field(default_factory=dict)
  compile_s: dict = dataclasses.field(default_factory=dict)
  epoch_elapsed_s: float = 0.0
  data_iterator: dict | None = None

  def to_json(self) -> dict:
    return dataclasses.asdict(self)

  @classmethod
  def from_json(cls, meta: dict) -> "RunState":
    """A checkpoint's meta; fields it predates take their defaults (`plan`: [], see
    `Trainer._continue_plan`), keys this version does not know are dropped, and metrics_history
    records written under schema 2 get the seed's names back (a resumed run writes one schema)."""
    names = {f.name for f in dataclasses.fields(cls)}
    known = {k: v for k, v in meta.items() if k in names and (v is not None or k == "data_iterator")}
    known.setdefault("plan", [])
    known["metrics_history"] = [seed_named(h) for h in known.get("metrics_history", [])]
    return cls(**known)

  def attempt(self, seq_len: int) -> int:
    """Recoveries tried at length seq_len so far (0 for the first attempt)."""
    return int(self.retries.get(str(seq_len), 0))


def epoch_record(monitors, *, epoch: int, epoch_time: float, attempt: int) -> dict:
  """One results_by_length entry from the host copy of the monitors at an epoch's end.

  "Final loss" has three meanings, each named: the last logged step's loss (metrics_history,
  length_summary.last_logged_loss), this epoch's mean train loss and its perplexity (here),
  and the validation loss (eval_history, length_summary.eval_loss).
  """
  ep, ln = monitors.epoch.summary(), monitors.length.summary()
  avg = ep["avg_loss"]
  return dict(epoch_mean_loss=avg, epoch_mean_perplexity=perplexity(avg), epoch_time=epoch_time,
              spike_count=ln["spike_count"], grad_norm_mean=ln["grad_norm"]["mean"],
              grad_norm_std=ln["grad_norm"]["std"], epoch=epoch, steps=ep["steps"],
              epoch_spike_count=ep["spike_count"], epoch_grad_norm_mean=ep["grad_norm"]["mean"],
              epoch_grad_norm_std=ep["grad_norm"]["std"], skipped_steps=ep["skipped_steps"],
              attempt=attempt)


def length_summary(run: RunState, monitors, plan, status: str) -> dict[str, Any]:
  """The length_summary entry of a finished length, and its gradient_statistics, into `run`.

  Args:
    run: the run state (gradient_statistics, length_summary and status are set here).
    monitors: host copy of the monitors at the length's end (its final attempt).
    plan: the length's `schedule.LengthPlan`.
    status: "trained" or "DIVERGED".

  Returns:
    The length_summary entry.
  """
  key = str(plan.seq_len)
  # the final attempt plus every abandoned one (divergence recoveries): true counts
  counts = attempts.combine(monitors.length.summary(), run.abandoned.get(key))
  run.gradient_statistics[key] = {k: counts["grad_norm"][k] for k in ("mean", "std", "min", "max")}
  hist = [h for h in run.metrics_history if h["seq_len"] == plan.seq_len]
  evals = [h for h in run.eval_history if h["seq_len"] == plan.seq_len]
  epochs = run.results_by_length.get(key) or [{}]
  last_eval = evals[-1] if evals else {}
  summary = dict(
      last_logged_loss=hist[-1]["loss"] if hist else None,
      last_logged_step=hist[-1]["step"] if hist else None,
      epoch_mean_loss=epochs[-1].get("epoch_mean_loss"),
      epoch_mean_perplexity=epochs[-1].get("epoch_mean_perplexity"),
      eval_loss=last_eval.get("eval/loss"), eval_perplexity=last_eval.get("eval/perplexity"),
      eval_bits_per_byte=last_eval.get("eval/bits_per_byte"), eval_step=last_eval.get("step"),
      best_eval=run.best_eval.get(key),
      steps=counts["steps"], spike_count=counts["spike_count"], skipped_steps=counts["skipped_steps"],
      nan_steps=counts["nan_steps"], inf_steps=counts["inf_steps"],
      precision_upgrades=counts["precision_upgrades"], grad_norm_count=counts["grad_norm"]["count"],
      batch_size=plan.batch_size, planned_steps=plan.steps,
      # retries counts the give-up too: a DIVERGED length ran `retries` attempts
      attempts=run.attempt(plan.seq_len) + (status != "DIVERGED"),
      abandoned_steps=int((run.abandoned.get(key) or {}).get("steps", 0)),
      compile_s=run.compile_s.get(key))
  run.length_summary[key] = summary
  run.status[key] = status
  return summary

"""Short trainings through bk_jax.train.loop.run and the figures the reports read from them.

Nothing here re-implements training or evaluation: a run is `loop.run(config)` with a config
built from configs/base.py plus overrides; validation is `bk_jax.train.evaluate.run_eval` (`eval.eval_only`
(bk_jax.train.evaluate, batched at the training length); the per-run figures come from the
returned long_context_results.json dict (metrics_history, gradient_statistics, status,
recoveries, length_summary).
"""

from __future__ import annotations

import copy
import math
import os
import shutil
import signal
import sys
import threading
import time

import ml_collections
import numpy as np

from bk_jax.data import TINY_SHAKESPEARE  # re-exported: the report scripts' default corpus
from bk_jax.train.results import history_value


def set_dotted(c: ml_collections.ConfigDict, key: str, value) -> None:
  """c.<key> = value for a dotted key ("model.bk_key_dim").

  Raises:
    ConfigError: the field does not exist (one line): a ConfigDict would otherwise take a
      misspelt override as a new field that nothing reads, and the run would silently train
      the default.
  """
  from bk_jax.runtime.errors import ConfigError

  *path, last = key.split(".")
  for p in path:
    c = c.get(p) if isinstance(c, ml_collections.ConfigDict) else None
  if not isinstance(c, ml_collections.ConfigDict) or last not in c:
    raise ConfigError(f"unknown config field {key!r}")
  c[last] = value


def parse_row(spec: str, *, variants: bool = True) -> tuple[str, dict]:
  """A row of a report's `--kinds`: "KIND" or "resnet_bk:VARIANT" (a block variant of
  scripts/ablations.py).

  Args:
    spec: e.g. "mamba" or "resnet_bk:green_keyed".
    variants: whether the report trains block variants (else only model kinds are rows).

  Returns:
    (kind, dotted model overrides of the variant; {} for a plain kind).

  Raises:
    ValueError: one line naming what the row may be: an unknown kind or variant, or a variant on
      a kind other than resnet_bk.
  """
  from bk_jax.models.kinds import kind_names
  from bk_jax.reports.block_variants import variants as block_variants  # the one list of them

  kind, _, variant = spec.partition(":")
  known = block_variants([])
  rows = f"a model kind ({', '.join(kind_names())})" + (
      f" or resnet_bk:VARIANT with VARIANT one of {', '.join(known)}" if variants else "")
  if kind not in kind_names() or (variant and (not variants or kind != "resnet_bk"
                                               or variant not in known)):
    raise ValueError(f"unknown row {spec!r}: a row is {rows}")
  return kind, {f"model.{k}": v for k, v in known.get(variant, {}).items()} if variant else {}


def check_rows(specs, *, variants: bool = True) -> list[tuple[str, dict]]:
  """`parse_row` of every row, so that a bad one fails before any training (ValueError)."""
  return [parse_row(s, variants=variants) for s in specs]


def make_config(kind: str, save_dir: str, overrides: dict | None = None) -> ml_collections.ConfigDict:
  """configs/base.py with model.kind=kind, a fresh save_dir, quiet logging and the overrides."""
  from bk_jax.train.cli import DEFAULT_CONFIG, load_config

  c = load_config(DEFAULT_CONFIG)
  c.model.kind = kind
  c.save_dir = save_dir
  c.checkpoint.resume = False
  # periodic checkpoints as in configs/base.py: the divergence monitor restores the last one, so
  # without them a late loss spike sends an hour's report run back to step 0
  c.checkpoint.every_steps = 500
  c.checkpoint.keep = 1
  c.logging.tensorboard = False
  c.logging.progress_bar = False
  c.logging.console = False
  c.data.prefetch_batches = 0
  c.train.log_interval = 1  # every step in metrics_history: spike counts and curves need it
  for k, v in (overrides or {}).items():
    set_dotted(c, k, v)
  return c


def vocab_of(c: ml_collections.ConfigDict) -> int:
  if c.data.dataset == "synthetic":
    from bk_jax.data.synthetic import task_vocab_size
    return int(task_vocab_size(c.data.synthetic))
  if c.data.tokenizer == "byte":
    from bk_jax.data.tokenizers import ByteTokenizer
    return ByteTokenizer.vocab_size
  return int(c.data.vocab_size)


def n_params(model_cfg, vocab: int) -> int:
  from bk_jax.reports.throughput import param_count
  m = copy.deepcopy(model_cfg)
  m.vocab_size = vocab
  return int(param_count(m))


def match_params(c: ml_collections.ConfigDict, target: int) -> int:
  """Sets c.model.n_layers to the count whose parameter total is closest to `target`
  (`throughput.layers_for_params` on the run's model at its data's vocabulary).

  Returns:
    The parameter count at that layer count.
  """
  from bk_jax.reports.throughput import layers_for_params

  v = vocab_of(c)
  m = copy.deepcopy(c.model)
  m.vocab_size = v
  c.model.n_layers = layers_for_params(m, target)
  return n_params(c.model, v)


PROGRESS_EVERY_S = 60.0  # a report's training run prints one progress line to stderr this often


def train(c: ml_collections.ConfigDict, *, budget_s: float | None = None,
          resume: bool = False) -> dict:
  """Trains c (a `loop.Trainer`); with budget_s, SIGTERM is raised once the wall clock passes it (the loop saves,
  stops cleanly and marks the results `interrupted`). Adds wall_s and budget fields. The report
  configs keep the loop's console quiet, so a line "<run>: step S, T s, loss L" (the latest
  logged training loss) goes to stderr every PROGRESS_EVERY_S seconds: long report runs show
  that they are alive and whether they learn; each restore by the divergence monitor prints one
  line as it happens.

  Args:
    c: the run's config (its save_dir is the run's directory).
    budget_s: wall-clock seconds after which the run stops cleanly (checkpoint saved).
    resume: continue from the latest checkpoint in save_dir (a run stopped by its budget or a
      signal, or killed: the periodic checkpoints), where one exists; False: start over (save_dir
      is removed first).

  Returns:
    The trainer's results plus wall_s and steps_run (this call's), start_step (the step this
    call resumed from: 0 for a fresh run), budget_s and stopped_by_budget.
  """
  from bk_jax.train import loop

  if resume:
    c = copy.deepcopy(c)
    c.checkpoint.resume = True
  elif os.path.isdir(c.save_dir):
    shutil.rmtree(c.save_dir)
  t0 = time.perf_counter()
  fired, last_print, told = [], [t0], [0]  # told: restores printed so far
  ran = [0, 0]  # the first step this call ran (where a resumed run started) and how many
  can_signal = threading.current_thread() is threading.main_thread()
  name = os.path.basename(os.path.normpath(c.save_dir))

  def tell_recoveries() -> None:
    # the quiet console says nothing when the divergence monitor acts: one line per restore
    for r in trainer.run_state.recoveries[told[0]:]:
      told[0] += 1
      print(f"  {name}: N={r['seq_len']}: divergence detected at step {r['detected_at_step']}; " + (
          "recoveries used up: the length is DIVERGED" if r["gave_up"] else
          f"restored step {r['restored_step']}, learning rate x{r['lr_scale']:g}"),
          file=sys.stderr, flush=True)

  def on_step(step: int) -> None:
    now = time.perf_counter()
    if not ran[1]:
      ran[0] = step
      if step > 1:
        print(f"  {name}: resumed at step {step - 1}", file=sys.stderr, flush=True)
    ran[1] += 1
    tell_recoveries()
    if now - last_print[0] >= PROGRESS_EVERY_S:
      last_print[0] = now
      loss = trainer.last_loss
      tail = "" if loss is None else f", loss {loss:.4g}"
      print(f"  {name}: step {step}, {now - t0:.0f} s{tail}", file=sys.stderr, flush=True)
    if budget_s and can_signal and not fired and now - t0 > budget_s:
      fired.append(now - t0)
      os.kill(os.getpid(), signal.SIGTERM)

  trainer = loop.Trainer(c, on_step=on_step)
  res = trainer.run()
  tell_recoveries()
  res["wall_s"] = time.perf_counter() - t0
  res["steps_run"] = ran[1]
  res["start_step"] = ran[0] - 1 if ran[1] else int(res["total_steps"])
  res["budget_s"] = budget_s
  res["stopped_by_budget"] = bool(fired)
  return res


def interval_tokens_per_s(rec: dict, tokens_per_step: int) -> float | None:
  """Training tokens/s of one metrics_history record (its interval's mean step time), from
  results files of either schema (`bk_jax.train.results.history_value`)."""
  for k in ("tokens_per_s", "perf/tokens_per_s"):
    if rec.get(k):
      return float(rec[k])
  step_time = history_value(rec, "step_time")
  return tokens_per_step / float(step_time) if step_time else None


def steady_tokens_per_s(res: dict, tokens_per_step: int) -> float | None:
  """Median training tokens/s over the log intervals of a `train` result (each interval is
  timed on finished steps, compilation apart: `perf/compile_s`); None without any."""
  hist = res.get("metrics_history", [])
  steady = sorted(t for t in (interval_tokens_per_s(h, tokens_per_step) for h in hist) if t)
  return steady[len(steady) // 2] if steady else None


def validate(c: ml_collections.ConfigDict, eval_tokens: int, split: str = "valid") -> dict:
  """Validation loss of the run's latest checkpoint (bk_jax.train.evaluate, batched)."""
  from bk_jax.train.evaluate import run_eval

  e = copy.deepcopy(c)
  e.eval.eval_only, e.eval.streaming = True, False
  e.eval.eval_tokens, e.eval.split = int(eval_tokens), split
  return run_eval(e)


def _f(x) -> float:
  try:
    return float(x)
  except (TypeError, ValueError):
    return math.nan


def length_figures(res: dict, seq_len: int) -> dict:
  """Per-length stability figures of one run (metrics_history must hold every step)."""
  key = str(seq_len)
  # the seed's names (schema 3, and 1), or schema 2's "train/..." (results.history_value)
  hist = [h for h in res.get("metrics_history", []) if int(h["seq_len"]) == seq_len]
  steps = [int(h["step"]) for h in hist]
  loss = [_f(history_value(h, "loss")) for h in hist]
  gn = [_f(history_value(h, "gradient_norm")) for h in hist]
  spikes = sum(bool(history_value(h, "is_spike")) for h in hist)
  nonfinite = sum(bool(history_value(h, "is_nan")) or bool(history_value(h, "is_inf")) for h in hist)
  status = res.get("status", {}).get(key, "interrupted" if res.get("interrupted") else "unknown")
  rec = [r for r in res.get("recoveries", []) if int(r["seq_len"]) == seq_len]
  g = np.asarray([x for x in gn if math.isfinite(x)], np.float64)
  n_steps = len(hist)
  return dict(seq_len=seq_len, status=status, diverged=status == "DIVERGED",
              first_divergence_step=(int(rec[0]["detected_at_step"]) if rec else None),
              recoveries=len(rec), steps=n_steps, nonfinite_steps=nonfinite, spikes=spikes,
              spikes_per_1000=1000.0 * spikes / max(n_steps, 1),
              grad_norm_mean=float(g.mean()) if g.size else math.nan,
              grad_norm_cv=float(g.std() / g.mean()) if g.size and g.mean() > 0 else math.nan,
              final_train_loss=float(np.mean([x for x in loss[-10:] if math.isfinite(x)]))
              if any(math.isfinite(x) for x in loss[-10:]) else math.nan,
              curve_steps=steps, curve_loss=loss, curve_grad_norm=gn)

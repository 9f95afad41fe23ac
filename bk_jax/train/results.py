"""The results file `save_dir/long_context_results.json` (layout: docs/guides/tensorboard.md).

Schema 3 (`run_info.SCHEMA_VERSION`): `metrics_history` records carry the seed's
LongContextMetrics fields (`HISTORY_KEYS`). Files of schema 2 named those figures
`train/loss`, `train/grad_norm`, ..., `perf/step_time`; readers of results files take both
through `history_value`.
"""

from __future__ import annotations

import dataclasses
import os

from bk_jax.runtime.jsonio import json_safe, write_json
from bk_jax.train.metrics import LongContextMetrics

#: Keys every metrics_history record has: the seed's fields, then the others every record has
#: (the writer adds bk/*, moe/*, train/aux_loss only when those features are on, and
#: perf/device_peak_since_start_gb on accelerators; see bk_jax.runtime.memory).
HISTORY_KEYS = tuple(f.name for f in dataclasses.fields(LongContextMetrics)) + (
    "spike_count", "train/param_norm", "train/skipped_steps", "perf/tokens_per_s",
    "perf/host_rss_gb", "attempt")
#: Keys every eval_history record has (eval/bits_per_byte: text datasets only).
EVAL_KEYS = ("step", "epoch", "seq_len", "eval/loss", "eval/perplexity", "eval/tokens")
#: Keys of one per-epoch entry of results_by_length.
EPOCH_KEYS = ("epoch_mean_loss", "epoch_mean_perplexity", "epoch_time", "spike_count",
              "grad_norm_mean", "grad_norm_std")
#: Keys of one gradient_statistics entry.
GRAD_KEYS = ("mean", "std", "min", "max")

#: How files of schema 2 named the figures that schema 3 records under the seed's names.
SCHEMA2_NAMES = {"loss": "train/loss", "perplexity": "train/perplexity",
                 "gradient_norm": "train/grad_norm", "learning_rate": "train/learning_rate",
                 "is_nan": "train/is_nan", "is_inf": "train/is_inf", "is_spike": "train/is_spike",
                 "spike_ratio": "train/spike_ratio", "spike_count": "train/spike_count",
                 "step_time": "perf/step_time", "mean_schatten_s1": "bk/schatten_s1",
                 "mean_schatten_s2": "bk/schatten_s2", "max_condition_number": "bk/condition_number"}


#: The inverse of SCHEMA2_NAMES: schema 2's name -> the seed's.
SCHEMA2_SEED_NAMES = {old: seed for seed, old in SCHEMA2_NAMES.items()}


def seed_named(record: dict) -> dict:
  """A metrics_history record with schema 2's names turned back into the seed's."""
  return {SCHEMA2_SEED_NAMES.get(k, k): v for k, v in record.items()}


def history_value(record: dict, name: str, default=None):
  """`record[name]` of a metrics_history record of any schema (1 and 3 use the seed's names)."""
  if name in record:
    return record[name]
  return record.get(SCHEMA2_NAMES.get(name, name), default)


def build_results(run, *, args: dict, memory_kind: str, extra: dict) -> dict:
  """The results dict of a run.

  Args:
    run: the trainer's `run_state.RunState`.
    args: the run's full config.
    memory_kind: what the headline memory figure measures (`MemoryUsage.kind`).
    extra: the other top-level sections (schema_version, units, run, ...).
  """
  return json_safe(dict(args=args, results_by_length=run.results_by_length,
                        metrics_history=run.metrics_history,
                        gradient_statistics=run.gradient_statistics, status=run.status,
                        memory_kind=memory_kind, **extra))


def final_metrics(length_summary: dict) -> dict:
  """The hparams metrics: the last length's three "final" losses and its last eval."""
  if not length_summary:
    return {}
  s = list(length_summary.values())[-1]
  keys = ("last_logged_loss", "epoch_mean_loss", "epoch_mean_perplexity", "eval_loss",
          "eval_perplexity", "eval_bits_per_byte")
  return {k: s[k] for k in keys if s.get(k) is not None}


def write_results(save_dir: str, results: dict) -> str:
  """Atomic write (tmp + rename) of the results JSON; returns its path."""
  return write_json(os.path.join(save_dir, "long_context_results.json"), results)

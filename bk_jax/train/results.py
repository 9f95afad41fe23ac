"""The results file `save_dir/long_context_results.json` (layout: docs/guides/tensorboard.md)."""

from __future__ import annotations

import os

from bk_jax.runtime.jsonio import json_safe, write_json

#: Keys every metrics_history record has (the metric writer adds bk/*, moe/*, train/aux_loss
#: only when those features are on; memory: perf/host_rss_gb always, plus
#: perf/device_peak_since_start_gb on accelerators, see bk_jax.runtime.memory).
HISTORY_KEYS = ("step", "epoch", "seq_len", "train/loss", "train/perplexity", "train/grad_norm",
                "train/param_norm", "train/learning_rate", "train/is_nan", "train/is_inf",
                "train/is_spike", "train/spike_ratio", "train/spike_count", "train/skipped_steps",
                "perf/step_time", "perf/tokens_per_s", "perf/host_rss_gb", "attempt")
#: Keys every eval_history record has (eval/bits_per_byte: text datasets only).
EVAL_KEYS = ("step", "epoch", "seq_len", "eval/loss", "eval/perplexity", "eval/tokens")
#: Keys of one per-epoch entry of results_by_length.
EPOCH_KEYS = ("epoch_mean_loss", "epoch_mean_perplexity", "epoch_time", "spike_count",
              "grad_norm_mean", "grad_norm_std")
#: Keys of one gradient_statistics entry.
GRAD_KEYS = ("mean", "std", "min", "max")


def build_results(*, args: dict, results_by_length: dict, metrics_history: list,
                  gradient_statistics: dict, status: dict, memory_kind: str, extra: dict) -> dict:
  return json_safe(dict(args=args, results_by_length=results_by_length, metrics_history=metrics_history,
                     gradient_statistics=gradient_statistics, status=status,
                     memory_kind=memory_kind, **extra))


def write_results(save_dir: str, results: dict) -> str:
  """Atomic write (tmp + rename) of the results JSON; returns its path."""
  return write_json(os.path.join(save_dir, "long_context_results.json"), results)

"""TensorBoard (tensorboardX, process 0) and console lines in the reference format.

Memory figures come from `bk_jax.memory` (device peak since start on accelerators, host RSS on
the CPU); a step record carries them under the names of `MemoryUsage.fields()`.
"""

from __future__ import annotations

import os
import sys

import jax

from bk_jax.memory import LABEL, METRIC, RECORD_FIELDS, headline

try:
  from tqdm.auto import tqdm
except ImportError:  # pragma: no cover
  tqdm = None


class TensorBoard:
  """Scalars under save_dir/tensorboard with the DESIGN §5 tags (no-op when disabled)."""

  def __init__(self, save_dir: str, enabled: bool):
    self.writer = None
    if enabled and jax.process_index() == 0:
      from tensorboardX import SummaryWriter
      self.logdir = os.path.join(save_dir, "tensorboard")
      self.writer = SummaryWriter(logdir=self.logdir)

  def log_step(self, rec: dict, spike_count: int, tokens_per_s: float, extra: dict) -> None:
    if self.writer is None:
      return
    n, s = rec["seq_len"], rec["step"]
    w = self.writer.add_scalar
    w(f"seq{n}/loss", rec["loss"], s)
    w(f"seq{n}/perplexity", rec["perplexity"], s)
    w(f"seq{n}/gradient_norm", rec["gradient_norm"], s)
    kind, mem = headline(rec)
    w(f"seq{n}/memory_gb", mem, s)  # the headline figure; perf/ tags below name what it is
    for k, field in RECORD_FIELDS.items():
      if rec.get(field) is not None:
        w(METRIC[k], rec[field], s)
    w(f"seq{n}/spike_count", spike_count, s)
    w(f"seq{n}/schatten_s1", rec["mean_schatten_s1"], s)
    w(f"seq{n}/schatten_s2", rec["mean_schatten_s2"], s)
    w(f"seq{n}/condition_number", rec["max_condition_number"], s)
    w("learning_rate", rec["learning_rate"], s)
    w("perf/tokens_per_s", tokens_per_s, s)
    for k, v in extra.items():
      w(f"seq{n}/{k}", v, s)

  def flush(self) -> None:
    if self.writer is not None:
      self.writer.flush()

  def close(self) -> None:
    if self.writer is not None:
      self.writer.close()


class Console:
  """Reference-style console output; lines go through tqdm.write while a bar is shown."""

  def __init__(self, enabled: bool, progress_bar: bool):
    self.enabled = enabled and jax.process_index() == 0
    self.use_bar = progress_bar and self.enabled and tqdm is not None
    self.bar = None

  def print(self, msg: str = "") -> None:
    if not self.enabled:
      return
    if self.bar is not None:
      self.bar.write(msg, file=sys.stdout)
    else:
      print(msg, flush=True)

  def step_line(self, rec: dict) -> None:
    kind, mem = headline(rec)
    line = (f"Step {rec['step']:6d} | Loss: {rec['loss']:.4f} | PPL: {rec['perplexity']:.2f} | "
            f"Grad: {rec['gradient_norm']:.2f} | Mem: {mem:.2f}GB {LABEL[kind]}")
    if rec["is_spike"]:
      line += f" | SPIKE {rec['spike_ratio']:.2f}x"
    if rec["is_nan"] or rec["is_inf"]:
      line += f" | {'NaN' if rec['is_nan'] else 'Inf'} (update skipped)"
    self.print(line)

  def start_bar(self, total: int, initial: int, desc: str) -> None:
    if self.use_bar:
      self.bar = tqdm(total=total, initial=initial, desc=desc, unit="step", dynamic_ncols=True,
                      leave=False, file=sys.stderr)

  def update_bar(self, n: int, tokens_per_s: float, loss: float | None) -> None:
    if self.bar is not None:
      post = {"tok/s": f"{tokens_per_s:,.0f}"}
      if loss is not None:
        post["loss"] = f"{loss:.3f}"
      self.bar.set_postfix(post, refresh=False)
      self.bar.update(n)

  def close_bar(self) -> None:
    if self.bar is not None:
      self.bar.close()
      self.bar = None

  def epoch_summary(self, epoch: int, seq_len: int, r: dict) -> None:
    self.print(f"\nEpoch {epoch} Summary (N={seq_len}):")
    self.print(f"  Time: {r['epoch_time']:.1f}s")
    self.print(f"  Avg Loss: {r['avg_loss']:.4f}")
    self.print(f"  Perplexity: {r['perplexity']:.2f}")
    self.print(f"  Gradient Norm: {r['grad_norm_mean']:.2f} ± {r['grad_norm_std']:.2f}")
    self.print(f"  Loss Spikes: {r['spike_count']}")
    if r.get("skipped_steps"):
      self.print(f"  Skipped (non-finite) updates: {r['skipped_steps']}")

  def final_tables(self, results_by_length: dict, status: dict, grad_stats: dict) -> None:
    self.print(f"\n{'=' * 60}\nMulti-Length Training Summary\n{'=' * 60}")
    self.print(f"\n{'Seq Len':<10} {'Final PPL':<12} {'Spikes':<10} {'Grad Norm':<17} {'Status':<10}")
    self.print("-" * 60)
    for key, epochs in results_by_length.items():
      st = status.get(key, "")
      if epochs:
        e = epochs[-1]
        self.print(f"{key:<10} {e['perplexity']:<12.2f} {e['spike_count']:<10} "
                   f"{e['grad_norm_mean']:.2f} ± {e['grad_norm_std']:<10.2f} {st:<10}")
      else:
        self.print(f"{key:<10} {'-':<12} {'-':<10} {'-':<17} {st:<10}")
    self.print("\nGradient Norm Statistics by Sequence Length:")
    for key, s in grad_stats.items():
      self.print(f"  N={key:<6}: mean={s['mean']:.2f}, std={s['std']:.2f}, "
                 f"min={s['min']:.2f}, max={s['max']:.2f}")

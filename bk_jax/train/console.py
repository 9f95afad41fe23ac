"""Console lines in the reference format (TensorBoard and the results JSON: train/metrics.py).

Memory figures come from `bk_jax.runtime.memory` (device peak since start on accelerators, host RSS on
every backend), named by what they measure.
"""

from __future__ import annotations

import os
import sys

import jax

from bk_jax.runtime.memory import LABEL, headline

try:
  from tqdm.auto import tqdm
except ImportError:  # pragma: no cover
  tqdm = None




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
    """One training record of the metric writer (`metrics.LongContextMetrics.record`)."""
    mem = headline(rec)
    line = (f"Step {rec['step']:6d} | Loss: {rec['loss']:.4f} | "
            f"PPL: {rec['perplexity']:.2f} | Grad: {rec['gradient_norm']:.2f}")
    if mem is not None:
      line += f" | Mem: {mem[1]:.2f}GB {LABEL[mem[0]]}"
    if rec["is_spike"]:
      line += f" | SPIKE {rec['spike_ratio']:.2f}x"
    if rec["is_nan"] or rec["is_inf"]:
      line += f" | {'NaN' if rec['is_nan'] else 'Inf'} (update skipped)"
    self.print(line)

  def eval_line(self, rec: dict) -> None:
    """One validation record of the metric writer."""
    line = (f"Eval {rec['step']:6d} | N={rec['seq_len']} | Loss: {rec['eval/loss']:.4f} | "
            f"PPL: {rec['eval/perplexity']:.2f}")
    if "eval/bits_per_byte" in rec:
      line += f" | bits/byte: {rec['eval/bits_per_byte']:.3f}"
    self.print(line + f" | {int(rec['eval/tokens']):,} tokens (valid)")

  def start_bar(self, total: int, initial: int, desc: str) -> None:
    if self.use_bar:
      self.bar = tqdm(total=total, initial=initial, desc=desc, unit="step", dynamic_ncols=True,
                      leave=False, file=sys.stderr)

  def update_bar(self, n: int, tokens_per_s: float) -> None:
    if self.bar is not None:
      self.bar.set_postfix({"tok/s": f"{tokens_per_s:,.0f}"}, refresh=False)
      self.bar.update(n)

  def close_bar(self) -> None:
    if self.bar is not None:
      self.bar.close()
      self.bar = None

  def epoch_summary(self, epoch: int, seq_len: int, r: dict) -> None:
    self.print(f"\nEpoch {epoch} Summary (N={seq_len}):")
    self.print(f"  Time: {r['epoch_time']:.1f}s")
    self.print(f"  Epoch mean train loss: {r['epoch_mean_loss']:.4f}")
    self.print(f"  Epoch mean train perplexity: {r['epoch_mean_perplexity']:.2f}")
    self.print(f"  Gradient Norm: {r['grad_norm_mean']:.2f} ± {r['grad_norm_std']:.2f}")
    self.print(f"  Loss Spikes: {r['spike_count']}")
    if r.get("skipped_steps"):
      self.print(f"  Skipped (non-finite) updates: {r['skipped_steps']}")

  def final_tables(self, length_summary: dict, status: dict, grad_stats: dict) -> None:
    """The per-length table: each "final" loss under its own name (docs/guides/tensorboard.md, "The results file")."""
    f = lambda v, w, p: f"{v:<{w}.{p}f}" if isinstance(v, (int, float)) else f"{'-':<{w}}"
    self.print(f"\n{'=' * 96}\nMulti-Length Training Summary\n{'=' * 96}")
    self.print(f"\n{'Seq Len':<8} {'Last step loss':<15} {'Epoch mean loss':<16} "
               f"{'Epoch mean PPL':<15} {'Eval loss':<10} {'Eval PPL':<10} {'Spikes':<7} "
               f"{'Status':<10}")
    self.print("-" * 96)
    for key, s in length_summary.items():
      self.print(f"{key:<8} {f(s.get('last_logged_loss'), 15, 4)} {f(s.get('epoch_mean_loss'), 16, 4)} "
                 f"{f(s.get('epoch_mean_perplexity'), 15, 2)} {f(s.get('eval_loss'), 10, 4)} "
                 f"{f(s.get('eval_perplexity'), 10, 2)} {s.get('spike_count', 0):<7} "
                 f"{status.get(key, ''):<10}")
    self.print("\nGradient Norm Statistics by Sequence Length:")
    for key, s in grad_stats.items():
      self.print(f"  N={key:<6}: mean={s['mean']:.2f}, std={s['std']:.2f}, "
                 f"min={s['min']:.2f}, max={s['max']:.2f}")

"""Matplotlib (Agg) figures for the report scripts; every function writes one PNG and returns it."""

from __future__ import annotations

import numpy as np

from bk_jax.eval.plots import pyplot, save_figure
from bk_jax.models.kinds import KINDS

#: One colour per registered model kind, in registration order (resnet_bk blue, mamba orange,
#: transformer green, mamba2 red; a new kind takes the next colour of the tab10 palette).
_PALETTE = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown",
            "tab:pink", "tab:gray", "tab:olive", "tab:cyan")
COLORS = {kind: _PALETTE[i % len(_PALETTE)] for i, kind in enumerate(KINDS)}



def plot_benchmark(path: str, rows: list[dict], title: str = "") -> str:
  plt = pyplot()
  fig, ax = plt.subplots(1, 2, figsize=(10, 4))
  for kind in sorted({r["kind"] for r in rows}):
    rr = sorted((r for r in rows if r["kind"] == kind), key=lambda r: r["n"])
    n = [r["n"] for r in rr]
    ax[0].errorbar(n, [r["tokens_per_s"] for r in rr], marker="o", color=COLORS.get(kind), label=kind,
                   yerr=[[r["tokens_per_s"] - r["tokens_per_step"] / r["step_s_max"] for r in rr],
                         [r["tokens_per_step"] / r["step_s_min"] - r["tokens_per_s"] for r in rr]])
    ax[1].plot(n, [r["peak_mb"] for r in rr], marker="o", color=COLORS.get(kind), label=kind)
  for a, yl in zip(ax, ("training tokens/s (median; bars: min-max)", "XLA peak memory of the step (MB)")):
    a.set_xscale("log", base=2)
    a.set_yscale("log")
    a.set_xlabel("sequence length N")
    a.set_ylabel(yl)
    a.grid(True, which="both", alpha=0.3)
    a.legend()
  fig.suptitle(title, fontsize=9)
  return save_figure(fig, path)


def plot_curves(path: str, runs: list[dict], key: str = "loss", ylabel: str = "training loss",
                title: str = "", band: bool = False) -> str:
  """runs: dicts with kind, seed, seq_len, steps (list), values (list). One panel per seq_len."""
  plt = pyplot()
  lengths = sorted({r["seq_len"] for r in runs})
  fig, axes = plt.subplots(1, len(lengths), figsize=(5 * len(lengths), 3.8), squeeze=False)
  for ax, n in zip(axes[0], lengths):
    for kind in sorted({r["kind"] for r in runs}):
      rr = [r for r in runs if r["seq_len"] == n and r["kind"] == kind and r["values"]]
      if not rr:
        continue
      if band:
        m = min(len(r["values"]) for r in rr)
        v = np.array([r["values"][:m] for r in rr], np.float64)
        s = rr[0]["steps"][:m]
        ax.plot(s, np.nanmean(v, 0), color=COLORS.get(kind), label=f"{kind} (mean of {len(rr)} seeds)")
        ax.fill_between(s, np.nanmin(v, 0), np.nanmax(v, 0), color=COLORS.get(kind), alpha=0.25)
      else:
        for i, r in enumerate(rr):
          ax.plot(r["steps"], r["values"], color=COLORS.get(kind), alpha=0.8, lw=1,
                  label=kind if i == 0 else None)
    ax.set_title(f"N = {n}")
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
  fig.suptitle(title, fontsize=9)
  return save_figure(fig, path)


def plot_bars(path: str, labels: list[str], groups: dict[str, list[float]], ylabel: str,
              title: str = "") -> str:
  """Grouped bars: groups[kind] = one value per label (NaN = missing)."""
  plt = pyplot()
  fig, ax = plt.subplots(figsize=(max(5, 1.6 * len(labels)), 3.8))
  w = 0.8 / max(1, len(groups))
  x = np.arange(len(labels))
  for i, (k, vals) in enumerate(groups.items()):
    ax.bar(x + i * w, vals, w, label=k, color=COLORS.get(k))
  ax.set_xticks(x + w * (len(groups) - 1) / 2, labels)
  ax.set_ylabel(ylabel)
  ax.grid(True, axis="y", alpha=0.3)
  ax.legend(fontsize=8)
  ax.set_title(title, fontsize=9)
  return save_figure(fig, path)


def plot_gpu_suite(path: str, rows: list[dict], title: str = "") -> str:
  """Two panels: resolvent tokens/s per method against N, training tokens/s per kind against N."""
  plt = pyplot()
  fig, ax = plt.subplots(1, 2, figsize=(10, 4))
  ok = [r for r in rows if r.get("status") == "ok" and r.get("tokens_per_s")]
  ops = [r for r in ok if r["stage"] == "ops"]
  for method in sorted({r["method"] for r in ops}):
    rr = sorted((r for r in ops if r["method"] == method), key=lambda r: r["n"])
    ax[0].plot([r["n"] for r in rr], [r["tokens_per_s"] for r in rr], marker="o", label=method)
  models = [r for r in ok if r["stage"].startswith("models:")]
  for kind in sorted({r["kind"] for r in models}):
    rr = sorted((r for r in models if r["kind"] == kind), key=lambda r: r["n"])
    ax[1].plot([r["n"] for r in rr], [r["tokens_per_s"] for r in rr], marker="o",
               color=COLORS.get(kind), label=kind)
  for a, t in zip(ax, ("causal_diag fwd+bwd (positions/s)", "training step tokens/s")):
    a.set_xscale("log", base=2)
    a.set_yscale("log")
    a.set_xlabel("sequence length N")
    a.set_title(t, fontsize=9)
    a.grid(True, which="both", alpha=0.3)
    if a.get_legend_handles_labels()[0]:
      a.legend(fontsize=8)
  fig.suptitle(title, fontsize=9)
  return save_figure(fig, path)

"""PNG plots of the evaluation results (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

import os


def pyplot():
  """matplotlib.pyplot on the Agg backend (imported lazily: plotting is optional work)."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  return plt


def save_figure(fig, path: str) -> str:
  """Writes `fig` as a PNG at `path` (creating its folder), closes it, returns the path."""
  os.makedirs(os.path.dirname(os.path.abspath(path)) or ".", exist_ok=True)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  pyplot().close(fig)
  return path


def _midpoint(row: dict, last_end: float) -> float:
  start, end = row["start"], row["end"]
  end = end if end is not None else last_end
  return max((max(start, 1) * end) ** 0.5, 1.0)  # geometric midpoint on a log axis


def plot_degradation(path: str, buckets: list[dict] | None, per_length: list[dict] | None = None,
                     *, title: str = "") -> str:
  """Loss per position bucket (left) and loss versus training length (right) in one PNG."""
  plt = pyplot()
  per_length = [r for r in per_length or [] if r.get("loss") is not None] or None  # DIVERGED: unscored
  panels = [p for p in (buckets, per_length) if p]
  fig, axes = plt.subplots(1, max(len(panels), 1), figsize=(6 * max(len(panels), 1), 4), squeeze=False)
  i = 0
  if buckets:
    ax = axes[0][i]
    last = max(r["start"] for r in buckets) * 10 or 10
    xs = [_midpoint(r, last) for r in buckets]
    ax.plot(xs, [r["loss"] for r in buckets], "o-", label="this checkpoint")
    for r in per_length or []:
      bx = [_midpoint(b, last) for b in r["buckets"]]
      ax.plot(bx, [b["loss"] for b in r["buckets"]], ".--", alpha=0.6, label=f"trained N={r['train_len']}")
    for x, r in zip(xs, buckets):
      ax.annotate(r["bucket"], (x, r["loss"]), textcoords="offset points", xytext=(0, 6), ha="center",
                  fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel("absolute position in the stream (tokens)")
    ax.set_ylabel("loss (nats/token)")
    ax.set_title("loss per position bucket")
    ax.grid(True, alpha=0.3)
    if per_length:
      ax.legend(fontsize=7)
    i += 1
  if per_length:
    ax = axes[0][i]
    ax.plot([r["train_len"] for r in per_length], [r["loss"] for r in per_length], "s-")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("training sequence length N")
    ax.set_ylabel("streaming loss (nats/token)")
    ax.set_title(f"loss vs training length ({per_length[0]['tokens']:,} tokens)")
    ax.grid(True, alpha=0.3)
  if title:
    fig.suptitle(title, fontsize=10)
  return save_figure(fig, path)


def plot_extrapolation(path: str, rows: list[dict], *, train_len: int | None = None,
                       title: str = "") -> str:
  """Accuracy versus test length (log2 axis), the training length marked."""
  plt = pyplot()
  fig, ax = plt.subplots(figsize=(6.5, 4))
  ax.plot([r["length"] for r in rows], [100.0 * r["accuracy"] for r in rows], "o-")
  if train_len:
    ax.axvline(train_len, color="gray", ls="--", lw=1, label=f"trained at N={train_len}")
    ax.legend()
  ax.set_xscale("log", base=2)
  ax.set_ylim(-2, 102)
  ax.set_xlabel("test sequence length")
  ax.set_ylabel("accuracy (%)")
  ax.set_title(title or "length extrapolation")
  ax.grid(True, alpha=0.3)
  return save_figure(fig, path)


def plot_heatmaps(path: str, panels: dict[str, list[dict]], *, x: str, y: str,
                  value: str = "accuracy", xlabel: str = "", ylabel: str = "", title: str = "") -> str:
  """One accuracy heat map per panel (e.g. per model): rows {x, y, value} on a grid, in percent.

  Args:
    path: PNG path.
    panels: {panel title: rows}; a cell missing from a panel's rows is left blank.
    x, y: the row keys of the columns and the rows of each map (e.g. "length", "depth").
    value: the key of the cell value, a fraction in [0, 1] (None = not run).
  """
  plt = pyplot()
  xs = sorted({r[x] for rows in panels.values() for r in rows})
  ys = sorted({r[y] for rows in panels.values() for r in rows})
  n = max(len(panels), 1)
  fig, axes = plt.subplots(1, n, figsize=(0.9 * len(xs) * n + 2.5, 0.45 * len(ys) + 1.8),
                           squeeze=False)
  for ax, (name, rows) in zip(axes[0], panels.items()):
    grid = [[float("nan")] * len(xs) for _ in ys]
    for r in rows:
      if r.get(value) is not None:
        grid[ys.index(r[y])][xs.index(r[x])] = 100.0 * r[value]
    im = ax.imshow(grid, vmin=0, vmax=100, cmap="viridis", aspect="auto", origin="lower")
    for i in range(len(ys)):
      for j in range(len(xs)):
        if grid[i][j] == grid[i][j]:  # not NaN
          ax.text(j, i, f"{grid[i][j]:.0f}", ha="center", va="center", fontsize=7,
                  color="white" if grid[i][j] < 60 else "black")
    ax.set_xticks(range(len(xs)), [str(v) for v in xs], fontsize=7, rotation=45)
    ax.set_yticks(range(len(ys)), [str(v) for v in ys], fontsize=7)
    ax.set_xlabel(xlabel or x)
    ax.set_ylabel(ylabel or y)
    ax.set_title(name, fontsize=9)
  fig.colorbar(im, ax=axes[0].tolist(), shrink=0.8, label=f"{value} (%)")
  if title:
    fig.suptitle(title, fontsize=10)
  os.makedirs(os.path.dirname(os.path.abspath(path)) or ".", exist_ok=True)
  fig.savefig(path, dpi=110, bbox_inches="tight")
  plt.close(fig)
  return path

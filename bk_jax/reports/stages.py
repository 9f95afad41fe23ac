"""Time-bounded report stages: each in its own child process under a wall-clock budget.

The machinery behind the GPU suite and the model comparison. A suite module defines
``run_stage(stage, spec, out, rows_path)``, which runs one stage in the calling process and
appends JSON lines to rows_path through an `Emitter` (a "start" record before each cell, then its
row, so a stage killed at its budget keeps every row it finished and names the cell it was in).
`run_stages` starts one child per stage (``python -c`` importing the suite module), kills it at
its budget plus a grace period (start-up; cells past the budget are skipped by the stage itself
through `Emitter.cell`), and collects the rows. Stages of one group run side by side (figures
that do not depend on timing: accuracies, losses); groups run one after another.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
import traceback
from typing import Callable, Sequence

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class Emitter:
  """Appends JSON lines (a "start" before each cell, then its row) so a killed stage keeps rows."""

  def __init__(self, path: str, stage: str):
    self.path, self.stage = path, stage

  def write(self, rec: dict) -> None:
    from bk_jax.runtime.jsonio import json_safe

    with open(self.path, "a") as f:
      f.write(json.dumps(json_safe(dict(rec, stage=self.stage))) + "\n")

  @contextlib.contextmanager
  def cell(self, cell: dict, deadline: float):
    """Yields whether to run `cell` (False once the stage budget is spent: recorded as
    skipped); an exception inside is recorded as this cell's error and the stage goes on."""
    if time.monotonic() >= deadline:
      self.write(dict(cell, event="row", status="skipped", reason="stage budget spent"))
      yield False
      return
    self.write(dict(cell, event="start"))
    try:
      yield True
    except Exception as e:  # noqa: BLE001 - one failing cell must not end the suite
      self.write(dict(cell, event="row", status="error", error=f"{type(e).__name__}: {e}"[:2000],
                      traceback=traceback.format_exc()[-4000:]))

  def row(self, rec: dict) -> None:
    self.write(dict(rec, event="row", status="ok"))

  def stage_error(self, e: BaseException) -> None:
    """Records a failure outside any cell (the stage's set-up)."""
    self.write(dict(event="error", status="error", error=f"{type(e).__name__}: {e}"[:2000],
                    traceback=traceback.format_exc()[-4000:]))


def read_rows(path: str) -> list[dict]:
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def collect_rows(stage: str, recs: list[dict], status: str) -> list[dict]:
  """Rows of one stage: finished rows; a started cell without a row is timed out or errored."""
  rows, open_cell = [], None
  for r in recs:
    r = dict(r)  # the caller's records stay as read
    event = r.pop("event")
    if event == "start":
      open_cell = r
    elif event == "row":
      rows.append(r)
      open_cell = None
    elif event == "error":  # a stage-level failure (outside any cell)
      rows.append(dict(open_cell or {"cell": stage}, stage=stage, status="error",
                       error=r["error"], traceback=r.get("traceback")))
      open_cell = None
  if open_cell is not None:
    rows.append(dict(open_cell, status=status if status != "ok" else "error",
                     error="stage ended without a result for this cell"))
  return rows


def _tail(path: str, n: int = 2000) -> str:
  try:
    with open(path, "rb") as f:
      f.seek(0, os.SEEK_END)
      f.seek(max(0, f.tell() - n))
      return f.read().decode(errors="replace")
  except OSError:
    return ""


def run_stages(groups: Sequence[Sequence[str]], *, module: str, spec: dict, out: str,
               grace_s: float = 15.0, in_process: bool = False,
               env_extra: dict | None = None, log: Callable[[str], None] = print,
               row_line: Callable[[dict], str] | None = None) -> tuple[list[dict], list[dict]]:
  """Runs every stage (one child process each) and collects their rows.

  Args:
    groups: stage names; the stages of a group run side by side, the groups in order.
    module: the suite module (it defines ``run_stage(stage, spec, out, rows_path)``).
    spec: the suite spec, with ``budgets`` {stage: seconds}; written to out/<module>_spec.json.
    out: results directory; stage logs go to out/stage_logs/<stage>.log.
    grace_s: a child is killed at its budget plus this.
    in_process: run the stages in this process, one after another (no kill at the budget: the
      stages' own deadlines still skip cells; for the tiny CPU runs of the test suite, where a
      child's start-up would cost more than its stage).
    env_extra: environment variables for the children (e.g. no GPU preallocation for stages
      that share the device).
    log: progress printer.
    row_line: formats one row for the log (None: rows are not printed).

  Returns:
    (summary: one {stage, status, wall_s, budget_s, rows, output_tail} per stage, rows).
  """
  import importlib

  os.makedirs(os.path.join(out, "stage_logs"), exist_ok=True)
  spec_path = os.path.join(out, f"{module.rsplit('.', 1)[-1]}_spec.json")
  with open(spec_path, "w") as f:
    json.dump(spec, f, indent=1)
  env = dict(os.environ, **(env_extra or {}), PYTHONPATH=os.pathsep.join(
      [REPO] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
  summary, rows = [], []
  for group in groups:
    running = {}  # stage -> [process, start, budget, rows_path, log_path, status, end]
    for stage in group:
      rows_path = os.path.join(out, f"rows_{stage.replace(':', '_')}.jsonl")
      log_path = os.path.join(out, "stage_logs", f"{stage.replace(':', '_')}.log")
      if os.path.exists(rows_path):
        os.remove(rows_path)
      budget = float(spec["budgets"][stage])
      log(f"# stage {stage}: budget {budget:.0f} s")
      t0 = time.perf_counter()
      if in_process:
        importlib.import_module(module).run_stage(stage, spec, out, rows_path)
        running[stage] = [None, t0, budget, rows_path, log_path, "ok", time.perf_counter()]
        continue
      cmd = [sys.executable, "-c", "import importlib, json, sys; importlib.import_module("
             "sys.argv[1]).run_stage(sys.argv[2], json.load(open(sys.argv[3])), sys.argv[4], "
             "sys.argv[5])", module, stage, spec_path, out, rows_path]
      with open(log_path, "wb") as lf:
        p = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=lf, stderr=subprocess.STDOUT)
      running[stage] = [p, t0, budget, rows_path, log_path, None, None]
    while any(r[5] is None for r in running.values()):
      time.sleep(0.2)
      now = time.perf_counter()
      for r in running.values():
        p, t0, budget = r[:3]
        if r[5] is not None:
          continue
        rc = p.poll()
        if rc is not None:
          r[5], r[6] = ("ok" if rc == 0 else f"exit {rc}"), now
        elif now > t0 + budget + grace_s:
          p.kill()
          p.wait()
          r[5], r[6] = "timed_out", now
    for stage, (_, t0, budget, rows_path, log_path, status, end) in running.items():
      wall = end - t0
      stage_rows = collect_rows(stage, read_rows(rows_path), status)
      rows += stage_rows
      summary.append(dict(stage=stage, status=status, wall_s=wall, budget_s=budget,
                          rows=len(stage_rows),
                          output_tail=_tail(log_path) if status != "ok" else None))
      log(f"# stage {stage}: {status} in {wall:.1f} s, {len(stage_rows)} row(s)")
      for r in stage_rows if row_line else []:
        log("  " + row_line(r))
  return summary, rows

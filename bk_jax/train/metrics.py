"""The one metric path: every scalar reaches TensorBoard, the results JSON and the console unrenamed.

Producers return namespaced scalars (`train/...` from the step, `perf/...` from the loop,
`bk/...` and `moe/...` from the model, `eval/...` from validation); `MetricWriter.write` sends
them, as they are, to

* the results JSON: one record ``{"step", "epoch", "seq_len", <key>: value, ...}`` appended to
  the named history (``metrics_history`` for training steps, ``eval_history`` for validation),
* TensorBoard: tag ``seq{N}/<key>`` (the per-length prefix is the only change, so that the
  lengths of a multi-length run get their own chart groups and runs at one length overlay),
* the console: a one-line summary of the record.

A vector (``moe/expert_load``) becomes scalars ``<key>/<i>``. Keys under ``control/`` are the
loop's flags and are never written. A feature that is off emits no key, hence no curve.

Event files are written directly into save_dir, so ``tensorboard --logdir runs`` lists each run
under its save_dir name (``quickstart``, not ``quickstart/tensorboard``). They are written in the
calling thread and flushed with every record (`EventFile`): a full disk or a read-only file
system is a `StorageError` at the write that met it, not a crashed background thread.
"""

from __future__ import annotations

import json
import math
import os
import socket
import time
from typing import Any, Callable

import jax
import numpy as np
from tensorboardX import summary as tb_summary
from tensorboardX.proto import event_pb2
from tensorboardX.record_writer import RecordWriter

from bk_jax.runtime.faults import writing
from bk_jax.runtime.memory import memory_usage

#: results-JSON history names written through `MetricWriter.write`.
STREAMS = ("metrics_history", "eval_history")


def flatten_scalars(metrics: dict[str, Any]) -> dict[str, float | bool]:
  """Host values of namespaced metrics: 0-d -> float/bool, vectors -> `<key>/<i>`; drops control/.

  Args:
    metrics: name -> scalar or array (already fetched to the host or device arrays).
  Returns:
    name -> float (bool for boolean flags), in the producer's order.
  """
  out: dict[str, float | bool] = {}
  for k, v in metrics.items():
    if k.startswith("control/"):
      continue
    a = np.asarray(v)
    if a.ndim == 0:
      out[k] = bool(a) if a.dtype == np.bool_ else int(a) if a.dtype.kind in "iu" else float(a)
    else:
      for i, x in enumerate(np.ravel(a)):
        out[f"{k}/{i}"] = float(x)
  return out


def memory_scalars() -> dict[str, float]:
  """This process's memory figures named for what they measure (bk_jax.runtime.memory; GB = 1e9 bytes)."""
  return memory_usage().scalars()


def _hparam_value(v):
  if isinstance(v, (bool, int, float, str)):
    return v
  return json.dumps(v)


def flat_config(d: dict, prefix: str = "") -> dict[str, Any]:
  """A nested config dict as dotted keys with values the hparams plugin accepts."""
  out = {}
  for k, v in d.items():
    if isinstance(v, dict):
      out.update(flat_config(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = _hparam_value(v)
  return out


class EventFile:
  """One TensorBoard event file, written synchronously (tensorboardX's summaries and record
  framing, without its background writer thread).

  Args:
    logdir: the folder; the file is events.out.tfevents.<time>.<host>.<pid> (the pid keeps a
      rerun within the same second from truncating the previous file).
  """

  def __init__(self, logdir: str):
    self.path = os.path.join(logdir, f"events.out.tfevents.{int(time.time())}."
                                     f"{socket.gethostname()}.{os.getpid()}")
    with writing("TensorBoard events", self.path):
      self._records = RecordWriter(self.path)
      self._write(event_pb2.Event(wall_time=time.time(), file_version="brain.Event:2"))

  def _write(self, event) -> None:
    self._records.write(event.SerializeToString())

  def add_summary(self, summary, step: int) -> None:
    self._write(event_pb2.Event(wall_time=time.time(), step=int(step), summary=summary))

  def flush(self) -> None:
    self._records.flush()

  def close(self) -> None:
    self._records.close()


class MetricWriter:
  """Writes namespaced scalars to the results JSON histories, TensorBoard and the console.

  Args:
    save_dir: the run directory (absolute); event files go directly into it.
    tensorboard: write event files (process 0 only).
    console: a `bk_jax.train.console.Console` (prints the one-line summaries).
    meta: callable returning the dict that holds the histories (the trainer's checkpointed
      meta, which a restore replaces).

  Raises (from any method that writes events):
    StorageError: the event file could not be written (disk full, read-only file system).
  """

  def __init__(self, save_dir: str, *, tensorboard: bool, console, meta: Callable[[], dict]):
    self.events = EventFile(save_dir) if tensorboard and jax.process_index() == 0 else None
    self.console = console
    self._meta = meta

  def _emit(self, summaries: list[tuple[Any, int]]) -> None:
    """Appends (summary, step) pairs to the event file and flushes it."""
    if self.events is None:
      return
    with writing("TensorBoard events", self.events.path):
      for summary, step in summaries:
        self.events.add_summary(summary, step)
      self.events.flush()

  def write(self, stream: str, scalars: dict[str, Any], *, step: int, seq_len: int,
            epoch: int | None = None) -> dict:
    """Sends one record everywhere; returns it (as stored in the results JSON)."""
    if stream not in STREAMS:
      raise ValueError(f"unknown metric stream {stream!r}; expected one of {STREAMS}")
    rec = dict(step=int(step), epoch=epoch, seq_len=int(seq_len), **flatten_scalars(scalars))
    self._meta().setdefault(stream, []).append(rec)
    self._emit([(tb_summary.scalar(f"seq{seq_len}/{k}", float(v)), int(step))
                for k, v in rec.items() if k not in ("step", "epoch", "seq_len")])
    if stream == "metrics_history":
      self.console.step_line(rec)
    else:
      self.console.eval_line(rec)
    return rec

  def text(self, tag: str, text: str, step: int) -> None:
    """A text entry (shown in TensorBoard's Text tab), e.g. generated samples."""
    self._emit([(tb_summary.text(tag, text), int(step))])

  def config(self, cfg: dict, run: dict) -> None:
    """The full config and the run section as JSON text at step 0 (tags `config`, `run`)."""
    # Markdown: four-space indentation renders the JSON verbatim in the Text tab.
    md = lambda d: "\n".join("    " + line for line in json.dumps(d, indent=2, default=str).splitlines())
    self._emit([(tb_summary.text("config", md(cfg)), 0), (tb_summary.text("run", md(run)), 0)])

  def hparams(self, cfg: dict, final: dict[str, float], step: int) -> None:
    """The config as hparams with the final metrics (tags `hparams/<name>`), in this run."""
    metrics = {f"hparams/{k}": float(v) for k, v in final.items()
               if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}
    self._emit([(s, 0) for s in tb_summary.hparams(flat_config(cfg), metrics)]
               + [(tb_summary.scalar(k, v), int(step)) for k, v in metrics.items()])

  def close(self) -> None:
    if self.events is not None:
      events, self.events = self.events, None
      with writing("TensorBoard events", events.path):
        events.close()

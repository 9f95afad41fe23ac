"""The one metric path: every figure reaches the results JSON, TensorBoard and the console under
one name, given where it is computed.

The training record is the seed's `LongContextMetrics` (its fields, in its order: the contract of
`metrics_history` in long_context_results.json), followed by the figures the seed does not
define, under namespaces: `train/...` (param norm, skipped steps, MoE aux loss) from the step,
`perf/...` (tokens/s, host RSS, compile time) from the loop, `bk/...` and `moe/...` from the
model, `eval/...` from validation. `MetricWriter.write` sends a record to

* the results JSON: appended to the run state's history (``metrics_history`` for training
  steps, ``eval_history`` for validation),
* TensorBoard: the seed's dashboard tags for its fields (`seq{N}/loss`, `seq{N}/perplexity`,
  `seq{N}/gradient_norm`, `seq{N}/memory_gb`, `seq{N}/spike_count`, `seq{N}/schatten_s1`,
  `seq{N}/schatten_s2`, `seq{N}/condition_number`, the global `learning_rate`; each field's tag is
  declared on the field itself), and `seq{N}/<key>` for everything else,
* the console: a one-line summary of the record.

A vector (``moe/expert_load``) becomes scalars ``<key>/<i>``. Keys under ``control/`` are the
loop's flags and are never written. A feature that is off emits no key, and a seed field that was
not measured (device memory on the CPU, Schatten norms without the monitors) is null in the JSON
and has no curve.

Event files are written directly into save_dir, so ``tensorboard --logdir runs`` lists each run
under its save_dir name (``quickstart``, not ``quickstart/tensorboard``). They are written in the
calling thread and flushed with every record (`EventFile`): a full disk or a read-only file
system is a `StorageError` at the write that met it, not a crashed background thread.
"""

from __future__ import annotations

import dataclasses
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


def _seed(tag: str | None = None, *, per_length: bool = True):
  """A LongContextMetrics field; `tag` its TensorBoard name when the seed's dashboard gives the
  field another one, `per_length=False` for a tag without the seq{N}/ prefix."""
  return dataclasses.field(metadata=dict(tag=tag, per_length=per_length))


@dataclasses.dataclass
class LongContextMetrics:
  """One training record in the seed's layout (GB = 1e9 bytes; seconds; nats per token).

  memory_allocated_gb / memory_reserved_gb are device figures (bytes in use, the allocator's
  pool) on accelerators and None on the CPU, whose figure is host RSS (`perf/host_rss_gb`).
  mean_schatten_s1 / mean_schatten_s2 / max_condition_number are the Birman-Schwinger monitors
  (the model's `bk/schatten_s1`, `bk/schatten_s2` (means over layers) and `bk/condition_number`
  (max over layers)); None without `model.use_birman_schwinger`.
  """

  step: int = _seed()
  epoch: int = _seed()
  seq_len: int = _seed()
  loss: float = _seed()
  perplexity: float = _seed()
  gradient_norm: float = _seed()
  learning_rate: float = _seed(per_length=False)
  step_time: float = _seed()
  memory_allocated_gb: float | None = _seed("memory_gb")
  memory_reserved_gb: float | None = _seed()
  is_nan: bool = _seed()
  is_inf: bool = _seed()
  is_spike: bool = _seed()
  spike_ratio: float = _seed()
  mean_schatten_s1: float | None = _seed("schatten_s1")
  mean_schatten_s2: float | None = _seed("schatten_s2")
  max_condition_number: float | None = _seed("condition_number")

  #: the model's monitor figures that the seed's fields carry (read once, in `record`)
  MONITORS = {"mean_schatten_s1": "bk/schatten_s1", "mean_schatten_s2": "bk/schatten_s2",
              "max_condition_number": "bk/condition_number"}

  @classmethod
  def record(cls, step_metrics: dict[str, Any], *, step: int, epoch: int, seq_len: int,
             step_time: float, memory) -> dict[str, Any]:
    """The metrics_history record of one logged step: the seed's fields, then the rest.

    Args:
      step_metrics: the step's figures on the host (`flatten_scalars` of the step's metrics)
        plus the loop's `perf/...` figures.
      step, epoch, seq_len, step_time: where and how fast.
      memory: a `bk_jax.runtime.memory.MemoryUsage` read at the log step.

    Returns:
      {seed field: value, ..., other key: value, ...}.
    """
    rest = dict(step_metrics)
    seed = cls(step=int(step), epoch=epoch, seq_len=int(seq_len), loss=rest.pop("loss"),
               perplexity=rest.pop("perplexity"), gradient_norm=rest.pop("gradient_norm"),
               learning_rate=rest.pop("learning_rate"), step_time=step_time,
               memory_allocated_gb=memory.device_in_use_gb,
               memory_reserved_gb=memory.device_reserved_gb, is_nan=rest.pop("is_nan"),
               is_inf=rest.pop("is_inf"), is_spike=rest.pop("is_spike"),
               spike_ratio=rest.pop("spike_ratio"),
               **{f: rest.pop(k, None) for f, k in cls.MONITORS.items()})
    return dict(dataclasses.asdict(seed), **rest, **memory.scalars())

  @classmethod
  def tags(cls, record: dict[str, Any]) -> list[tuple[str, float]]:
    """(TensorBoard tag, value) of every scalar of a training record (None: no point)."""
    n, out, fields = record["seq_len"], [], {f.name: f for f in dataclasses.fields(cls)}
    for k, v in record.items():
      if k in ("step", "epoch", "seq_len") or v is None:
        continue
      meta = fields[k].metadata if k in fields else {}
      tag = meta.get("tag") or k
      out.append((f"seq{n}/{tag}" if meta.get("per_length", True) else tag, float(v)))
    return out


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
    history: callable returning the object whose metrics_history / eval_history lists the
      records are appended to (the trainer's `RunState`, which a restore replaces).

  Raises (from any method that writes events):
    StorageError: the event file could not be written (disk full, read-only file system).
  """

  def __init__(self, save_dir: str, *, tensorboard: bool, console, history: Callable[[], Any]):
    self.events = EventFile(save_dir) if tensorboard and jax.process_index() == 0 else None
    self.console = console
    self._history = history

  def _emit(self, summaries: list[tuple[Any, int]]) -> None:
    """Appends (summary, step) pairs to the event file and flushes it."""
    if self.events is None:
      return
    with writing("TensorBoard events", self.events.path):
      for summary, step in summaries:
        self.events.add_summary(summary, step)
      self.events.flush()

  def write_step(self, scalars: dict[str, Any], *, step: int, epoch: int, seq_len: int,
                 step_time: float) -> dict:
    """One logged training step (`LongContextMetrics.record`) everywhere; returns the record."""
    rec = LongContextMetrics.record(flatten_scalars(scalars), step=step, epoch=epoch,
                                    seq_len=seq_len, step_time=step_time, memory=memory_usage())
    self._history().metrics_history.append(rec)
    self._emit([(tb_summary.scalar(tag, v), int(step)) for tag, v in LongContextMetrics.tags(rec)])
    self.console.step_line(rec)
    return rec

  def write_eval(self, scalars: dict[str, Any], *, step: int, epoch: int, seq_len: int) -> dict:
    """One validation (`eval/...` scalars) everywhere; returns the record."""
    rec = dict(step=int(step), epoch=epoch, seq_len=int(seq_len), **flatten_scalars(scalars))
    self._history().eval_history.append(rec)
    self._emit([(tb_summary.scalar(f"seq{seq_len}/{k}", float(v)), int(step))
                for k, v in rec.items() if k not in ("step", "epoch", "seq_len")])
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

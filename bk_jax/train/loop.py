"""The training loop: single length or the multi-length schedule, with checkpoints, recovery,
TensorBoard, the console and the results file. Entry point: `run(config)`.

A `Trainer` owns the train state (device pytree) and the `RunState` (the run's record, saved as
JSON with every checkpoint). A step is a short sequence of named steps (`_train_length`): train,
log, notify, end the epoch, validate, checkpoint, stop if asked. Host syncs happen only on log
steps (the timer waits for the interval's last step), epoch ends and checkpoint steps. Faults end
in one line (docs/guides/faults.md).
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import os
import sys
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from bk_jax import data as bk_data
from bk_jax import distributed
from bk_jax.data.identity import corpus_identity
from bk_jax.models import build_model
from bk_jax.models.kinds import arch_fields
from bk_jax.runtime import faults
from bk_jax.runtime.checkpoint_meta import config_differences
from bk_jax.runtime.devices import select_device
from bk_jax.runtime.errors import StorageError, exit_status
from bk_jax.runtime.interrupts import Interrupted, StopRequest
from bk_jax.runtime.memory import memory_usage
from bk_jax.sharding import (check_model_fits_mesh, data_parallel_size, make_mesh,
                             put_replicated, shard_batch)
from bk_jax.train import attempts, rundir, run_info
from bk_jax.train import results as results_lib
from bk_jax.train.checkpoint import Checkpoints
from bk_jax.train.config_validation import ConfigError, validate_config
from bk_jax.train.console import Console
from bk_jax.train.metrics import MetricWriter
from bk_jax.train.monitors import MonitorState, WindowStats
from bk_jax.train.run_state import RunState, epoch_record, length_summary
from bk_jax.train.schedule import (LengthPlan, continue_plan, format_plan, learning_rate_schedule,
                                   plan_lengths, plan_table)
from bk_jax.train.state import create_sharded_train_state
from bk_jax.train.step import jit_train_step, make_optimizer, make_train_step
from bk_jax.train.timing import StepTimer
from bk_jax.train.validation import Validator


def prepare(config: ml_collections.ConfigDict) -> tuple[ml_collections.ConfigDict, Any, list[LengthPlan]]:
  """Validates, fixes vocab_size from the data and plans the lengths; no compile happens here.

  Raises ConfigError or bk_jax.data.DataError (both ValueErrors with one-line messages).
  """
  validate_config(config)
  distributed.maybe_initialize(config)  # multi-host: before the first JAX computation
  select_device(config.device)
  cfg = ml_collections.ConfigDict(config.to_dict())  # private, unlocked copy
  cfg.model.vocab_size = int(bk_data.vocab_size(cfg.data))
  cfg.model.seed = int(cfg.seed)  # one seed per run: model init and data order
  mesh = make_mesh(cfg.mesh)
  check_model_fits_mesh(cfg.model, cfg.mesh)
  plans = plan_lengths(cfg, process_count=jax.process_count(),
                       batch_divisor=data_parallel_size(mesh) * cfg.train.grad_accum_steps)
  return cfg, mesh, plans


class _Stop(Exception):
  """A stop requested by a signal, acted on at a step boundary."""


@dataclasses.dataclass(frozen=True)
class Step:
  """A step just dispatched: its global number (1-based), length, 1-based epoch, whether it ends
  the epoch, and its metrics (device arrays, fetched when logged)."""

  number: int
  plan: LengthPlan
  epoch: int
  epoch_end: bool
  metrics: Any


class Trainer:
  """Owns the state of one run; `run()` trains every planned length and writes the outputs."""

  def __init__(self, config: ml_collections.ConfigDict, *, on_step: Callable[[int], None] | None = None):
    validate_config(config)
    # before anything is built: a save_dir that cannot be written is one line
    self.save_dir = rundir.check_save_dir(config.save_dir)
    self.cfg, self.mesh, self.plans = prepare(config)
    cfg = self.cfg
    self.on_step = on_step
    # one trainer per run directory: taken before anything (orbax tmp cleanup included) touches it
    self.lock = rundir.RunDirLock(self.save_dir) if jax.process_index() == 0 else None
    try:
      os.makedirs(self.save_dir, exist_ok=True)
      self.console = Console(cfg.logging.console, cfg.logging.progress_bar)
      self.total_steps = sum(p.steps for p in self.plans)
      self.lr_fn = learning_rate_schedule(cfg.train, self.total_steps)
      self.tx = make_optimizer(cfg.train)
      # built directly into its shards (jax.eval_shape + jit out_shardings; no host copy)
      self.graphdef, self.state, self.shardings, self.abstract = create_sharded_train_state(
          lambda: build_model(cfg.model, rngs=nnx.Rngs(cfg.seed)), self.tx, self.mesh)
      self.n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(self.state.params))
      self.ckpt = Checkpoints(self.save_dir, keep=cfg.checkpoint.keep)
      self.started = run_info.utc_now()
      self.data_identity = corpus_identity(cfg.data)
      self.validator = Validator(cfg, self.graphdef, self.state, self.mesh, bk_data)
      self.eval_skipped = {str(n): r for n, r in self.validator.plan_batches(self.plans).items()}
    except BaseException:
      if self.lock is not None:
        self.lock.release()
      raise
    self.memory_kind = memory_usage().kind  # what the headline memory figure measures
    self.run_state = RunState(config=cfg.to_dict(), plan=plan_table(self.plans))
    self.writer = None  # the event file is created once the run is known to continue (`_run`)
    self.iterator = None  # the data iterator of the length in progress
    self.finished_length_data = None  # (iterator, info) of the last length finished here
    self.global_step = 0
    self.stop = StopRequest()
    self.timer = StepTimer()
    self._pending = None  # (Step, step time, extra perf figures) of the log step not yet written
    self._tokens_per_s = 0.0  # of the latest log interval (the progress bar)
    self.last_loss: float | None = None  # the latest logged training loss (progress lines)
    self._first_log_of_length = True
    self._diverged = False
    self._last_eval_step = -1
    self._epoch_started = None  # perf_counter at the current epoch's start (None between lengths)
    self._finished = False  # every length done (the final writes remain)

  # ---------------------------------------------------------------- data and checkpoints
  def _make_iterator(self, index: int):
    p = self.plans[index]
    ds = bk_data.make_train_dataset(self.cfg.data, p.seq_len, p.batch_size, seed=self.cfg.seed,
                                    process_index=jax.process_index(),
                                    process_count=jax.process_count())
    self.run_state.data_iterator = self._iterator_info(index)
    return bk_data.make_iterator(ds, self.cfg.data)

  def _iterator_info(self, index: int) -> dict:
    return run_info.iterator_info(self.cfg, self.plans[index], self.data_identity)

  def _save(self, *, force: bool = False) -> bool:
    """Periodic checkpoint of the current step (asynchronous); False when it exists already."""
    # the epoch's time so far, so that a resumed epoch reports its whole time
    self.run_state.epoch_elapsed_s = (0.0 if self._epoch_started is None
                                      else time.perf_counter() - self._epoch_started)
    return self.ckpt.save(int(self.state.step), self.state, self.iterator, self.run_state.to_json(),
                          force=force)

  def _save_named(self, name: str, data_iter, data_info: dict) -> None:
    meta = dict(self.run_state.to_json(), data_iterator=data_info)
    self.ckpt.save_named(name, self.state, data_iter, meta)

  def _restore(self, step: int) -> None:
    """Restores state, data position and run state from periodic checkpoint `step`."""
    self._pending, self._diverged = None, False  # logs of abandoned steps are dropped
    kept = {k: getattr(self.run_state, k) for k in ("recoveries", "retries", "status")}
    meta = self.ckpt.restore_meta(step)
    diffs = config_differences(self.cfg, meta["config"], arch_fields=arch_fields())
    if diffs:
      raise ConfigError(f"{self.save_dir} holds a run of another model: {'; '.join(diffs)}; use "
                        f"another save_dir or the run's original settings")
    index = meta["position"][0]
    self.iterator = self._make_iterator(index) if index < len(self.plans) else None
    # A run past the end of its own plan saved no data position (nothing was left to read): a
    # rerun that appends lengths reads the next one from its start.
    saved_lengths = len(meta.get("plan") or self.plans)  # checkpoints that predate the plan field
    self.state, meta = self.ckpt.restore(step, self.abstract,
                                         self.iterator if index < saved_lengths else None)
    self.run_state = RunState.from_json(meta)
    if kept["recoveries"] or kept["retries"]:  # a recovery in this process: its record stays
      for k, v in kept.items():
        setattr(self.run_state, k, v)

  def _monitors(self) -> MonitorState:
    return jax.device_get(self.state.monitors)

  # ---------------------------------------------------------------- one length, step by step
  def _train_length(self, index: int) -> str:
    """Trains length `index` from the run's position; "done", "recover" or raises _Stop."""
    plan = self.plans[index]
    self._start_length(index)
    step_fn = None
    while self.run_state.position[1] < plan.steps:
      batch = shard_batch(next(self.iterator), self.mesh)  # per-process slices -> global batch
      if step_fn is None:
        step_fn = self._compile(plan, batch)
      step = self._train_step(step_fn, batch, index)
      self._log(step)
      self._notify(step)
      self._end_epoch(step)
      if self._diverged:  # seen in the log of this or an earlier step
        self.console.close_bar()
        return "recover"
      self._validate_if_due(step)
      self._checkpoint_if_due(step)
      self._stop_if_requested()
    self._flush()
    self.console.close_bar()
    if self._diverged or bool(self._monitors().diverged):
      return "recover"
    if self.validator.active(plan.seq_len) and self._last_eval_step != self.global_step:
      self._validate(plan)  # every length ends with a validation point
    return "done"

  def _start_length(self, index: int) -> None:
    plan, done = self.plans[index], self.run_state.position[1]
    if done == 0:
      self.state = self.state.replace(monitors=put_replicated(MonitorState.zeros(), self.mesh))
      self.run_state.results_by_length.setdefault(str(plan.seq_len), [])  # a recovery keeps them
      self._save()  # the length's start is a good checkpoint for recovery
    self._stop_if_requested()  # a signal while resuming or saving: nothing trained yet
    self.console.print(f"\nEpoch {plan.epoch_of(done)} | Sequence Length: {plan.seq_len}\n" + "-" * 60)
    self.console.start_bar(plan.steps, done, f"N={plan.seq_len}")
    self._diverged = False
    elapsed = self.run_state.epoch_elapsed_s if done > 0 else 0.0
    self._epoch_started = time.perf_counter() - elapsed

  def _compile(self, plan: LengthPlan, batch) -> Callable:
    """The train step compiled ahead of time for `batch`'s shapes; its time is recorded in
    run_state.compile_s (reported as perf/compile_s, apart from the step time)."""
    poison = plan.seq_len in tuple(int(n) for n in self.cfg.debug.nonfinite_grad_seq_lens)
    jitted = jit_train_step(make_train_step(self.graphdef, self.tx, self.lr_fn, self.cfg,
                                            inject_nonfinite_all=poison), self.state, self.mesh)
    t0 = time.perf_counter()
    compiled = jitted.lower(self.state, batch).compile()
    self.run_state.compile_s[str(plan.seq_len)] = time.perf_counter() - t0
    self.timer = StepTimer()  # step time starts after compilation
    self._first_log_of_length = True
    return compiled

  def _train_step(self, step_fn: Callable, batch, index: int) -> Step:
    plan, done = self.plans[index], self.run_state.position[1]
    self.state, metrics = step_fn(self.state, batch)
    self.timer.count()
    self.run_state.position = [index, done + 1]
    self._flush()  # the previous log step, fetched while this step runs
    self.global_step += 1
    return Step(number=self.global_step, plan=plan, epoch=plan.epoch_of(done),
                epoch_end=plan.epoch_end(done), metrics=metrics)

  def _log(self, step: Step) -> None:
    """Every log_interval steps and at epoch ends: the interval's step time (on finished work);
    the record itself is written after the next step's dispatch (`_flush`)."""
    if step.number % self.cfg.train.log_interval and not step.epoch_end:
      return
    step_time = self.timer.lap(step.metrics)  # waits for this step: the interval's finished work
    self._tokens_per_s = (step.plan.batch_size * step.plan.seq_len * jax.process_count()
                          / max(step_time, 1e-9))
    perf = {"perf/tokens_per_s": self._tokens_per_s}
    if self._first_log_of_length:  # this length's compile time, once, beside its first step time
      perf["perf/compile_s"] = self.run_state.compile_s[str(step.plan.seq_len)]
      self._first_log_of_length = False
    self._pending = (step, step_time, perf)

  def _flush(self) -> None:
    """Host-syncs the pending log step (if any) and writes its record."""
    if self._pending is None:
      return
    step, step_time, perf = self._pending
    self._pending = None
    metrics = jax.device_get(step.metrics)
    self.writer.write_step(dict(metrics, **perf, attempt=self.run_state.attempt(step.plan.seq_len)),
                           step=step.number, epoch=step.epoch, seq_len=step.plan.seq_len,
                           step_time=step_time)
    self._diverged = bool(metrics["control/diverged"])
    self.last_loss = float(metrics["loss"])

  def _notify(self, step: Step) -> None:
    self.console.update_bar(1, self._tokens_per_s)
    if self.on_step is not None:
      self.on_step(step.number)

  def _end_epoch(self, step: Step) -> None:
    """At an epoch's end: its results_by_length entry and summary, then the next epoch's header."""
    if not step.epoch_end:
      return
    plan = step.plan
    with self.timer.paused(self.state):
      self._flush()
      r = epoch_record(self._monitors(), epoch=step.epoch, attempt=self.run_state.attempt(plan.seq_len),
                       epoch_time=time.perf_counter() - self._epoch_started)
      self.run_state.results_by_length.setdefault(str(plan.seq_len), []).append(r)
      self.console.epoch_summary(step.epoch, plan.seq_len, r)
      self.state = self.state.replace(
          monitors=self.state.monitors.replace(epoch=put_replicated(WindowStats.zeros(), self.mesh)))
      self._epoch_started = time.perf_counter()
    if self.run_state.position[1] < plan.steps:
      self.console.print(f"\nEpoch {step.epoch + 1} | Sequence Length: {plan.seq_len}\n" + "-" * 60)

  def _validate_if_due(self, step: Step) -> None:
    if self.validator.due(step.number, step.plan.seq_len):
      with self.timer.paused(self.state):
        self._validate(step.plan)

  def _checkpoint_if_due(self, step: Step) -> None:
    if step.number % self.cfg.checkpoint.every_steps:
      return
    with self.timer.paused(self.state):
      self._flush()
      monitors = self._monitors()
      if int(monitors.bad_streak) == 0 and not bool(monitors.diverged):  # never a bad state
        self._save()

  def _stop_if_requested(self) -> None:
    if self.stop.requested:
      raise _Stop()

  def _validate(self, plan: LengthPlan) -> None:
    """eval/* scalars, samples as text, and the best checkpoint of this length (if enabled)."""
    self._flush()
    step, key = self.global_step, str(plan.seq_len)
    scalars = self.validator.evaluate(self.state, plan.seq_len)
    self._last_eval_step = step
    self.writer.write_eval(scalars, step=step, seq_len=plan.seq_len,
                           epoch=plan.epoch_of(max(self.run_state.position[1] - 1, 0)))
    texts = self.validator.samples(self.state, plan.seq_len)
    if texts:
      self.writer.text(f"seq{plan.seq_len}/eval/samples", "\n\n".join(texts), step)
    best, loss = self.run_state.best_eval.get(key), scalars["eval/loss"]
    if self.cfg.checkpoint.keep_best and np.isfinite(loss) and (best is None or loss < best["eval/loss"]):
      name = f"checkpoint_seq{plan.seq_len}_best"
      self.run_state.best_eval[key] = {"step": step, "eval/loss": loss,
                                       "path": os.path.join(self.save_dir, name)}
      self.ckpt.save_named(name, self.state, self.iterator, self.run_state.to_json())

  # ---------------------------------------------------------------- the end of a length
  def _finish_length(self, index: int, status: str) -> None:
    plan = self.plans[index]
    self._epoch_started = None
    length_summary(self.run_state, self._monitors(), plan, status)
    self.run_state.position = [index + 1, 0]
    planned = sum(p.steps for p in self.plans[: index + 1])
    if int(self.state.step) != planned:  # a DIVERGED length: keep the schedule position honest
      self.state = self.state.replace(step=put_replicated(jnp.int32(planned), self.mesh))
    self.global_step = planned
    # Named checkpoints hold the data iterator of the length they finish (at its end position,
    # described by data_iterator); the periodic one holds the next length's (resume).
    done_iter, done_info = self.iterator, self._iterator_info(index)
    self.finished_length_data = (done_iter, done_info)
    self.iterator = self._make_iterator(index + 1) if index + 1 < len(self.plans) else None
    self._save()
    name = f"checkpoint_seq{plan.seq_len}_final"
    self._save_named(name, done_iter, done_info)
    self.console.print(f"Checkpoint saved: {os.path.join(self.save_dir, name)}")

  def _recover(self, index: int) -> bool:
    """Restores the last good checkpoint with a lower rate; False when retries are used up."""
    t, key = self.cfg.train, str(self.plans[index].seq_len)
    self._flush()  # the steps after the detected one belong to this attempt's record too
    tries = self.run_state.attempt(self.plans[index].seq_len) + 1
    self.run_state.retries[key] = tries
    bad_step = self.global_step
    before, kept = self._monitors().length.summary(), attempts.history(self.run_state)
    step = self.ckpt.restore_newest_intact(self._restore, self._warn)
    if step is None:
      raise RuntimeError(f"N={key}: divergence at step {bad_step} and no intact checkpoint to recover from")
    attempts.keep(self.run_state, kept, key, before, self._monitors().length.summary())
    self.global_step = int(self.state.step)
    scale = float(t.recovery_lr_scale) ** min(tries, int(t.max_recoveries))
    self.run_state.recoveries.append(dict(seq_len=int(key), detected_at_step=bad_step,
                                          restored_step=step, attempt=tries, lr_scale=scale,
                                          gave_up=tries > int(t.max_recoveries)))
    if tries > int(t.max_recoveries):
      self.console.print(f"\nN={key}: DIVERGED after {tries - 1} recovery attempt(s); moving on")
      return False
    self.console.print(f"\nN={key}: divergence detected at step {bad_step}; restored step {step}, "
                       f"learning rate x{scale:g} (attempt {tries}/{t.max_recoveries})")
    self.state = self.state.replace(lr_scale=put_replicated(jnp.float32(scale), self.mesh))
    return True

  # ---------------------------------------------------------------- the run
  def _warn(self, msg: str) -> None:
    """A line on stderr (also with the console off): damaged checkpoints and the like."""
    self.console.close_bar()
    print(msg, file=sys.stderr, flush=True)

  def _resume(self) -> None:
    if not self.cfg.checkpoint.resume or self.ckpt.latest_step() is None:
      return
    step = self.ckpt.restore_newest_intact(self._restore, self._warn)
    if step is None:  # every checkpoint was damaged (and moved aside): a fresh start
      self.iterator, self._pending, self._diverged = None, None, False
      return
    self._continue_plan()
    index, done = self.run_state.position
    n = self.plans[index].seq_len if index < len(self.plans) else "-"
    self.console.print(f"Resumed from {self.save_dir} at step {step} (length index {index}, N={n}, "
                       f"step {done} of the length)")

  def _continue_plan(self) -> None:
    """A rerun with another schedule: continue to the new plan, or refuse in one line
    (`schedule.continue_plan`). Extending a finished run reopens its last length at its end:
    the data position comes from that length's final checkpoint."""
    old = self.run_state.plan or plan_table(plan_lengths(  # checkpoints that predate the plan field
        ml_collections.ConfigDict(self.run_state.config), process_count=jax.process_count(),
        batch_divisor=data_parallel_size(self.mesh) * self.cfg.train.grad_accum_steps))
    new = plan_table(self.plans)
    position, reopened = continue_plan(old, new, self.run_state.position, self.run_state.status)
    self.run_state.plan = new
    if old != new:
      self.console.print(f"The plan changed from {format_plan(old)} to {format_plan(new)}: "
                         f"continuing to the new plan (the learning rate follows its schedule)")
    if reopened is None:
      return
    key = str(self.plans[reopened].seq_len)
    for section in (self.run_state.status, self.run_state.length_summary,
                    self.run_state.gradient_statistics):
      section.pop(key, None)  # written again when the extended length finishes
    self.run_state.position = position
    self.iterator = self._make_iterator(reopened)
    self.ckpt.restore_named_data(f"checkpoint_seq{key}_final", self.iterator)

  def run(self) -> dict:
    """Trains every planned length; returns the results dict.

    On any error the checkpointer and TensorBoard are closed and the run directory unlocked;
    library threads' error reports are held meanwhile and dropped when the error is one the
    scripts print in one line: StorageError (a refused write; what the run directory keeps),
    Interrupted (a second Ctrl-C, or a signal before the trainer's handler), ConfigError /
    DataError (bad input).
    """
    with faults.BackgroundErrors() as background:
      try:
        with self.stop.installed():  # from here a signal stops at a step boundary
          return self._run()
      except BaseException as e:
        with contextlib.suppress(Exception):
          self.ckpt.close()
        with contextlib.suppress(Exception):
          if self.writer is not None:
            self.writer.close()
        explained = self._explain(e)
        if explained is None and exit_status(e) is None and not isinstance(e, Interrupted):
          raise  # a bug: the library threads' reports are shown too
        gc.collect()  # orbax's abandoned coroutines report while the reports are still held
        background.drop()
        if explained is None:
          raise
        raise explained from None
      finally:
        if self.lock is not None:
          self.lock.release()

  def _explain(self, e: BaseException) -> BaseException | None:
    """The one-line error that ends the run at fault `e`, or None (`rundir.stopped_by`)."""
    if faults.storage_cause(e) is not None:
      self.ckpt.discard_partial()  # frees what the failed save held before free space is read
    explained = rundir.stopped_by(e, save_dir=self.save_dir, kept=self.ckpt.committed_steps(),
                                  step=int(self.state.step), stop_requested=self.stop.requested,
                                  finished=self._finished)
    if isinstance(explained, StorageError) and jax.process_index() == 0:
      with contextlib.suppress(Exception):  # best effort: the disk may still be full
        results_lib.write_results(self.save_dir, dict(self._results(interrupted=True),
                                                      stopped_by=str(explained)))
    return explained

  def _run(self) -> dict:
    cfg = self.cfg
    paths = run_info.execution_paths(cfg)
    ran = ", ".join(f"{k} {v}" for k, v in paths.items() if k != "kind")
    self.console.print(f"bk-jax training | backend {jax.default_backend()} x{jax.device_count()} | "
                       f"data {cfg.data.dataset} | "
                       f"model {cfg.model.kind} ({self.n_params:,} parameters; {ran}) | lengths "
                       f"{[p.seq_len for p in self.plans]} | {self.total_steps} steps | {self.save_dir}")
    for n, why in self.eval_skipped.items():
      self.console.print(f"N={n}: no validation at this length ({why})")
    self._resume()
    self.global_step = int(self.state.step)
    self.run_section = run_info.run_section(cfg, started=self.started, save_dir=self.save_dir,
                                            data=self.data_identity)
    # created only now: a run refused on resume (another model) leaves no event file behind
    self.writer = MetricWriter(self.save_dir, tensorboard=cfg.logging.tensorboard,
                               console=self.console, history=lambda: self.run_state)
    self.writer.config(cfg.to_dict(), self.run_section)
    try:
      self._train_all()
      interrupted = False
    except _Stop:
      interrupted = True
      self._save_on_stop()
    return self._write_outputs(interrupted)

  def _train_all(self) -> None:
    while self.run_state.position[0] < len(self.plans):
      index = self.run_state.position[0]
      if self.iterator is None:
        self.iterator = self._make_iterator(index)
      outcome = self._train_length(index)
      if outcome == "done":
        self._finish_length(index, "trained")
      elif not self._recover(index):
        self._finish_length(index, "DIVERGED")

  def _save_on_stop(self) -> None:
    self._flush()
    self.console.close_bar()
    step = int(self.state.step)
    saved = self._save(force=True)
    self.ckpt.wait()
    self.console.print(f"\n{self.stop.signal_name}: " + (
        f"checkpoint saved at step {step}" if saved
        else f"stopped at step {step} (its checkpoint was already saved)") + "; rerun to resume")

  def _write_outputs(self, interrupted: bool) -> dict:
    """checkpoint_final (unless interrupted), the hparams, the results file and the tables."""
    cfg = self.cfg
    if not interrupted:
      if self.iterator is None and self.finished_length_data is not None:
        self._save_named("checkpoint_final", *self.finished_length_data)
      else:
        self.ckpt.save_named("checkpoint_final", self.state, self.iterator, self.run_state.to_json())
    self.ckpt.close()
    self._finished = not interrupted
    if self._finished and self.stop.requested:
      self.console.print(f"{self.stop.signal_name} after the last step: writing the results, then exiting")
    self.run_section["finished"] = run_info.utc_now()
    res = self._results(interrupted)
    self.writer.hparams(cfg.to_dict(), results_lib.final_metrics(self.run_state.length_summary),
                        int(self.state.step))
    self.writer.close()
    path = os.path.join(self.save_dir, "long_context_results.json")
    if jax.process_index() == 0:  # multi-host: one writer
      with faults.writing("the results file", path, len(str(res))):
        path = results_lib.write_results(self.save_dir, res)
    if not interrupted:
      self.console.final_tables(self.run_state.length_summary, self.run_state.status,
                                self.run_state.gradient_statistics)
    self.console.print(f"\nResults saved: {path}")
    return res

  def _results(self, interrupted: bool) -> dict:
    r = self.run_state
    return results_lib.build_results(r, args=self.cfg.to_dict(), memory_kind=self.memory_kind, extra=dict(
        schema_version=run_info.SCHEMA_VERSION, units=run_info.UNITS, run=self.run_section,
        save_dir=self.save_dir, eval_history=r.eval_history, best_eval=r.best_eval,
        eval_skipped=self.eval_skipped, length_summary=r.length_summary, recoveries=r.recoveries,
        total_steps=int(self.state.step), planned_steps=self.total_steps, interrupted=interrupted,
        n_params=self.n_params, backend=jax.default_backend()))


def run(config: ml_collections.ConfigDict, *, on_step: Callable[[int], None] | None = None) -> dict:
  """Trains as configured; returns the results dict (`bk_jax.entry.run` also dispatches eval_only).

  Raises ConfigError / bk_jax.data.DataError (one-line ValueErrors) before any compile.
  """
  return Trainer(config, on_step=on_step).run()

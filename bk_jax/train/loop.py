"""The training loop: single length or the multi-length schedule, with checkpoints, recovery,
TensorBoard, the console and the results file. Entry point: `run(config)`.

Host syncs happen only on log steps (the timer waits for the interval's last step), epoch ends
and checkpoint steps; the metrics of a log step are printed after the next step has been
dispatched, so the device keeps running. Faults end in one line (docs/guides/faults.md): SIGTERM
or SIGINT stops at the next step boundary with a checkpoint, a refused write (full disk,
read-only file system) stops with the last intact checkpoint kept (`StorageError`).
"""

from __future__ import annotations

import contextlib
import gc
import os
import signal
import sys
import threading
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from bk_jax import distributed
from bk_jax.runtime import faults
from bk_jax.runtime.checkpoint_meta import config_differences
from bk_jax.runtime.devices import select_device
from bk_jax.runtime.errors import StorageError, exit_status
from bk_jax.runtime.interrupts import Interrupted
from bk_jax.runtime.memory import memory_usage
from bk_jax.runtime.metrics import perplexity
from bk_jax.sharding import (check_model_fits_mesh, data_parallel_size, make_mesh,
                             put_replicated, shard_batch)
from bk_jax.train import attempts, rundir, run_info
from bk_jax.train import results as results_lib
from bk_jax.train.checkpoint import Checkpoints
from bk_jax.train.config_validation import ConfigError, validate_config
from bk_jax.train.console import Console
from bk_jax.train.metrics import MetricWriter, memory_scalars
from bk_jax.train.monitors import MonitorState, WindowStats
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
  from bk_jax import data as bk_data

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
  pass


class Trainer:
  """Owns the state of one run; `run()` trains every planned length and writes the outputs."""

  def __init__(self, config: ml_collections.ConfigDict, *, on_step: Callable[[int], None] | None = None):
    from bk_jax import data as bk_data
    from bk_jax.models import build_model

    validate_config(config)
    # before anything is built: a save_dir that cannot be written is one line
    self.save_dir = rundir.check_save_dir(config.save_dir)
    self.bk_data = bk_data
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
      self.data_identity = self._data_identity()
      self.writer = None  # the event file is created once the run is known to continue (`_run`)
      self.validator = Validator(cfg, self.graphdef, self.state, self.mesh, bk_data)
      self.eval_skipped = {str(n): r for n, r in self.validator.plan_batches(self.plans).items()}
    except BaseException:
      if self.lock is not None:
        self.lock.release()
      raise
    self.memory_kind = memory_usage().kind  # what the headline memory figure measures
    self.meta = dict(position=[0, 0], metrics_history=[], eval_history=[], best_eval={},
                     results_by_length={}, gradient_statistics={}, length_summary={}, status={},
                     recoveries=[], retries={}, compile_s={}, plan=plan_table(self.plans),
                     config=cfg.to_dict())
    self._finished_iter = None  # the data iterator of the last length finished in this process
    self._last_eval_step = -1
    self.iterator = None
    self._pending = None
    self._diverged = False
    self._gstep = 0
    self._stop_signal = threading.Event()
    self._signal_name = "SIGTERM"
    self._t_epoch = None  # perf_counter at the start of the current epoch (None between lengths)
    self._timer = StepTimer()
    self._finished = False  # every length done (the final writes remain)

  # ---------------------------------------------------------------- data and checkpoints
  def _make_iterator(self, li: int):
    p = self.plans[li]
    ds = self.bk_data.make_train_dataset(self.cfg.data, p.seq_len, p.batch_size, seed=self.cfg.seed,
                                         process_index=jax.process_index(),
                                         process_count=jax.process_count())
    self.meta["data_iterator"] = self._iterator_info(li)
    return self.bk_data.make_iterator(ds, self.cfg.data)

  def _iterator_info(self, li: int) -> dict:
    """What rebuilds the pipeline of length li (stored in every checkpoint's meta)."""
    from bk_jax.data.pipeline import _mix_seed  # the seed make_train_dataset gives grain

    p, ident = self.plans[li], self.data_identity
    return dict(split="train", seq_len=p.seq_len, batch_size=p.batch_size, seed=int(self.cfg.seed),
                grain_shuffle_seed=_mix_seed(int(self.cfg.seed)),
                shuffle_seed_formula=run_info.SHUFFLE_SEED_FORMULA,
                process_index=jax.process_index(), process_count=jax.process_count(),
                cache_key=ident.get("cache_key"), cache_entry=ident.get("cache_entry"),
                split_tokens=ident.get("split_tokens", {}).get("train"), dtype=ident.get("dtype"),
                data=self.cfg.data.to_dict())

  def _save(self, *, force: bool = False) -> bool:
    """Periodic checkpoint of the current step (asynchronous); False when it exists already."""
    step = int(self.state.step)
    # the epoch's time so far, so that a resumed epoch reports its whole time
    self.meta["epoch_elapsed_s"] = 0.0 if self._t_epoch is None else time.perf_counter() - self._t_epoch
    return self.ckpt.save(step, self.state, self.iterator, self.meta, force=force)

  def _restore(self, step: int) -> None:
    """Restores state, data position and meta from periodic checkpoint `step`."""
    self._pending, self._diverged = None, False  # logs of abandoned steps are dropped
    from bk_jax.models.kinds import arch_fields

    keep = {k: self.meta[k] for k in ("recoveries", "retries", "status")}
    meta = self.ckpt.restore_meta(step)
    diffs = config_differences(self.cfg, meta["config"], arch_fields=arch_fields())
    if diffs:
      raise ConfigError(f"{self.save_dir} holds a run of another model: {'; '.join(diffs)}; use "
                        f"another save_dir or the run's original settings")
    li = meta["position"][0]
    self.iterator = self._make_iterator(li) if li < len(self.plans) else None
    self.state, self.meta = self.ckpt.restore(step, self.abstract, self.iterator)
    self.meta.setdefault("compile_s", {})
    if keep["recoveries"] or keep["retries"]:
      self.meta.update(keep)

  def _monitors(self) -> MonitorState:
    return jax.device_get(self.state.monitors)

  # ---------------------------------------------------------------- logging
  def _flush(self) -> None:
    """Host-syncs the pending log step (if any) and logs it."""
    if self._pending is None:
      return
    metrics, info = self._pending
    self._pending = None
    m = jax.device_get(metrics)
    perf = {f"perf/{k}": info[k] for k in ("step_time", "tokens_per_s", "compile_s") if k in info}
    scalars = dict(m, **perf, **memory_scalars(),
                   attempt=int(self.meta["retries"].get(str(info["seq_len"]), 0)))
    self.writer.write("metrics_history", scalars, step=info["step"], seq_len=info["seq_len"],
                      epoch=info["epoch"])
    self._diverged = bool(m["control/diverged"])

  # ---------------------------------------------------------------- one length
  def _epoch_result(self, epoch: int, plan: LengthPlan, epoch_time: float) -> None:
    mon = self._monitors()
    ep, ln = mon.epoch.summary(), mon.length.summary()
    avg = ep["avg_loss"]
    # "final loss" has three meanings; each is named: the last logged step's loss
    # (metrics_history, length_summary.last_logged_loss), this epoch's mean train loss and
    # its perplexity (here), and the validation loss (eval_history, length_summary.eval_loss).
    r = dict(epoch_mean_loss=avg, epoch_mean_perplexity=perplexity(avg),
             epoch_time=epoch_time, spike_count=ln["spike_count"],
             grad_norm_mean=ln["grad_norm"]["mean"], grad_norm_std=ln["grad_norm"]["std"],
             epoch=epoch, steps=ep["steps"], epoch_spike_count=ep["spike_count"],
             epoch_grad_norm_mean=ep["grad_norm"]["mean"], epoch_grad_norm_std=ep["grad_norm"]["std"],
             skipped_steps=ep["skipped_steps"], attempt=int(self.meta["retries"].get(str(plan.seq_len), 0)))
    self.meta["results_by_length"].setdefault(str(plan.seq_len), []).append(r)
    self.console.epoch_summary(epoch, plan.seq_len, r)
    self.state = self.state.replace(
        monitors=self.state.monitors.replace(epoch=put_replicated(WindowStats.zeros(), self.mesh)))

  def _compile(self, li: int, batch) -> Callable:
    """The train step of length li compiled ahead of time for `batch`'s shapes; its time goes to
    meta["compile_s"] (reported as perf/compile_s, apart from the step time)."""
    cfg, plan = self.cfg, self.plans[li]
    poison = plan.seq_len in tuple(int(n) for n in cfg.debug.nonfinite_grad_seq_lens)
    step_fn = jit_train_step(make_train_step(self.graphdef, self.tx, self.lr_fn, cfg,
                                             inject_nonfinite_all=poison), self.state, self.mesh)
    t0 = time.perf_counter()
    compiled = step_fn.lower(self.state, batch).compile()
    self.meta["compile_s"][str(plan.seq_len)] = time.perf_counter() - t0
    return compiled

  def _run_length(self, li: int) -> str:
    """Trains length li from meta position; returns "done", "recover" or raises _Stop."""
    cfg, plan = self.cfg, self.plans[li]
    key = str(plan.seq_len)
    sil = self.meta["position"][1]
    if sil == 0:
      self.state = self.state.replace(monitors=put_replicated(MonitorState.zeros(), self.mesh))
      self.meta["results_by_length"].setdefault(key, [])  # a recovery to here keeps earlier attempts
      self._save()  # the length's start is a good checkpoint for recovery
    if self._stop_signal.is_set():  # a signal while resuming or saving: nothing trained yet
      raise _Stop()
    self.console.print(f"\nEpoch {plan.epoch_of(sil)} | Sequence Length: {plan.seq_len}\n" + "-" * 60)
    self.console.start_bar(plan.steps, sil, f"N={plan.seq_len}")
    tokens = plan.batch_size * plan.seq_len * jax.process_count()
    self._diverged = False
    self._t_epoch = time.perf_counter() - (float(self.meta.get("epoch_elapsed_s", 0.0)) if sil > 0 else 0.0)
    step_fn, tps, first_log = None, 0.0, True
    while sil < plan.steps:
      batch = shard_batch(next(self.iterator), self.mesh)  # per-process slices -> global batch
      if step_fn is None:
        step_fn = self._compile(li, batch)
        self._timer = StepTimer()  # step time starts after compilation
      self.state, metrics = step_fn(self.state, batch)
      self._timer.count()
      sil += 1
      self.meta["position"] = [li, sil]
      self._flush()  # previous log step, fetched while this step runs
      gstep = self._gstep = self._gstep + 1
      epoch = plan.epoch_of(sil - 1)
      epoch_end = plan.epoch_end(sil - 1)
      if gstep % cfg.train.log_interval == 0 or epoch_end:
        step_time = self._timer.lap(metrics)  # waits for this step: the interval's finished work
        tps = tokens / max(step_time, 1e-9)
        info = dict(step=gstep, epoch=epoch, seq_len=plan.seq_len, step_time=step_time,
                    tokens_per_s=tps)
        if first_log:  # the compile time of this length, once, beside its first step time
          info["compile_s"], first_log = self.meta["compile_s"][key], False
        self._pending = (metrics, info)
      self.console.update_bar(1, tps)
      if self.on_step is not None:
        self.on_step(gstep)
      if epoch_end:
        with self._timer.paused(self.state):
          self._flush()
          self._epoch_result(epoch, plan, time.perf_counter() - self._t_epoch)
          self._t_epoch = time.perf_counter()
        if sil < plan.steps:
          self.console.print(f"\nEpoch {epoch + 1} | Sequence Length: {plan.seq_len}\n" + "-" * 60)
      if self._diverged:
        self.console.close_bar()
        return "recover"
      if self.validator.due(gstep, plan.seq_len):
        with self._timer.paused(self.state):
          self._validate(plan)
      if gstep % cfg.checkpoint.every_steps == 0:
        with self._timer.paused(self.state):
          self._flush()
          mon = self._monitors()
          if int(mon.bad_streak) == 0 and not bool(mon.diverged):
            self._save()
      if self._stop_signal.is_set():
        raise _Stop()
    self._flush()
    self.console.close_bar()
    if self._diverged or bool(self._monitors().diverged):
      return "recover"
    if self.validator.active(plan.seq_len) and self._last_eval_step != self._gstep:
      self._validate(plan)  # every length ends with a validation point
    return "done"

  def _validate(self, plan: LengthPlan) -> None:
    """eval/* scalars, samples as text, and the best checkpoint of this length (if enabled)."""
    self._flush()
    step, key = self._gstep, str(plan.seq_len)
    sc = self.validator.evaluate(self.state, plan.seq_len)
    self._last_eval_step = step
    self.writer.write("eval_history", sc, step=step, seq_len=plan.seq_len,
                      epoch=plan.epoch_of(max(self.meta["position"][1] - 1, 0)))
    texts = self.validator.samples(self.state, plan.seq_len)
    if texts:
      self.writer.text(f"seq{plan.seq_len}/eval/samples", "\n\n".join(texts), step)
    best = self.meta["best_eval"].get(key)
    loss = sc["eval/loss"]
    if self.cfg.checkpoint.keep_best and np.isfinite(loss) and (best is None or loss < best["eval/loss"]):
      name = f"checkpoint_seq{plan.seq_len}_best"
      self.meta["best_eval"][key] = {"step": step, "eval/loss": loss,
                                     "path": os.path.join(self.save_dir, name)}
      self.ckpt.save_named(name, self.state, self.iterator, self.meta)

  def _finish_length(self, li: int, status: str) -> None:
    plan = self.plans[li]
    key = str(plan.seq_len)
    self._t_epoch = None
    # the final attempt plus every abandoned one (divergence recoveries): true counts
    summ = attempts.combine(self._monitors().length.summary(), self.meta.get("abandoned", {}).get(key))
    self.meta["gradient_statistics"][key] = {k: summ["grad_norm"][k] for k in ("mean", "std", "min", "max")}
    hist = [h for h in self.meta["metrics_history"] if h["seq_len"] == plan.seq_len]
    evals = [h for h in self.meta["eval_history"] if h["seq_len"] == plan.seq_len]
    epochs = self.meta["results_by_length"].get(key) or [{}]
    self.meta["length_summary"][key] = dict(
        last_logged_loss=hist[-1]["train/loss"] if hist else None,
        last_logged_step=hist[-1]["step"] if hist else None,
        epoch_mean_loss=epochs[-1].get("epoch_mean_loss"),
        epoch_mean_perplexity=epochs[-1].get("epoch_mean_perplexity"),
        eval_loss=evals[-1]["eval/loss"] if evals else None,
        eval_perplexity=evals[-1]["eval/perplexity"] if evals else None,
        eval_bits_per_byte=evals[-1].get("eval/bits_per_byte") if evals else None,
        eval_step=evals[-1]["step"] if evals else None,
        best_eval=self.meta["best_eval"].get(key),
        steps=summ["steps"], spike_count=summ["spike_count"], skipped_steps=summ["skipped_steps"],
        nan_steps=summ["nan_steps"], inf_steps=summ["inf_steps"],
        precision_upgrades=summ["precision_upgrades"], grad_norm_count=summ["grad_norm"]["count"],
        batch_size=plan.batch_size, planned_steps=plan.steps,
        # retries counts the give-up too: a DIVERGED length ran `retries` attempts
        attempts=int(self.meta["retries"].get(key, 0)) + (status != "DIVERGED"),
        abandoned_steps=int((self.meta.get("abandoned", {}).get(key) or {}).get("steps", 0)),
        compile_s=self.meta["compile_s"].get(key))
    self.meta["status"][key] = status
    self.meta["position"] = [li + 1, 0]
    planned = sum(p.steps for p in self.plans[: li + 1])
    if int(self.state.step) != planned:  # a DIVERGED length: keep the schedule position honest
      self.state = self.state.replace(step=put_replicated(jnp.int32(planned), self.mesh))
    self._gstep = planned
    # Named checkpoints hold the data iterator of the length they finish (at its end position,
    # described by meta["data_iterator"]); the periodic one holds the next length's (resume).
    done_iter, done_info = self.iterator, self._iterator_info(li)
    self._finished_iter = (done_iter, done_info)
    self.iterator = self._make_iterator(li + 1) if li + 1 < len(self.plans) else None
    self._save()
    self._save_named(f"checkpoint_seq{plan.seq_len}_final", done_iter, done_info)
    self.console.print(f"Checkpoint saved: {os.path.join(self.save_dir, f'checkpoint_seq{plan.seq_len}_final')}")

  def _save_named(self, name: str, data_iter, data_info: dict) -> None:
    meta = dict(self.meta, data_iterator=data_info)
    self.ckpt.save_named(name, self.state, data_iter, meta)

  def _recover(self, li: int) -> bool:
    """Restores the last good checkpoint with a lower rate; False when retries are used up."""
    t, key = self.cfg.train, str(self.plans[li].seq_len)
    self._flush()  # the steps after the detected one belong to this attempt's record too
    tries = self.meta["retries"].get(key, 0) + 1
    self.meta["retries"][key] = tries
    bad_step = self._gstep
    before, kept = self._monitors().length.summary(), attempts.history(self.meta)
    step = self.ckpt.restore_newest_intact(self._restore, self._warn)
    if step is None:
      raise RuntimeError(f"N={key}: divergence at step {bad_step} and no intact checkpoint to recover from")
    attempts.keep(self.meta, kept, key, before, self._monitors().length.summary())
    self._gstep = int(self.state.step)
    scale = float(t.recovery_lr_scale) ** min(tries, int(t.max_recoveries))
    self.meta["recoveries"].append(dict(seq_len=int(key), detected_at_step=bad_step, restored_step=step,
                                        attempt=tries, lr_scale=scale,
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
    li, sil = self.meta["position"]
    n = self.plans[li].seq_len if li < len(self.plans) else "-"
    self.console.print(f"Resumed from {self.save_dir} at step {step} (length index {li}, N={n}, "
                       f"step {sil} of the length)")

  def _continue_plan(self) -> None:
    """A rerun with another schedule: continue to the new plan, or refuse in one line
    (`schedule.continue_plan`). Extending a finished run reopens its last length at its end:
    the data position comes from that length's final checkpoint."""
    old = self.meta.get("plan") or plan_table(plan_lengths(  # checkpoints that predate meta["plan"]
        ml_collections.ConfigDict(self.meta["config"]), process_count=jax.process_count(),
        batch_divisor=data_parallel_size(self.mesh) * self.cfg.train.grad_accum_steps))
    new = plan_table(self.plans)
    position, reopened = continue_plan(old, new, self.meta["position"], self.meta["status"])
    self.meta["plan"] = new
    if old != new:
      self.console.print(f"The plan changed from {format_plan(old)} to {format_plan(new)}: "
                         f"continuing to the new plan (the learning rate follows its schedule)")
    if reopened is None:
      return
    key = str(self.plans[reopened].seq_len)
    for section in ("status", "length_summary", "gradient_statistics"):
      self.meta[section].pop(key, None)  # written again when the extended length finishes
    self.meta["position"] = position
    self.iterator = self._make_iterator(reopened)
    self.ckpt.restore_named_data(f"checkpoint_seq{key}_final", self.iterator)

  def run(self) -> dict:
    """Trains every planned length; returns the results dict.

    On any error the checkpointer and TensorBoard are closed (no half-finished asynchronous
    save) and the run directory is unlocked. Library threads' error reports are held meanwhile
    (`faults.BackgroundErrors`) and dropped when the error is one the scripts print in one line.

    Raises:
      StorageError: a write was refused; the message says what, the space needed and which
        checkpoint the run directory keeps.
      Interrupted: a second SIGINT (Ctrl-C) while stopping.
      ConfigError / DataError: bad input (before any step).
    """
    with faults.BackgroundErrors() as background:
      try:
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
    """The one-line error that ends the run for fault `e` (with what the run directory keeps),
    or None when `e` is not a fault of the machine."""
    kept = self.ckpt.committed_steps()
    keeps = (f"the run directory keeps checkpoint step {kept[-1]}" if kept
             else "no checkpoint was written yet")
    if isinstance(e, Interrupted):
      when = ("again while stopping" if self._stop_signal.is_set()  # a second Ctrl-C
              else "before the first training step")  # before the trainer's handler took over
      return Interrupted(e.signal_name, f"interrupted by {e.signal_name} {when} at step "
                                        f"{int(self.state.step)}; {keeps}; rerun to resume")
    cause = faults.storage_cause(e)
    if cause is None:
      return None
    self.ckpt.discard_partial()  # frees what the failed save held before the free space is read
    write = e.write if isinstance(e, StorageError) and e.write else (
        cause, "the run directory", self.save_dir, None)
    line = faults.describe(*write)  # after the discard: the free space is what is free now
    if self._finished:
      todo = ("training finished and checkpoint_final is saved: free space and rerun to write "
              "the results" if "no space" in cause or "quota" in cause else
              "training finished and checkpoint_final is saved: make the run directory writable "
              "and rerun to write the results")
    else:
      todo = (f"{keeps}: free space and rerun to resume" if "no space" in cause or "quota" in cause
              else f"{keeps}: make it writable and rerun to resume")
    self._write_results_after(line)
    return StorageError(f"{line}; {todo}")

  def _write_results_after(self, reason: str) -> None:
    """Best effort: the results file of a run stopped by a fault (the disk may still be full)."""
    with contextlib.suppress(Exception):
      if jax.process_index() == 0:
        res = self._results(interrupted=True)
        res["stopped_by"] = reason
        results_lib.write_results(self.save_dir, res)

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
    old_handlers = self._install_stop_handler()  # from here a signal stops at a step boundary
    try:
      return self._train_and_write()
    finally:
      self._restore_handlers(old_handlers)

  def _train_and_write(self) -> dict:
    cfg = self.cfg
    self._resume()
    self._gstep = int(self.state.step)
    self.run_section = run_info.run_section(cfg, started=self.started, save_dir=self.save_dir,
                                            data=self.data_identity)
    # created only now: a run refused on resume (another model) leaves no event file behind
    self.writer = MetricWriter(self.save_dir, tensorboard=cfg.logging.tensorboard,
                               console=self.console, meta=lambda: self.meta)
    self.writer.config(cfg.to_dict(), self.run_section)
    interrupted = False
    try:
      while self.meta["position"][0] < len(self.plans):
        li = self.meta["position"][0]
        if self.iterator is None:
          self.iterator = self._make_iterator(li)
        outcome = self._run_length(li)
        if outcome == "done":
          self._finish_length(li, "trained")
        elif not self._recover(li):
          self._finish_length(li, "DIVERGED")
    except _Stop:
      interrupted = True
      self._flush()
      self.console.close_bar()
      step = int(self.state.step)
      saved = self._save(force=True)
      self.ckpt.wait()
      self.console.print(f"\n{self._signal_name}: " + (f"checkpoint saved at step {step}" if saved else
                         f"stopped at step {step} (its checkpoint was already saved)") + "; rerun to resume")
    if not interrupted:
      if self.iterator is None and self._finished_iter is not None:
        self._save_named("checkpoint_final", *self._finished_iter)
      else:
        self.ckpt.save_named("checkpoint_final", self.state, self.iterator, self.meta)
    self.ckpt.close()
    self._finished = not interrupted
    if self._finished and self._stop_signal.is_set():
      self.console.print(f"{self._signal_name} after the last step: writing the results, then exiting")
    self.run_section["finished"] = run_info.utc_now()
    res = self._results(interrupted)
    self.writer.hparams(cfg.to_dict(), self._final_metrics(), int(self.state.step))
    self.writer.close()
    path = os.path.join(self.save_dir, "long_context_results.json")
    if jax.process_index() == 0:  # multi-host: one writer
      with faults.writing("the results file", path, len(str(res))):
        path = results_lib.write_results(self.save_dir, res)
    if not interrupted:
      self.console.final_tables(self.meta["length_summary"], self.meta["status"],
                                self.meta["gradient_statistics"])
    self.console.print(f"\nResults saved: {path}")
    return res

  def _results(self, interrupted: bool) -> dict:
    m = self.meta
    return results_lib.build_results(
        args=self.cfg.to_dict(), results_by_length=m["results_by_length"],
        metrics_history=m["metrics_history"], gradient_statistics=m["gradient_statistics"],
        status=m["status"], memory_kind=self.memory_kind,
        extra=dict(schema_version=run_info.SCHEMA_VERSION, units=run_info.UNITS,
                   run=self.run_section, save_dir=self.save_dir, eval_history=m["eval_history"],
                   best_eval=m["best_eval"], eval_skipped=self.eval_skipped, length_summary=m["length_summary"],
                   recoveries=m["recoveries"],
                   total_steps=int(self.state.step), planned_steps=self.total_steps,
                   interrupted=interrupted, n_params=self.n_params,
                   backend=jax.default_backend()))

  def _data_identity(self) -> dict:
    from bk_jax.data.identity import corpus_identity
    return corpus_identity(self.cfg.data)

  def _final_metrics(self) -> dict:
    """The hparams metrics: the last length's three "final" losses and its last eval."""
    if not self.meta["length_summary"]:
      return {}
    s = list(self.meta["length_summary"].values())[-1]
    keys = ("last_logged_loss", "epoch_mean_loss", "epoch_mean_perplexity", "eval_loss",
            "eval_perplexity", "eval_bits_per_byte")
    return {k: s[k] for k in keys if s.get(k) is not None}

  def _install_stop_handler(self):
    """SIGTERM and SIGINT (Ctrl-C) stop at the next step boundary with a checkpoint (a step
    being compiled or run finishes first); a second Ctrl-C stops at once (`Interrupted`: the
    newest committed checkpoint is kept), a repeated SIGTERM is ignored. Returns the handlers
    it replaced."""
    if threading.current_thread() is not threading.main_thread():
      return None

    def handler(signum, _frame):
      if self._stop_signal.is_set():
        if signum == signal.SIGINT:
          raise Interrupted("SIGINT")
        return
      self._signal_name = signal.Signals(signum).name
      self._stop_signal.set()

    return {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}

  def _restore_handlers(self, old) -> None:
    for s, h in (old or {}).items():
      signal.signal(s, h)


def run(config: ml_collections.ConfigDict, *, on_step: Callable[[int], None] | None = None) -> dict:
  """Trains as configured; returns the results dict (`bk_jax.entry.run` also dispatches eval_only).

  Raises ConfigError / bk_jax.data.DataError (one-line ValueErrors) before any compile.
  """
  return Trainer(config, on_step=on_step).run()

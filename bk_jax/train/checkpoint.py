"""Orbax checkpoints: periodic ones under save_dir/checkpoints/<step>, named ones
(checkpoint_seq{N}_final, checkpoint_final) directly under save_dir.

Every checkpoint is a Composite of
  state: the TrainState (params, optimizer state, step, lr scale, monitors),
  data:  the grain iterator state (data position),
  meta:  JSON: schedule position, config, gradient statistics, spike counts, per-length
         results and status, metrics history, recoveries.

A write the storage refuses (disk full, read-only file system) is a `StorageError` naming the
checkpoint: periodic saves are asynchronous, so their failure surfaces at the next call that
waits for them (the next save, a restore, `close`) and names the step whose save failed. The
partial save is removed (`discard_partial`); committed checkpoints are never touched by it.
"""

from __future__ import annotations

import contextlib
import datetime
import glob
import os
import re
import shutil
from typing import Any, Callable, Iterator

import grain
import jax
import orbax.checkpoint as ocp

from bk_jax.runtime.checkpoint_meta import damage_reason, upgrade_config
from bk_jax.runtime.faults import writing

#: Where damaged periodic checkpoints are moved (never deleted): save_dir/damaged/<step>-<time>.
DAMAGED_DIR = "damaged"


def _save_args(state, data_iter, meta) -> ocp.args.Composite:
  items = dict(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta))
  if data_iter is not None:
    items["data"] = grain.checkpoint.CheckpointSave(data_iter)
  return ocp.args.Composite(**items)


def _restore_args(abstract_state, data_iter) -> ocp.args.Composite:
  items = dict(state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore())
  if data_iter is not None:
    items["data"] = grain.checkpoint.CheckpointRestore(data_iter)
  return ocp.args.Composite(**items)


def save_bytes(state, meta: dict) -> int:
  """About what one checkpoint takes on disk: the state's arrays plus the meta JSON."""
  arrays = sum(int(getattr(x, "nbytes", 0)) for x in jax.tree.leaves(state))
  return arrays + len(str(meta))  # the JSON text is about as long as the repr


def abstract_like(state, shardings) -> Any:
  """ShapeDtypeStructs with the target shardings: restore lands on the current mesh."""
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), state, shardings)


class Checkpoints:
  """Periodic (CheckpointManager, keep-N) and named checkpoints of one run directory."""

  def __init__(self, save_dir: str, *, keep: int):
    self.save_dir = os.path.abspath(save_dir)
    self.manager = ocp.CheckpointManager(
        os.path.join(self.save_dir, "checkpoints"),
        options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True, cleanup_tmp_directories=True),
        item_names=("state", "data", "meta"))
    self._named = ocp.Checkpointer(ocp.CompositeCheckpointHandler())
    self._in_flight: tuple[int, int] | None = None  # (step, bytes) of the asynchronous save
    self.last_save_bytes = 0

  @contextlib.contextmanager
  def _periodic(self) -> Iterator[None]:
    """Manager calls: a refused write of the in-flight save becomes StorageError naming it."""
    step, need = self._in_flight or (None, self.last_save_bytes)
    with writing(f"checkpoint step {step}" if step is not None else "a checkpoint",
                 os.path.join(self.save_dir, "checkpoints"), need):
      yield

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def committed_steps(self) -> list[int]:
    """Periodic checkpoints complete on disk (an unfinished save is a *.orbax-checkpoint-tmp*
    folder, never a bare step number)."""
    d = os.path.join(self.save_dir, "checkpoints")
    return sorted(int(n) for n in os.listdir(d) if n.isdigit()) if os.path.isdir(d) else []

  def discard_partial(self) -> None:
    """Removes the folders of unfinished saves (orbax's *.orbax-checkpoint-tmp*), e.g. after a
    full disk: the space they hold is freed now rather than at the next start."""
    if jax.process_index() != 0:
      return
    for pattern in ("*.orbax-checkpoint-tmp*", os.path.join("checkpoints", "*.orbax-checkpoint-tmp*")):
      for path in glob.glob(os.path.join(self.save_dir, pattern)):
        shutil.rmtree(path, ignore_errors=True)

  def quarantine(self, step: int) -> str:
    """Moves periodic checkpoint `step` to save_dir/damaged/<step>-<UTC time>; returns the path."""
    self.wait()
    src = os.path.join(self.save_dir, "checkpoints", str(step))
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
    dst = os.path.join(self.save_dir, DAMAGED_DIR, f"{step}-{stamp}")
    if jax.process_index() == 0:  # multi-host: every process saw the damage; one moves it
      os.makedirs(os.path.dirname(dst), exist_ok=True)
      shutil.move(src, dst)
    if jax.process_count() > 1:
      ocp.multihost.sync_global_processes(f"bk_jax_quarantine_{step}")
    self.manager.reload()
    return dst

  def restore_newest_intact(self, restore: Callable[[int], Any],
                            warn: Callable[[str], None]) -> int | None:
    """Calls `restore(step)` on the newest periodic checkpoint that restores.

    A checkpoint that fails with damage (see `damage_reason`) is reported in one line through
    `warn`, moved aside with `quarantine` and the next older one is tried. Any other error
    (e.g. another model's shapes) propagates.

    Returns:
      The restored step, or None when there is no (intact) checkpoint.
    """
    while (step := self.latest_step()) is not None:
      try:
        restore(step)
        return step
      except Exception as e:  # noqa: BLE001 - classified below; anything else re-raised
        why = damage_reason(e)
        if why is None:
          raise
        where = self.quarantine(step)
        nxt = self.latest_step()
        warn(f"checkpoint step {step} in {self.save_dir} is damaged: {why}; moved to {where}; "
             + (f"falling back to step {nxt}" if nxt is not None else "no intact checkpoint left, "
                "starting from scratch"))
    return None

  def save(self, step: int, state, data_iter, meta: dict, *, force: bool = False) -> bool:
    """Asynchronous periodic save; returns False when `step` is already saved."""
    if step in self.manager.all_steps():
      return False
    with self._periodic():  # waits for the previous save: its failure surfaces here
      self.manager.wait_until_finished()
    self.last_save_bytes = save_bytes(state, meta)
    self._in_flight = (step, self.last_save_bytes)
    with self._periodic():
      return bool(self.manager.save(step, args=_save_args(state, data_iter, meta), force=force))

  def wait(self) -> None:
    """Blocks until the asynchronous save (if any) is committed."""
    with self._periodic():
      self.manager.wait_until_finished()
    self._in_flight = None

  def save_named(self, name: str, state, data_iter, meta: dict) -> str:
    """Synchronous save to save_dir/<name> (overwrites)."""
    path = os.path.join(self.save_dir, name)
    with writing(f"checkpoint {name}", path, save_bytes(state, meta)):
      self._named.save(path, args=_save_args(state, data_iter, meta), force=True)
    return path

  def restore_named_data(self, name: str, data_iter) -> None:
    """Restores only the data position (in place) of named checkpoint save_dir/<name>."""
    path = os.path.join(self.save_dir, name)
    self._named.restore(path, args=ocp.args.Composite(data=grain.checkpoint.CheckpointRestore(data_iter)))

  def restore(self, step: int, abstract_state, data_iter) -> tuple[Any, dict]:
    """Restores state (onto `abstract_state`'s shardings), data position (in place) and meta."""
    self.wait()
    r = self.manager.restore(step, args=_restore_args(abstract_state, data_iter))
    return r["state"], dict(r["meta"])

  def restore_meta(self, step: int) -> dict:
    self.wait()
    r = self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
    meta = dict(r["meta"])
    if "config" in meta:
      meta["config"] = upgrade_config(meta["config"])  # old key names -> today's
    return meta

  def close(self) -> None:
    self.wait()
    self.manager.close()

"""Orbax checkpoints: periodic ones under save_dir/checkpoints/<step>, named ones
(checkpoint_seq{N}_final, checkpoint_final) directly under save_dir.

Every checkpoint is a Composite of
  state: the TrainState (params, optimizer state, step, lr scale, monitors),
  data:  the grain iterator state (data position),
  meta:  JSON: schedule position, config, gradient statistics, spike counts, per-length
         results and status, metrics history, recoveries.
"""

from __future__ import annotations

import datetime
import json
import os
import re
import shutil
from typing import Any, Callable

import grain
import jax
import orbax.checkpoint as ocp

#: Model fields that fix the parameter shapes/structure: a checkpoint only restores into a model
#: with the same values (used by the trainer's resume and by bk_jax.eval.checkpoint).
ARCH_FIELDS = ("kind", "vocab_size", "d_model", "n_layers", "n_heads", "d_ff", "use_semiseparable",
               "semiseparable_rank", "use_scattering_router", "num_experts", "router", "top_k",
               "scan_layers", "prime_bump", "prime_bump_scale", "param_dtype",
               "mamba.d_state", "mamba.d_conv", "mamba.expand", "transformer.n_heads")
#: Data fields that fix the token ids the model was trained on.
DATA_FIELDS = ("tokenizer",)

#: Where damaged periodic checkpoints are moved (never deleted): save_dir/damaged/<step>-<time>.
DAMAGED_DIR = "damaged"


def _get(cfg, dotted: str):
  node = cfg
  for k in dotted.split("."):
    if node is None or k not in node:
      return None
    node = node[k]
  return node


def config_differences(config, ckpt_config, *, skip: tuple[str, ...] = ()) -> list[str]:
  """["model.d_model=64 (checkpoint 32)", ...]: the ARCH_FIELDS / DATA_FIELDS that differ.

  Args:
    config, ckpt_config: configs (ConfigDict or dict) with `model` and `data` sections.
    skip: model fields not to compare (e.g. "vocab_size" when `config` has not set it yet).
  """
  diffs = []
  for f in ARCH_FIELDS:
    if f in skip:
      continue
    a, b = _get(config["model"], f), _get(ckpt_config["model"], f)
    if a != b:
      diffs.append(f"model.{f}={a!r} (checkpoint {b!r})")
  for f in DATA_FIELDS:
    a, b = _get(config["data"], f), _get(ckpt_config["data"], f)
    if a != b:
      diffs.append(f"data.{f}={a!r} (checkpoint {b!r})")
  return diffs


def _chain(e: BaseException):
  seen = set()
  while e is not None and id(e) not in seen:
    seen.add(id(e))
    yield e
    e = e.__cause__ or e.__context__


def damage_reason(e: BaseException) -> str | None:
  """One line saying how a checkpoint on disk is damaged, or None when `e` is not damage.

  Damage = files that are missing, truncated or unparsable (tensorstore OUT_OF_RANGE /
  DATA_LOSS / NOT_FOUND / Truncated-stream errors, a missing item, bad JSON). A shape or tree
  structure mismatch is not damage: the checkpoint is intact and belongs to another model.
  """
  for x in _chain(e):
    msg = re.sub(r' in OCDBT database at local file "[^"]*"', "", " ".join(str(x).split()))
    if isinstance(x, FileNotFoundError):
      return f"a file is missing ({x.filename or msg[:200]})"
    if isinstance(x, KeyError) and "was not found in the checkpoint" in msg:
      return f"an item is missing: {msg.strip(chr(39) + chr(34))[:200]}"
    if isinstance(x, json.JSONDecodeError):
      return f"unreadable JSON ({msg[:200]})"
    if "Requested byte range" in msg or "OUT_OF_RANGE" in msg:
      return f"an array file is truncated ({msg[:200]})"
    if "Truncated" in msg and "stream" in msg:
      return f"an array file is missing or truncated ({msg[:200]})"
    for code in ("DATA_LOSS", "NOT_FOUND", "FAILED_PRECONDITION: Error reading"):
      if code in msg:
        return f"an array file is missing or corrupt ({msg[:200]})"
  return None


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

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def quarantine(self, step: int) -> str:
    """Moves periodic checkpoint `step` to save_dir/damaged/<step>-<UTC time>; returns the path."""
    self.manager.wait_until_finished()
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
    return bool(self.manager.save(step, args=_save_args(state, data_iter, meta), force=force))

  def save_named(self, name: str, state, data_iter, meta: dict) -> str:
    """Synchronous save to save_dir/<name> (overwrites)."""
    path = os.path.join(self.save_dir, name)
    self._named.save(path, args=_save_args(state, data_iter, meta), force=True)
    return path

  def restore(self, step: int, abstract_state, data_iter) -> tuple[Any, dict]:
    """Restores state (onto `abstract_state`'s shardings), data position (in place) and meta."""
    self.manager.wait_until_finished()
    r = self.manager.restore(step, args=_restore_args(abstract_state, data_iter))
    return r["state"], dict(r["meta"])

  def restore_meta(self, step: int) -> dict:
    self.manager.wait_until_finished()
    r = self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
    return dict(r["meta"])

  def restore_named(self, path: str, abstract_state) -> tuple[Any, dict]:
    r = self._named.restore(path, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()))
    return r["state"], dict(r["meta"])

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()

"""Loading a trainer checkpoint (parameters + its config) for evaluation.

Layout written by `bk_jax.train.checkpoint.Checkpoints` (read-only here):

    save_dir/checkpoints/<step>/{state,data,meta}   periodic (CheckpointManager)
    save_dir/<name>/{state,data,meta}              named: checkpoint_seq{N}_final, checkpoint_final

`state` is the TrainState pytree (params, model_state, opt_state, ...); `meta` is JSON holding
the run's full config under "config". Only params and model_state are restored (orbax partial
restore), so evaluation does not depend on the optimizer that trained the model.
"""

from __future__ import annotations

import dataclasses
import gc
import os
import re
import sys
import time

import jax
import ml_collections
from flax import nnx

from bk_jax.models.config import default_model_config
from bk_jax.runtime import faults
from bk_jax.runtime.checkpoint_meta import (DATA_FIELDS, config_differences,  # noqa: F401
                                            damage_reason, get_dotted, upgrade_config)
from bk_jax.runtime.errors import ConfigError

#: How often a "latest" pick is retried when the trainer's retention removes it while loading.
LATEST_RETRIES = 5


class EvalError(ConfigError):
  """A one-line evaluation error (missing checkpoint, config mismatch, ...); scripts exit 2."""


#: Model fields that choose how the same parameters are computed (the caller's value wins) are
#: declared per kind: bk_jax.models.kinds.runtime_fields().


@dataclasses.dataclass
class LoadedCheckpoint:
  model: nnx.Module
  config: ml_collections.ConfigDict  # the checkpoint's config with the caller's eval/data choices
  meta: dict
  path: str
  name: str  # "checkpoint_final", "checkpoint_seq8192_final", "checkpoints/1200", ...


def _committed(path: str) -> bool:
  return os.path.isdir(os.path.join(path, "state")) and os.path.isdir(os.path.join(path, "meta"))


def list_checkpoints(save_dir: str) -> list[str]:
  """Every committed checkpoint directory of a run: named ones, then periodic ones by step."""
  save_dir = os.path.abspath(save_dir)
  out = []
  if os.path.isdir(save_dir):
    out += [os.path.join(save_dir, d) for d in sorted(os.listdir(save_dir))
            if d.startswith("checkpoint") and _committed(os.path.join(save_dir, d))]
  per = os.path.join(save_dir, "checkpoints")
  if os.path.isdir(per):
    steps = sorted(int(d) for d in os.listdir(per) if d.isdigit() and _committed(os.path.join(per, d)))
    out += [os.path.join(per, str(s)) for s in steps]
  return out


def per_length_checkpoints(save_dir: str) -> list[tuple[int, str]]:
  """[(N, path)] of the checkpoint_seq{N}_final checkpoints of a multi-length run, by N."""
  found = []
  for p in list_checkpoints(save_dir):
    m = re.fullmatch(r"checkpoint_seq(\d+)_final", os.path.basename(p))
    if m:
      found.append((int(m.group(1)), p))
  return sorted(found)


def resolve_checkpoint(save_dir: str, checkpoint: str | int | None = None) -> str:
  """Path of the checkpoint to evaluate.

  Args:
    save_dir: the run directory.
    checkpoint: None or "latest" (the most recently written checkpoint of the run), a name under
      save_dir ("checkpoint_seq8192_final"), a periodic step (1200 or "checkpoints/1200") or a
      path to a checkpoint directory.

  Raises:
    EvalError: nothing to load, with the names that exist.
  """
  save_dir = os.path.abspath(save_dir)
  if checkpoint is None or str(checkpoint) in ("", "latest"):
    cands = list_checkpoints(save_dir)
    if not cands:
      raise EvalError(f"no checkpoint in {save_dir} (expected checkpoint_final, "
                      f"checkpoint_seq<N>_final or checkpoints/<step>); train first or pass "
                      f"--checkpoint_dir")
    return max(cands, key=lambda p: os.path.getmtime(os.path.join(p, "state")))
  c = str(checkpoint)
  tries = [c] if os.path.isabs(c) else [os.path.join(save_dir, c), os.path.join(save_dir, "checkpoints", c),
                                        os.path.abspath(c)]
  for p in tries:
    if _committed(p):
      return os.path.abspath(p)
  have = [os.path.relpath(p, save_dir) for p in list_checkpoints(save_dir)]
  raise EvalError(f"checkpoint {c!r} not found in {save_dir}; available: "
                  f"{', '.join(have) if have else 'none'}")


def check_compatible(config: ml_collections.ConfigDict, ckpt_config: ml_collections.ConfigDict,
                     path: str) -> None:
  """EvalError naming every architecture / tokenizer field where `config` differs."""
  from bk_jax.models.kinds import arch_fields

  # vocab_size: the trainer sets it from the data; checked via the tokenizer and the data
  diffs = config_differences(config, ckpt_config, arch_fields=arch_fields(), skip=("vocab_size",))
  if diffs:
    raise EvalError(f"config does not match checkpoint {path}: {'; '.join(diffs)} (pass the "
                    f"training config, or run scripts/eval_streaming.py --checkpoint_dir without "
                    f"--config to use the checkpoint's own)")


def read_meta(path: str) -> dict:
  import orbax.checkpoint as ocp

  try:
    r = ocp.Checkpointer(ocp.CompositeCheckpointHandler()).restore(
        path, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
  except Exception as e:  # noqa: BLE001 - any orbax failure: one line
    why = damage_reason(e)
    if why is not None:
      raise EvalError(f"checkpoint {path} is damaged: {why}") from None
    raise EvalError(f"cannot read checkpoint metadata at {path}: {type(e).__name__}: "
                    f"{str(e).splitlines()[0] if str(e) else ''}") from None
  meta = dict(r["meta"] or {})
  if "config" not in meta:
    raise EvalError(f"checkpoint {path} has no config in its metadata (not written by bk_jax.train)")
  meta["config"] = upgrade_config(meta["config"])  # old key names -> today's
  return meta


def merged_config(ckpt_config: dict, config: ml_collections.ConfigDict | None) -> ml_collections.ConfigDict:
  """The checkpoint's config, with `config`'s eval section, data section and save_dir when given."""
  from bk_jax.models.kinds import runtime_fields

  cfg = ml_collections.ConfigDict(ckpt_config)
  if config is not None:
    for k in ("eval", "data"):
      if k in config:
        cfg[k] = ml_collections.ConfigDict(config[k].to_dict())
    cfg.save_dir = config.save_dir
    # runtime-only model choices (not part of the parameters) follow the caller
    for f in runtime_fields():
      v = get_dotted(config.model, f)
      if v is not None:
        _set(cfg.model, f, v)
  # runtime fields added after a checkpoint was written take today's defaults
  defaults = default_model_config()
  for f in runtime_fields():
    if get_dotted(cfg.model, f) is None:
      _set(cfg.model, f, get_dotted(defaults, f))
  return cfg


def _set(cfg, dotted: str, value) -> None:
  *par, leaf = dotted.split(".")
  for q in par:
    cfg = cfg[q]
  cfg[leaf] = value


def diverged_lengths(meta: dict) -> list[int]:
  """Training lengths that the run marked DIVERGED (their weights are a restored, earlier state)."""
  return sorted(int(n) for n, st in (meta.get("status") or {}).items() if st == "DIVERGED")


def diverged_warning(ck: LoadedCheckpoint) -> str | None:
  """One line when the checkpoint's run marked lengths DIVERGED (untrained weights must not pass
  as a result unremarked), else None."""
  div = diverged_lengths(ck.meta)
  if not div:
    return None
  return (f"training DIVERGED at N={', '.join(map(str, div))} in this run: {ck.name} holds the "
          f"weights restored from before the divergence, not a model trained there")


def load_checkpoint(save_dir: str, checkpoint: str | int | None = None,
                    config: ml_collections.ConfigDict | None = None) -> LoadedCheckpoint:
  """Builds the checkpoint's model and restores its parameters (onto the default device).

  With checkpoint None / "latest" on a run that is still training, the trainer's retention may
  delete the picked checkpoint between the pick and the load: then the newest one is picked
  again (up to LATEST_RETRIES times, with one line on stderr naming both), so a live run is
  read from a stable checkpoint.

  Args:
    save_dir: run directory (used to resolve `checkpoint`).
    checkpoint: see `resolve_checkpoint`.
    config: the caller's config; when given, its model must match the checkpoint's
      architecture (EvalError otherwise) and its eval/data sections are used.

  Returns:
    LoadedCheckpoint; `.config` is the checkpoint's config merged with the caller's choices.

  Raises:
    EvalError: one line: nothing to load, another architecture, or a damaged checkpoint (naming
      what is missing or truncated).
  """
  return _on_resolved(save_dir, checkpoint, lambda path: _load(save_dir, path, config))


def resolved_meta(save_dir: str, checkpoint: str | int | None = None) -> dict:
  """`read_meta` of `resolve_checkpoint(save_dir, checkpoint)`, safe against a live run's retention."""
  return _on_resolved(save_dir, checkpoint, read_meta)


def fill_missing_fields(config: ml_collections.ConfigDict,
                        defaults: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Adds the fields of `defaults` that `config` lacks, in place; existing values are kept.

  A checkpoint's stored config predates fields added since (e.g. `eval.sub_chunk`); those take
  today's defaults so the scripts can read and override them.

  Args:
    config: a config read from a checkpoint's meta.
    defaults: the reference config (the scripts pass configs/base.py).
  Returns:
    `config`.
  """
  with config.unlocked():
    for key, val in defaults.items():
      if key not in config:
        config[key] = (ml_collections.ConfigDict(val.to_dict())
                       if isinstance(val, ml_collections.ConfigDict) else val)
      elif (isinstance(val, ml_collections.ConfigDict)
            and isinstance(config[key], ml_collections.ConfigDict)):
        fill_missing_fields(config[key], val)
  return config


def checkpoint_config(save_dir: str, checkpoint: str | int | None,
                      defaults: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The run config stored with a checkpoint, completed by `defaults` (`fill_missing_fields`).

  Args:
    save_dir, checkpoint: see `resolve_checkpoint` ("latest" is safe against a live run).
    defaults: the reference config for fields the checkpoint predates (configs/base.py).
  Returns:
    A new ConfigDict.
  """
  meta = resolved_meta(save_dir, checkpoint)
  return fill_missing_fields(ml_collections.ConfigDict(meta["config"]), defaults)


def _on_resolved(save_dir: str, checkpoint, fn):
  """fn(resolved path); for "latest", picks again when the picked checkpoint vanished meanwhile.

  A run that is still training deletes old checkpoints (keep-N); one picked as "latest" may go
  while it loads. One line on stderr then says which checkpoint was used instead. The reports
  of orbax's threads about missing or damaged files are held and dropped once an EvalError has
  explained them (`faults.BackgroundErrors`).
  """
  latest = checkpoint is None or str(checkpoint) in ("", "latest")
  first = None
  for attempt in range(LATEST_RETRIES if latest else 1):
    path = resolve_checkpoint(save_dir, checkpoint)
    with faults.BackgroundErrors() as background:
      try:
        out = fn(path)
      except EvalError:
        gc.collect()  # orbax's abandoned coroutines report while the reports are still held
        background.drop()  # explained: by the error itself, or by the retry's line below
        if not latest or attempt == LATEST_RETRIES - 1:
          raise
        time.sleep(0.5)  # a deletion in progress: let it finish before looking
        if _committed(path):
          raise
        first = first or path  # deleted by the trainer's retention between the pick and the load
        continue
    if first is not None:
      rel = lambda p: os.path.relpath(p, os.path.abspath(save_dir))
      print(f"checkpoint {rel(first)} was replaced while loading (the run is training); using "
            f"{rel(path)}", file=sys.stderr, flush=True)
    return out


def _load(save_dir: str, path: str, config: ml_collections.ConfigDict | None) -> LoadedCheckpoint:
  import orbax.checkpoint as ocp

  from bk_jax.models import build_model

  meta = read_meta(path)
  ckpt_cfg = ml_collections.ConfigDict(meta["config"])
  if config is not None:
    check_compatible(config, ckpt_cfg, path)
  cfg = merged_config(meta["config"], config)
  try:
    model = build_model(cfg.model, rngs=nnx.Rngs(int(cfg.get("seed", 0))))
  except ValueError as e:
    raise EvalError(f"cannot build the model of checkpoint {path}: {e}") from None
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  dev = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  to_abs = lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=dev)
  item = {"params": jax.tree.map(to_abs, params)}
  if jax.tree.leaves(rest):
    item["model_state"] = jax.tree.map(to_abs, rest)
  try:
    r = ocp.Checkpointer(ocp.CompositeCheckpointHandler()).restore(
        path, args=ocp.args.Composite(state=ocp.args.PyTreeRestore(
            item=item, partial_restore=True,
            restore_args=jax.tree.map(lambda _: ocp.ArrayRestoreArgs(sharding=dev), item))))
  except Exception as e:  # noqa: BLE001 - damage, shape/structure mismatch: one line each
    why = damage_reason(e)
    if why is not None:
      raise EvalError(f"checkpoint {path} is damaged: {why}") from None
    msg = " ".join(str(e).split())[:300]
    raise EvalError(f"checkpoint {path} does not match its model ({cfg.model.kind}, d_model="
                    f"{cfg.model.d_model}, n_layers={cfg.model.n_layers}): {type(e).__name__}: "
                    f"{msg}") from None
  restored = r["state"]
  model = nnx.merge(graphdef, restored["params"], restored.get("model_state", rest))
  rel = os.path.relpath(path, os.path.abspath(save_dir))
  return LoadedCheckpoint(model=model, config=cfg, meta=meta, path=path,
                          name=rel if not rel.startswith("..") else path)

"""What makes a checkpoint fit a model, and how a damaged checkpoint is recognised.

Shared by the trainer's resume (bk_jax.train.checkpoint) and evaluation's loader
(bk_jax.eval.loading), which must agree on both.
"""

from __future__ import annotations

import copy
import json
import re

#: Data fields that fix the token ids the model was trained on. (The model fields that fix the
#: parameter shapes are declared per kind by bk_jax.models.kinds.arch_fields(), which the
#: callers pass in: this floor does not import models.)
DATA_FIELDS = ("tokenizer",)

#: Model config keys renamed since checkpoints were first written: old -> new. A checkpoint's
#: stored config is read through `upgrade_config`, so old run directories still load and resume.
RENAMED_MODEL_FIELDS = {"use_scattering_router": "use_moe"}
#: Model config values renamed since then: field -> {old value: new value}.
RENAMED_MODEL_VALUES = {"bk_init": {"seed": "short_memory"}}
#: Model config keys added since then, with the value that builds what older checkpoints hold
#: (the ResNet-BK mixer options: absent = the default "diag" block; the Mamba-2 section: an older
#: checkpoint is never a Mamba-2 model, so its fields take the defaults of
#: `bk_jax.models.config.default_model_config`). Filled in by `upgrade_config`.
ADDED_MODEL_FIELDS = {"bk_mixer": "diag", "bk_head_dim": 8, "bk_key_dim": 0,
                      "selective_shift": False, "selective_coupling": False, "bk_conv": False,
                      "bk_gate": False, "bk_init": "short_memory", "bk_mix_method": "auto",
                      "bk_ward_decay": True, "bk_delta_min_init": 1e-3, "bk_rate_max_init": 1.0,
                      "bk_write": "complement", "bk_decay": "head", "bk_step": "head",
                      "bk_step_threshold": 0.0, "bk_step_penalty": 0.0, "bk_selective_heads": 0,
                      "mamba2": {"d_state": 128, "d_conv": 4, "expand": 2, "headdim": 64,
                                 "ngroups": 1, "chunk": 0}}


def upgrade_config(config: dict) -> dict:
  """A checkpoint's stored config with renamed keys under their current names.

  Args:
    config: the config dict stored in a checkpoint's metadata (not modified).

  Returns:
    A copy whose `model` section uses today's names (`RENAMED_MODEL_FIELDS`; a key stored under
    both names keeps the new one), today's values (`RENAMED_MODEL_VALUES`) and every
    `ADDED_MODEL_FIELDS` key (missing ones take the value that reproduces the stored model).
  """
  model = config.get("model") if isinstance(config, dict) else None
  renamed_value = lambda m: any(m.get(k) in old for k, old in RENAMED_MODEL_VALUES.items())
  if not isinstance(model, dict) or (not any(k in model for k in RENAMED_MODEL_FIELDS)
                                     and all(k in model for k in ADDED_MODEL_FIELDS)
                                     and not renamed_value(model)):
    return config
  model = {**copy.deepcopy(ADDED_MODEL_FIELDS), **model}
  for old, new in RENAMED_MODEL_FIELDS.items():
    if old in model:
      value = model.pop(old)
      model.setdefault(new, value)
  for key, values in RENAMED_MODEL_VALUES.items():
    model[key] = values.get(model[key], model[key])
  return {**config, "model": model}


def get_dotted(cfg, dotted: str):
  """cfg["a"]["b"] for "a.b" (ConfigDict or dict); None where a key is missing."""
  node = cfg
  for k in dotted.split("."):
    if node is None or k not in node:
      return None
    node = node[k]
  return node


def config_differences(config, ckpt_config, *, arch_fields: tuple[str, ...],
                       skip: tuple[str, ...] = ()) -> list[str]:
  """["model.d_model=64 (checkpoint 32)", ...]: the architecture / DATA_FIELDS that differ.

  Args:
    config, ckpt_config: configs (ConfigDict or dict) with `model` and `data` sections.
    arch_fields: dotted model fields that fix the parameters
      (`bk_jax.models.kinds.arch_fields()`).
    skip: model fields not to compare (e.g. "vocab_size" when `config` has not set it yet).

  Returns:
    One "section.field=value (checkpoint value)" string per difference.
  """
  diffs = []
  for f in arch_fields:
    if f in skip:
      continue
    a, b = get_dotted(config["model"], f), get_dotted(ckpt_config["model"], f)
    if a != b:
      diffs.append(f"model.{f}={a!r} (checkpoint {b!r})")
  for f in DATA_FIELDS:
    a, b = get_dotted(config["data"], f), get_dotted(ckpt_config["data"], f)
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

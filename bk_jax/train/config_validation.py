"""Checks a full training config before anything is built or compiled.

`validate_config` raises `ConfigError` (a ValueError) with one line naming the field; the scripts
print it as ``error: ...`` and exit with status 2.
"""

from __future__ import annotations

import math

import ml_collections

from bk_jax.runtime.errors import ConfigError  # noqa: F401 - re-exported for train modules
from bk_jax.runtime.run_config import train_lengths

DEVICES = ("auto", "cpu", "gpu", "cuda", "tpu")


def _need(cond: bool, msg: str) -> None:
  if not cond:
    raise ConfigError(msg)


def validate_config(config: ml_collections.ConfigDict) -> None:
  """Raises ConfigError (one line) when `config` cannot run.

  Covers the train / checkpoint / eval / mesh sections, the model section (through
  `bk_jax.models.validate_model_config`) and the names of the data section; missing
  files are reported by the data layer (`bk_jax.data.DataError`) while planning, still before
  any compile.
  """
  from bk_jax.data.config import SPLITS, TOKENIZERS
  from bk_jax.data.errors import DataError
  from bk_jax.data.sources import check_data_config
  from bk_jax.models import validate_model_config

  t = config.train
  _need(config.device in DEVICES, f"device={config.device!r} is not one of {DEVICES}")
  _need(isinstance(config.seed, int) and config.seed >= 0, f"seed must be an int >= 0, got {config.seed!r}")
  _need(bool(str(config.save_dir)), "save_dir must not be empty")
  try:
    validate_model_config(config.model)
  except ConfigError:
    raise
  except ValueError as e:
    raise ConfigError(str(e)) from None

  d = config.data
  try:
    check_data_config(d)  # a registered name, and the settings that dataset accepts
  except DataError as e:
    raise ConfigError(str(e)) from None
  _need(d.tokenizer in TOKENIZERS, f"data.tokenizer={d.tokenizer!r} is not one of {TOKENIZERS}")
  _need(d.data_limit >= 0, f"data.data_limit must be >= 0, got {d.data_limit}")

  lengths = train_lengths(config)
  _need(len(lengths) > 0, "train.sequence_lengths is empty")
  for n in lengths:
    _need(n >= 2, f"sequence length {n} must be >= 2")
  if t.multi_length:
    _need(len(set(lengths)) == len(lengths), f"train.sequence_lengths has duplicates: {lengths}")
  _need(t.batch_size > 0, f"train.batch_size must be > 0, got {t.batch_size}")
  _need(t.tokens_per_batch >= 0, f"train.tokens_per_batch must be >= 0, got {t.tokens_per_batch}")
  if t.tokens_per_batch > 0:
    for n in lengths:
      _need(t.tokens_per_batch % n == 0,
            f"train.tokens_per_batch={t.tokens_per_batch} is not divisible by sequence length {n}")
  _need(t.grad_accum_steps >= 1, f"train.grad_accum_steps must be >= 1, got {t.grad_accum_steps}")
  for n in lengths:
    bs = max(1, t.tokens_per_batch // n) if t.tokens_per_batch > 0 else t.batch_size
    _need(bs % t.grad_accum_steps == 0,
          f"batch size {bs} at length {n} is not divisible by train.grad_accum_steps={t.grad_accum_steps}")
  _need(t.epochs > 0 or t.steps_per_length > 0,
        f"need train.epochs > 0 or train.steps_per_length > 0 (got {t.epochs}, {t.steps_per_length})")
  _need(t.steps_per_length >= 0, f"train.steps_per_length must be >= 0, got {t.steps_per_length}")
  for name in ("lr", "weight_decay", "grad_clip", "min_lr_ratio", "adam_eps"):
    v = float(t[name])
    _need(math.isfinite(v) and v >= 0, f"train.{name} must be finite and >= 0, got {t[name]}")
  _need(t.lr > 0, f"train.lr must be > 0, got {t.lr}")
  _need(t.min_lr_ratio <= 1, f"train.min_lr_ratio must be <= 1, got {t.min_lr_ratio}")
  _need(0 <= t.adam_b1 < 1 and 0 <= t.adam_b2 < 1, "train.adam_b1 and adam_b2 must be in [0, 1)")
  _need(t.warmup_steps >= 0, f"train.warmup_steps must be >= 0, got {t.warmup_steps}")
  _need(t.log_interval > 0, f"train.log_interval must be > 0, got {t.log_interval}")
  _need(t.spike_factor > 1, f"train.spike_factor must be > 1, got {t.spike_factor}")
  _need(t.divergence_factor > 1, f"train.divergence_factor must be > 1, got {t.divergence_factor}")
  _need(t.divergence_min_loss >= 0,
        f"train.divergence_min_loss must be >= 0, got {t.divergence_min_loss}")
  _need(t.divergence_patience > 0, f"train.divergence_patience must be > 0, got {t.divergence_patience}")
  _need(t.max_recoveries >= 0, f"train.max_recoveries must be >= 0, got {t.max_recoveries}")
  _need(0 < t.recovery_lr_scale <= 1, f"train.recovery_lr_scale must be in (0, 1], got {t.recovery_lr_scale}")

  k = config.checkpoint
  _need(k.every_steps > 0, f"checkpoint.every_steps must be > 0, got {k.every_steps}")
  _need(k.keep > 0, f"checkpoint.keep must be > 0, got {k.keep}")

  e = config.eval
  _need(e.split in SPLITS, f"eval.split={e.split!r} is not one of {SPLITS}")
  _need(e.eval_tokens > 0, f"eval.eval_tokens must be > 0, got {e.eval_tokens}")
  _need(e.chunk_size > 0, f"eval.chunk_size must be > 0, got {e.chunk_size}")
  _need(e.sub_chunk >= 0, f"eval.sub_chunk must be >= 0 (0 = no sub-chunks), got {e.sub_chunk}")
  _need(e.every_steps >= 0, f"eval.every_steps must be >= 0 (0 = no validation), got {e.every_steps}")
  _need(e.batches > 0, f"eval.batches must be > 0, got {e.batches}")
  _need(e.samples >= 0 and e.sample_tokens > 0,
        f"eval.samples must be >= 0 and eval.sample_tokens > 0, got {e.samples}, {e.sample_tokens}")
  _need(e.sample_temperature >= 0, f"eval.sample_temperature must be >= 0, got {e.sample_temperature}")
  _need(not (k.keep_best and e.every_steps == 0),
        "checkpoint.keep_best needs validation: set eval.every_steps > 0")

  m = config.mesh
  for name in ("fsdp", "tensor", "sequence"):
    _need(m[name] >= 1, f"mesh.{name} must be >= 1, got {m[name]}")
  _need(m.data == -1 or m.data >= 1, f"mesh.data must be -1 or >= 1, got {m.data}")
  for n in lengths:
    _need(n % m.sequence == 0, f"sequence length {n} is not divisible by mesh.sequence={m.sequence}")
  for s in config.debug.nonfinite_grad_steps:
    _need(int(s) >= 0, f"debug.nonfinite_grad_steps must be >= 0, got {s}")

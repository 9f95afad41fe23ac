"""Command-line plumbing shared by the scripts: config files, `--config.a.b=value` overrides and
the reference `train_long_context.py` flags (their errors are one-line `ConfigError`s; the
scripts' guard is bk_jax.runtime.errors.one_line_errors)."""

from __future__ import annotations

import argparse
import ast
import importlib.util
import os
import sys
from typing import Sequence

import ml_collections

from bk_jax.train.config_validation import ConfigError

DEFAULT_CONFIG = os.path.join(os.path.dirname(__file__), "..", "..", "configs", "base.py")


def load_config(path: str) -> ml_collections.ConfigDict:
  """Imports a config file and returns its `get_config()`.

  The directory above a `configs/` package is put on sys.path so that `from configs import
  base` works from anywhere.
  """
  path = os.path.abspath(path)
  if not os.path.isfile(path):
    raise ConfigError(f"config file {path} does not exist")
  d = os.path.dirname(path)
  if os.path.isfile(os.path.join(d, "__init__.py")):
    root = os.path.dirname(d)
    if root not in sys.path:
      sys.path.insert(0, root)
  spec = importlib.util.spec_from_file_location(f"_bk_config_{abs(hash(path))}", path)
  mod = importlib.util.module_from_spec(spec)
  try:
    spec.loader.exec_module(mod)
  except SyntaxError as e:
    raise ConfigError(f"config file {e.filename or path}, line {e.lineno}: {e.msg}") from None
  except Exception as e:  # noqa: BLE001 - any error while importing the file: where and what
    raise ConfigError(f"config file {path}{_line_in(e, path)}: {type(e).__name__}: {e}") from None
  if not hasattr(mod, "get_config"):
    raise ConfigError(f"config file {path} has no get_config()")
  try:
    return mod.get_config()
  except Exception as e:  # noqa: BLE001
    raise ConfigError(f"config file {path}{_line_in(e, path)}: get_config() failed: "
                      f"{type(e).__name__}: {e}") from None


def _line_in(e: BaseException, path: str) -> str:
  """", line N" of the innermost traceback frame in `path` (or "" if none)."""
  import traceback

  line = ""
  for fr in traceback.extract_tb(e.__traceback__):
    if os.path.abspath(fr.filename) == path:
      line = f", line {fr.lineno}"
  return line


def _parse_value(text: str, current):
  if isinstance(current, bool):
    low = text.strip().lower()
    if low in ("true", "1", "yes"):
      return True
    if low in ("false", "0", "no"):
      return False
    raise ConfigError(f"expected a boolean, got {text!r}")
  if isinstance(current, str):
    return text
  try:
    value = ast.literal_eval(text)
  except (ValueError, SyntaxError):
    if isinstance(current, (tuple, list)):
      value = tuple(ast.literal_eval(v) for v in text.replace(",", " ").split())
    else:
      raise ConfigError(f"cannot parse {text!r}") from None
  if isinstance(current, (tuple, list)):
    value = tuple(value) if isinstance(value, (tuple, list)) else (value,)
  elif isinstance(current, float) and isinstance(value, int) and not isinstance(value, bool):
    value = float(value)
  return value


def apply_override(config: ml_collections.ConfigDict, dotted: str, text: str) -> None:
  """Sets config.<dotted> from a command-line string, keeping the field's type."""
  *parents, leaf = dotted.split(".")
  node = config
  for p in parents:
    if p not in node or not isinstance(node[p], ml_collections.ConfigDict):
      raise ConfigError(f"unknown config field config.{dotted}")
    node = node[p]
  if leaf not in node:
    raise ConfigError(f"unknown config field config.{dotted}")
  try:
    value = _parse_value(text, node[leaf])
    node[leaf] = value
  except ConfigError as e:
    raise ConfigError(f"config.{dotted}: {e}") from None
  except (TypeError, ValueError) as e:
    raise ConfigError(f"config.{dotted}={text!r}: {e}") from None


def split_config_args(argv: Sequence[str], default_config: str | None = None):
  """Splits `--config FILE` and `--config.a.b=value` / `--config.a.b value` from the rest.

  Returns:
    (config path or default_config, [(dotted field, value text)], remaining args).
  """
  argv = list(argv)
  path, overrides, rest, i = default_config, [], [], 0
  while i < len(argv):
    a = argv[i]
    if a == "--config" or a.startswith("--config="):
      if "=" in a:
        path = a.split("=", 1)[1]
      else:
        if i + 1 >= len(argv):
          raise ConfigError("--config needs a file")
        path, i = argv[i + 1], i + 1
    elif a.startswith("--config."):
      key = a[len("--config."):]
      if "=" in key:
        key, val = key.split("=", 1)
      else:
        if i + 1 >= len(argv):
          raise ConfigError(f"--config.{key} needs a value")
        val, i = argv[i + 1], i + 1
      overrides.append((key, val))
    else:
      rest.append(a)
    i += 1
  return path, overrides, rest


#: --help text for the options `split_config_args` consumes before argparse sees the rest.
CONFIG_HELP_EPILOG = (
    "config options (read by the config loader before the flags above): "
    "--config FILE loads a config file with get_config() (configs/*.py, derived from "
    "configs/base.py); --config.a.b=VALUE (or --config.a.b VALUE) overrides one field of it, "
    "e.g. --config.train.lr=3e-4 --config.train.sequence_lengths=(128,512); an unknown field is "
    "an error (exit status 2).")


def add_config_help(parser: argparse.ArgumentParser, default: str | None = None) -> argparse.ArgumentParser:
  """Documents `--config FILE` and `--config.a.b=VALUE` in `parser`'s --help.

  Both are taken out of argv by `split_config_args` before `parser` runs, so the `--config`
  argument added here is only ever seen by --help (it never receives a value).

  Args:
    parser: the script's parser.
    default: what --config defaults to (shown in the help), or None when it is optional.
  Returns:
    the parser.
  """
  parser.add_argument("--config", metavar="FILE", default=None,
                      help="config file with get_config() (default: %s); "
                           "--config.a.b=VALUE overrides a field (see below)"
                           % (default or "none; see the description"))
  parser.epilog = CONFIG_HELP_EPILOG
  return parser


def parse_config_args(argv: Sequence[str], default_config: str | None = None) -> tuple[ml_collections.ConfigDict, list[str]]:
  """`--config FILE` plus `--config.a.b=value` / `--config.a.b value`; returns (config, rest)."""
  path, overrides, rest = split_config_args(argv, default_config)
  if path is None:
    raise ConfigError("missing --config FILE")
  config = load_config(path)
  for key, val in overrides:
    apply_override(config, key, val)
  return config, rest


# ------------------------------------------------------------------ the reference CLI
#: reference flag -> config field (docs/guides/training.md, "The reference CLI").
REFERENCE_FLAGS = {
    "seq_len": "train.seq_len", "multi_length": "train.multi_length",
    "sequence_lengths": "train.sequence_lengths", "epochs": "train.epochs",
    "batch_size": "train.batch_size", "lr": "train.lr", "weight_decay": "train.weight_decay",
    "grad_clip": "train.grad_clip", "d_model": "model.d_model", "n_layers": "model.n_layers",
    "n_heads": "model.n_heads", "d_ff": "model.d_ff", "dataset": "data.dataset",
    "data_limit": "data.data_limit", "eval_only": "eval.eval_only", "streaming": "eval.streaming",
    "eval_tokens": "eval.eval_tokens", "log_interval": "train.log_interval",
    "save_dir": "save_dir", "device": "device", "seed": "seed",
    "use_birman_schwinger": "model.use_birman_schwinger",
    "use_scattering_router": "model.use_moe",  # the reference name of the MoE switch
    "use_semiseparable": "model.use_semiseparable", "use_wandb": "logging.tensorboard",
}


def reference_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(
      description="Long-context training (reference CLI; unspecified flags keep the values of "
                  "--config, default configs/base.py)")
  add_config_help(p, "configs/base.py")
  add = p.add_argument
  for name in ("d_model", "n_layers", "n_heads", "d_ff", "seq_len", "batch_size", "epochs",
               "eval_tokens", "log_interval", "seed", "data_limit"):
    add(f"--{name}", type=int, default=None)
  for name in ("lr", "weight_decay", "grad_clip"):
    add(f"--{name}", type=float, default=None)
  add("--sequence_lengths", type=int, nargs="+", default=None)
  add("--dataset", type=str, default=None)
  add("--save_dir", type=str, default=None)
  add("--device", type=str, default=None, help="auto | cpu | cuda | gpu | tpu")
  for name in ("multi_length", "eval_only", "streaming", "use_birman_schwinger",
               "use_scattering_router", "use_semiseparable", "use_wandb"):
    add(f"--{name}", action="store_true", default=None)
  return p


def reference_config(argv: Sequence[str], *, model_kind: str | None = None) -> ml_collections.ConfigDict:
  """Config from the reference flags (plus optional --config / --config.a.b overrides).

  Args:
    argv: the command line.
    model_kind: the kind the script trains (scripts/train_mamba_baseline.py: "mamba"), set
      after --config FILE is read and before the flags and --config.a.b overrides; None keeps
      the config's.
  """
  path, overrides, rest = split_config_args(argv, DEFAULT_CONFIG)
  config = load_config(path)
  if model_kind is not None:
    config.model.kind = model_kind
  for key, val in overrides:
    apply_override(config, key, val)
  parser = reference_parser()
  args = parser.parse_args(rest)
  if args.sequence_lengths is not None and not args.multi_length and not config.train.multi_length:
    raise ConfigError(f"--sequence_lengths {' '.join(map(str, args.sequence_lengths))} needs "
                      f"--multi_length (without it only --seq_len is trained)")
  for flag, field in REFERENCE_FLAGS.items():
    v = getattr(args, flag)
    if v is None:
      continue
    if flag == "data_limit":
      v = max(int(v), 0)
    if flag == "use_wandb":
      print(f"--use_wandb: W&B is not used; logging to TensorBoard in "
            f"{config.save_dir if args.save_dir is None else args.save_dir}",
            file=sys.stderr)
    *parents, leaf = field.split(".")
    node = config
    for q in parents:
      node = node[q]
    try:
      node[leaf] = tuple(v) if isinstance(v, list) else v
    except (TypeError, ValueError) as e:
      raise ConfigError(f"--{flag}={v!r}: {e}") from None
  return config

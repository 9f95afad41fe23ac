"""The self-description of a run: the `run` and `units` sections of the results JSON.

Everything needed to say what ran where: library versions, the git commit of the code, device
kind and count, host and CPU count, start/end timestamps (UTC, ISO 8601), the command line and
config file, the data pipeline (cache key, token counts, corpus identity, the shuffle-seed
formula) and the execution paths the model took.
"""

from __future__ import annotations

import datetime
import importlib.metadata
import os
import platform
import shlex
import socket
import subprocess
import sys

import jax

from bk_jax.data.pipeline import shuffle_seed
from bk_jax.runtime.provenance import machine

#: Version of the results-JSON layout (docs/guides/tensorboard.md); bump on any incompatible change.
SCHEMA_VERSION = 3

#: The units of every figure in the results JSON, stated once.
UNITS = {
    "time": "seconds (step_time, epoch_time, perf/compile_s); timestamps are UTC ISO 8601",
    "memory": "GB = 1e9 bytes",
    "loss": "nats per token (natural-log cross entropy, mask-weighted mean)",
    "perplexity": "exp(loss in nats per token)",
    "bits_per_byte": "loss / ln 2 / (UTF-8 source bytes per token of the split)",
    "throughput": "tokens per second (perf/tokens_per_s; all processes)",
    "step": "global optimizer step (batches consumed, skipped non-finite updates included)",
}

_PACKAGES = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "grain", "numpy",
             "ml_collections", "tensorboardX", "tensorboard")

#: How the trainer seeds the grain shuffle of the training split (bk_jax.data.pipeline.shuffle_seed).
SHUFFLE_SEED_FORMULA = ("grain MapDataset.shuffle(seed=(config.seed * 0x9E3779B1 + 0x7F4A7C15) "
                        "mod 2**31) over the windows of the process shard; epoch e reshuffles "
                        "with seed + e (repeat(reseed_each_epoch=True))")


def iterator_info(cfg, plan, data_identity: dict) -> dict:
  """What rebuilds the training pipeline of one length (stored in every checkpoint's meta).

  Args:
    cfg: the run config.
    plan: the length's `schedule.LengthPlan`.
    data_identity: `bk_jax.data.identity.corpus_identity` of cfg.data.
  """
  ident = data_identity
  return dict(split="train", seq_len=plan.seq_len, batch_size=plan.batch_size, seed=int(cfg.seed),
              grain_shuffle_seed=shuffle_seed(int(cfg.seed)), shuffle_seed_formula=SHUFFLE_SEED_FORMULA,
              process_index=jax.process_index(), process_count=jax.process_count(),
              cache_key=ident.get("cache_key"), cache_entry=ident.get("cache_entry"),
              split_tokens=ident.get("split_tokens", {}).get("train"), dtype=ident.get("dtype"),
              data=cfg.data.to_dict())


def utc_now() -> str:
  return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def library_versions() -> dict[str, str | None]:
  out = {"python": platform.python_version()}
  for p in _PACKAGES:
    try:
      out[p] = importlib.metadata.version(p)
    except importlib.metadata.PackageNotFoundError:
      out[p] = None
  return out


def git_commit() -> dict:
  """{"commit": sha or None, "dirty": bool or None} of the checkout holding bk_jax."""
  repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  try:
    sha = subprocess.run(["git", "-C", repo, "rev-parse", "HEAD"], capture_output=True, text=True,
                         timeout=10, check=True).stdout.strip()
    dirty = subprocess.run(["git", "-C", repo, "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    return {"commit": sha, "dirty": bool(dirty)}
  except (OSError, subprocess.SubprocessError):
    return {"commit": None, "dirty": None}


def config_file(argv: list[str]) -> str | None:
  """The `--config FILE` of the command line (absolute), None when there is none."""
  from bk_jax.train.cli import split_config_args

  try:
    path = split_config_args(argv)[0]
  except ValueError:
    return None
  return os.path.abspath(path) if path else None


def execution_paths(cfg) -> dict:
  """Which implementations ran (resolvent method / Mamba scan / attention, dtype) on this backend.

  The Transformer's "auto" attention depends on the batch shape, so it is given per training
  length ("attention_by_length").
  """
  from bk_jax.data import batch_size_for
  from bk_jax.models import execution_paths as paths
  from bk_jax.runtime.run_config import train_lengths

  out = dict(kind=cfg.model.kind, **paths(cfg.model, jax.default_backend()))
  if cfg.model.kind == "transformer":
    t = cfg.train
    lengths = train_lengths(cfg)
    out["attention_by_length"] = {
        str(n): paths(cfg.model, jax.default_backend(), seq_len=int(n),
                      batch=batch_size_for(int(n), t.batch_size, t.tokens_per_batch))["attention"]
        for n in lengths}
  return out


def run_section(cfg, *, started: str, data: dict, save_dir: str) -> dict:
  """The `run` section (the end timestamp is filled in by the trainer at the end)."""
  dev = jax.devices()[0]
  return dict(
      started=started, finished=None, command=shlex.join([sys.executable] + sys.argv),
      machine=machine(),
      argv=list(sys.argv), config_file=config_file(sys.argv[1:]), save_dir=save_dir,
      git=git_commit(), versions=library_versions(), host=socket.gethostname(),
      platform=platform.platform(), cpu_count=os.cpu_count(), backend=jax.default_backend(),
      device_kind=dev.device_kind, device_count=jax.device_count(),
      local_device_count=jax.local_device_count(), process_count=jax.process_count(),
      data=dict(data, shuffle_seed=int(cfg.seed), shuffle_seed_formula=SHUFFLE_SEED_FORMULA),
      execution_paths=execution_paths(cfg))

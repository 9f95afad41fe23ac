"""Tiny, fast configurations for tests and drills (CPU, seconds per run)."""

from __future__ import annotations

import os

import ml_collections
import numpy as np


def write_pattern_corpus(path: str, n_chars: int = 60_000, seed: int = 0) -> str:
  """A learnable synthetic text: random sentences over a 12-word vocabulary (deterministic)."""
  words = ["alpha", "beta", "gamma", "delta", "omega", "sigma", "kappa", "theta", "zeta", "eta",
           "iota", "rho"]
  rng = np.random.default_rng(seed)
  out, n = [], 0
  while n < n_chars:
    s = " ".join(words[i] for i in rng.integers(0, len(words), size=rng.integers(3, 8))) + ".\n"
    out.append(s)
    n += len(s)
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, "w") as f:
    f.write("".join(out))
  return path


def tiny_config(save_dir: str, corpus: str, cache_dir: str, *, lengths=(32,), steps: int = 8,
                batch_size: int = 4) -> ml_collections.ConfigDict:
  """configs/base.py shrunk: a 1-layer d_model-32 ResNet-BK on a text file, `steps` per length."""
  from bk_jax.train.cli import DEFAULT_CONFIG, load_config

  c = load_config(DEFAULT_CONFIG)
  c.save_dir = save_dir
  c.data.dataset, c.data.path, c.data.cache_dir = "text", corpus, cache_dir
  c.data.prefetch_batches = 0
  m = c.model
  m.d_model, m.n_layers, m.n_heads, m.d_ff = 32, 1, 4, 64
  t = c.train
  t.multi_length = len(lengths) > 1
  t.sequence_lengths = tuple(lengths)
  t.seq_len = lengths[0]
  t.batch_size, t.steps_per_length = batch_size, steps
  t.lr, t.warmup_steps, t.log_interval = 3e-3, 2, 1
  c.checkpoint.every_steps = 4
  c.eval.every_steps = 0  # validation off unless a test turns it on (keeps runs to seconds)
  c.logging.progress_bar = False
  return c

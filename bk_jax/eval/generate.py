"""Text generation from a trained checkpoint with the streaming cache (`scripts/generate.py`).

The checkpoint's own config rebuilds the model and its tokenizer (the byte tokenizer needs no
data; word/BPE tokenizers are read from the run's token cache). Sampling: see
`bk_jax.models.sampling` (temperature 0 = greedy; top-k; top-p; a seed makes it repeatable).
"""

from __future__ import annotations

import time

import numpy as np

from bk_jax.eval.loading import EvalError, diverged_warning, load_checkpoint


def tokenizer_of(config):
  """The tokenizer a checkpoint's model was trained with."""
  from bk_jax import data as bk_data

  if config.data.dataset == "synthetic":
    raise EvalError("generation needs a text dataset; this checkpoint was trained on a synthetic task")
  if config.data.tokenizer == "byte":
    return bk_data.ByteTokenizer()
  return bk_data.load_corpus(config.data).tokenizer


def generate_text(save_dir: str, prompt: str, *, max_new_tokens: int = 200, temperature: float = 0.8,
                  top_k: int = 0, top_p: float = 1.0, seed: int = 0, checkpoint=None,
                  num_samples: int = 1) -> dict:
  """Continues `prompt` with the model of a run's checkpoint.

  Args:
    save_dir: the run directory.
    prompt: text (may be empty: generation then starts from the end-of-document token).
    max_new_tokens, temperature, top_k, top_p, seed: the sampling rule.
    checkpoint: which checkpoint (`bk_jax.eval.loading.resolve_checkpoint`; default latest).
    num_samples: independent continuations (one batch).
  Returns:
    dict(checkpoint, prompt, samples (decoded continuations), tokens (their ids),
    prompt_tokens, seconds (wall time including compilation), settings, warning (a line when
    the run DIVERGED: the weights are the restored ones from before it; else None)).
  Raises:
    EvalError: no checkpoint, bad settings (one line).
  """
  from bk_jax.models.sampling import check_sampling_args, generate

  try:
    check_sampling_args(max_new_tokens, temperature, top_k, top_p)
  except ValueError as e:
    raise EvalError(str(e)) from None
  if num_samples < 1:
    raise EvalError(f"num_samples must be >= 1, got {num_samples}")
  ck = load_checkpoint(save_dir, checkpoint)
  tok = tokenizer_of(ck.config)
  ids = np.asarray(tok.encode(prompt), np.int32)
  if ids.size == 0:
    ids = np.asarray([tok.eos_id], np.int32)
  batch = np.broadcast_to(ids, (num_samples, ids.size))
  t0 = time.perf_counter()
  new = np.asarray(generate(ck.model, batch, max_new_tokens=max_new_tokens, temperature=temperature,
                            top_k=top_k, top_p=top_p, seed=seed))
  secs = time.perf_counter() - t0
  return dict(checkpoint=ck.path, warning=diverged_warning(ck), prompt=prompt, prompt_tokens=int(ids.size),
              samples=[tok.decode(row) for row in new], tokens=new.tolist(), seconds=secs,
              settings=dict(max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k,
                            top_p=top_p, seed=seed, num_samples=num_samples))

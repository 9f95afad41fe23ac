"""Periodic validation during training (config.eval.every_steps / eval.batches / eval.samples).

Every `eval.every_steps` global steps (and at the end of every length) the trainer scores the
first `eval.batches` batches of the valid split at the length being trained (the training batch
shape, so one compile per length) and writes

  eval/loss           mask-weighted mean token cross entropy (nats per token),
  eval/perplexity     exp(eval/loss),
  eval/bits_per_byte  eval/loss / ln 2 / (UTF-8 bytes per token of the valid split); text
                      datasets only (a synthetic task has no bytes),
  eval/tokens         tokens scored.

A length whose valid split cannot fill the training batch is scored with the largest halving
of it that fits; one that holds no batch at all is not validated (listed in the results under
`eval_skipped`). The batches are the same at every evaluation (a fixed shuffle of the valid split with the run
seed), so the curve moves only because the model does. With `eval.samples > 0` a few
continuations of valid-split prompts are generated with the streaming cache
(`bk_jax.models.sampling`) and logged as TensorBoard text.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from bk_jax.sharding import (batch_sharding, data_parallel_size, jit_sharded, replicated, shard_batch,
                             state_shardings)
from bk_jax.runtime.metrics import perplexity
from bk_jax.train.step import masked_cross_entropy

#: Tokens of each sample prompt (cut from the start of a valid-split window).
SAMPLE_PROMPT_TOKENS = 32


def make_eval_step(graphdef, state, mesh):
  """jit of `(state, batch) -> (sum of token losses, token count)`, replicated outputs.

  Compiled once per batch shape, i.e. once per training length.
  """

  def eval_step(state, batch):
    model = nnx.merge(graphdef, state.params, state.model_state)
    ce = masked_cross_entropy(model(batch["inputs"]), batch["targets"], batch["mask"])
    n = jnp.sum(batch["mask"].astype(jnp.float32))
    return ce * n, n

  return jit_sharded(eval_step, mesh, in_shardings=(state_shardings(state, mesh), batch_sharding(mesh)),
                     out_shardings=(replicated(mesh), replicated(mesh)))


class Validator:
  """Runs the periodic validation of one training run.

  Args:
    cfg: the run config (prepared: vocab_size set).
    graphdef: the model graphdef of the TrainState's params/model_state.
    state: a TrainState (for shardings only).
    mesh: the device mesh.
    bk_data: the `bk_jax.data` module.
  """

  def __init__(self, cfg: ml_collections.ConfigDict, graphdef, state, mesh, bk_data):
    self.cfg, self.graphdef, self.mesh, self.bk_data = cfg, graphdef, mesh, bk_data
    self.every = int(cfg.eval.every_steps)
    self.batches = int(cfg.eval.batches)
    self.step_fn = make_eval_step(graphdef, state, mesh) if self.every > 0 else None
    self.corpus = None
    self.batch_size: dict[int, int] = {}  # seq_len -> eval batch size (plan_batches)
    if self.every > 0 and cfg.data.dataset != "synthetic":
      self.corpus = bk_data.load_corpus(cfg.data)

  def plan_batches(self, plans) -> dict[int, str]:
    """Picks each length's eval batch size before training; returns {N: reason} for skipped N.

    The training batch size when the valid split fills it, else the largest halving of it
    that the split fills and the data-parallel mesh divides; a length whose valid split holds
    no such batch is not validated (reported, never an error mid-run).
    """
    skipped = {}
    if not self.enabled:
      return skipped
    div = data_parallel_size(self.mesh)
    for p in plans:
      b, err = p.batch_size, None
      while b >= 1:
        if b % div == 0:
          try:
            self.bk_data.make_train_dataset(self.cfg.data, p.seq_len, b, seed=self.cfg.seed,
                                            split="valid", process_index=jax.process_index(),
                                            process_count=jax.process_count(), num_epochs=1)
            break
          except self.bk_data.DataError as e:
            err = str(e)
        b //= 2
      if b >= 1:
        self.batch_size[p.seq_len] = b
      else:
        skipped[p.seq_len] = err or f"no valid batch divisible by the data-parallel size {div}"
    return skipped

  @property
  def enabled(self) -> bool:
    return self.every > 0

  def due(self, step: int, seq_len: int) -> bool:
    return seq_len in self.batch_size and step % self.every == 0

  def active(self, seq_len: int) -> bool:
    return seq_len in self.batch_size

  def _batches(self, seq_len: int, batch_size: int):
    ds = self.bk_data.make_train_dataset(self.cfg.data, seq_len, batch_size, seed=self.cfg.seed,
                                         split="valid", process_index=jax.process_index(),
                                         process_count=jax.process_count(), num_epochs=1)
    it = self.bk_data.make_iterator(ds, self.cfg.data)
    for i, batch in enumerate(it):
      if i >= self.batches:
        break
      yield batch

  def evaluate(self, state, seq_len: int) -> dict[str, Any]:
    """The eval/* scalars of `state` at this length (one host sync at the end)."""
    total, count = jnp.float32(0.0), jnp.float32(0.0)
    for batch in self._batches(seq_len, self.batch_size[seq_len]):
      s, n = self.step_fn(state, shard_batch(batch, self.mesh))
      total, count = total + s, count + n
    total, count = float(total), float(count)
    loss = total / count if count else float("nan")
    out = {"eval/loss": loss, "eval/perplexity": perplexity(loss)}
    if self.corpus is not None:
      out["eval/bits_per_byte"] = loss / math.log(2) / self.corpus.bytes_per_token("valid")
    out["eval/tokens"] = count
    return out

  def samples(self, state, seq_len: int) -> list[str]:
    """`eval.samples` generated continuations of valid-split prompts, as markdown-ready text."""
    from bk_jax.models.sampling import generate

    batch_size = self.batch_size[seq_len]
    n = min(int(self.cfg.eval.samples), batch_size)
    if n <= 0 or self.corpus is None:
      return []
    first = next(iter(self._batches(seq_len, batch_size)), None)
    if first is None:
      return []
    p = min(SAMPLE_PROMPT_TOKENS, seq_len)
    prompt = np.asarray(first["inputs"][:n, :p], np.int32)
    new = generate((self.graphdef, state.params, state.model_state), prompt,
                   max_new_tokens=int(self.cfg.eval.sample_tokens),
                   temperature=float(self.cfg.eval.sample_temperature), seed=int(self.cfg.seed))
    new = np.asarray(jax.device_get(new))
    tok = self.corpus.tokenizer
    return [f"{tok.decode(prompt[i])!r} -> {tok.decode(new[i])!r}" for i in range(n)]

"""Two hand-made language models with the streaming interface of bk_jax models (DESIGN §4):
`model.init_cache(B)`, `model(tokens, cache=cache) -> (logits, cache)` with `cache.pos`, and
`model(tokens) -> logits`. They calibrate the long-context evaluations from both ends.

* `CopyModel`: predicts the token that followed the earliest earlier occurrence of the last
  `context` tokens (an ideal induction head): perfect on passkey retrieval and on MQAR (whose
  keys first occur in the key-value prefix), and exact on text that repeats itself.
* `GuessModel`: the same uniform distribution over a candidate range at every position, with
  seeded random tie-breaking: loss log(#candidates), top-1 accuracy 1 / #candidates (chance).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx


class CopyCache(NamedTuple):
  history: jax.Array  # (B, max_len) int32: every token seen so far (-1 = not yet)
  pos: jax.Array  # int32 scalar: tokens seen


class CopyModel(nnx.Module):
  """Copies the continuation of the earliest earlier match of the current `context`-gram.

  Args:
    vocab_size: V.
    context: tokens matched (1: the last token alone).
    max_len: the longest stream it can hold (its history buffer).
    confidence: logit of the copied token (the others are 0); no match: uniform.
  """

  def __init__(self, vocab_size: int, *, context: int, max_len: int, confidence: float = 30.0):
    self.vocab_size, self.context, self.max_len = vocab_size, context, max_len
    self.confidence = confidence

  def init_cache(self, batch_size: int) -> CopyCache:
    return CopyCache(jnp.full((batch_size, self.max_len), -1, jnp.int32), jnp.zeros((), jnp.int32))

  def __call__(self, tokens: jax.Array, cache: CopyCache | None = None):
    fresh = cache is None
    if fresh:
      cache = self.init_cache(tokens.shape[0])
    hist = jax.lax.dynamic_update_slice(cache.history, tokens.astype(jnp.int32), (0, cache.pos))
    s, k = tokens.shape[1], self.context
    p = cache.pos + jnp.arange(s)  # absolute position of every input token, (s,)
    j = jnp.arange(self.max_len)  # candidate earlier positions
    # match[b, t, j]: hist[j - m] == hist[p_t - m] for m < k, with j - k + 1 >= 0 and j < p_t
    match = (j[None, :] < p[:, None]) & (j[None, :] >= k - 1)
    match = jnp.broadcast_to(match, (tokens.shape[0], s, self.max_len))
    for m in range(k):
      shifted = jnp.roll(hist, m, axis=1)  # shifted[:, j] = hist[:, j - m]
      ctx = jnp.take_along_axis(hist, jnp.broadcast_to(jnp.maximum(p - m, 0), (hist.shape[0], s)),
                                axis=1)
      match &= shifted[:, None, :] == ctx[:, :, None]
    found = match.any(-1)
    first = jnp.argmax(match, axis=-1)  # the earliest match
    nxt = jnp.take_along_axis(hist, jnp.minimum(first + 1, self.max_len - 1), axis=1)
    logits = jax.nn.one_hot(nxt, self.vocab_size) * self.confidence * found[..., None]
    new = CopyCache(hist, cache.pos + s)
    return logits if fresh else (logits, new)


class GuessCache(NamedTuple):
  pos: jax.Array


class GuessModel(nnx.Module):
  """Uniform over ids [low, high) (the rest 30 nats less likely), random top-1 among them.

  Args:
    vocab_size: V.
    low, high: the candidate range (e.g. MQAR's values, or the ten digits).
    seed: the tie-breaking noise (1e-3 nats: invisible in the loss).
  """

  def __init__(self, vocab_size: int, *, low: int = 0, high: int | None = None, seed: int = 0):
    self.vocab_size, self.low = vocab_size, low
    self.high = vocab_size if high is None else high
    self.seed = seed

  def init_cache(self, batch_size: int) -> GuessCache:
    del batch_size
    return GuessCache(jnp.zeros((), jnp.int32))

  def __call__(self, tokens: jax.Array, cache: GuessCache | None = None):
    pos = jnp.zeros((), jnp.int32) if cache is None else cache.pos
    ids = jnp.arange(self.vocab_size)
    base = jnp.where((ids >= self.low) & (ids < self.high), 0.0, -30.0)
    key = jax.random.fold_in(jax.random.key(self.seed), pos)
    noise = 1e-3 * jax.random.uniform(key, tokens.shape + (self.vocab_size,))
    logits = base + noise
    return logits if cache is None else (logits, GuessCache(pos + tokens.shape[1]))

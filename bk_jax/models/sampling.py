"""Autoregressive sampling with the streaming cache: O(1) work and memory per new token.

The prompt is consumed in one call (``model(prompt, cache=model.init_cache(B))``); each new
token is then one call on a (B, 1) chunk that carries the cache (the recurrent state of the
ResNet-BK and Mamba blocks, the windowed KV cache of the Transformer). The per-token step runs
inside one jitted `lax.scan`, so there is no host round trip per token.

Sampling rule for one row of logits (applied in this order):
  * temperature == 0: greedy (argmax of the raw logits; top-k / top-p do not change it),
  * logits / temperature,
  * top_k > 0: keep the k largest logits (ties at the k-th value are kept),
  * top_p < 1: keep the smallest set of most probable tokens whose probability (after the
    temperature and top-k) sums to >= top_p (the most probable token is always kept),
  * draw from the softmax of what is kept.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx


def filter_logits(logits: jax.Array, *, temperature: float, top_k: int = 0,
                  top_p: float = 1.0) -> jax.Array:
  """Scaled logits with the tokens outside top-k / top-p set to -inf.

  Args:
    logits: (..., V) float.
    temperature: > 0.
    top_k: 0 keeps every token.
    top_p: in (0, 1]; 1 keeps every token.
  Returns:
    (..., V) float32.
  """
  x = logits.astype(jnp.float32) / temperature
  neg = jnp.float32(-jnp.inf)
  if top_k and top_k < x.shape[-1]:
    kth = jax.lax.top_k(x, int(top_k))[0][..., -1:]
    x = jnp.where(x < kth, neg, x)
  if top_p < 1.0:
    srt = jnp.sort(x, axis=-1)[..., ::-1]
    p = jax.nn.softmax(srt, axis=-1)
    before = jnp.cumsum(p, axis=-1) - p  # mass strictly above each sorted token
    keep = before < top_p  # the first token always has before == 0
    thresh = jnp.min(jnp.where(keep, srt, jnp.inf), axis=-1, keepdims=True)
    x = jnp.where(x < thresh, neg, x)
  return x


def sample_logits(key: jax.Array, logits: jax.Array, *, temperature: float, top_k: int = 0,
                  top_p: float = 1.0) -> jax.Array:
  """One token per row of `logits` (..., V) -> int32 (...); see the module docstring."""
  if temperature == 0:
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)
  x = filter_logits(logits, temperature=temperature, top_k=top_k, top_p=top_p)
  return jax.random.categorical(key, x, axis=-1).astype(jnp.int32)


def check_sampling_args(max_new_tokens: int, temperature: float, top_k: int, top_p: float) -> None:
  """ValueError (one line) for arguments `generate` cannot honour."""
  if max_new_tokens < 1:
    raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
  if not temperature >= 0:
    raise ValueError(f"temperature must be >= 0, got {temperature}")
  if top_k < 0:
    raise ValueError(f"top_k must be >= 0 (0 = off), got {top_k}")
  if not 0 < top_p <= 1:
    raise ValueError(f"top_p must be in (0, 1], got {top_p}")


@functools.partial(jax.jit, static_argnames=("graphdef", "max_new_tokens", "temperature", "top_k",
                                             "top_p"))
def _generate(graphdef, states, prompt, key, *, max_new_tokens, temperature, top_k, top_p):
  model = nnx.merge(graphdef, *states)
  logits, cache = model(prompt, cache=model.init_cache(prompt.shape[0]))  # the whole prompt

  def step(carry, k):
    last, cache = carry
    tok = sample_logits(k, last, temperature=temperature, top_k=top_k, top_p=top_p)
    # Built at this scan body's trace level: the model's own NNX transforms (nnx.remat,
    # nnx.scan over stacked layers) refuse Variables of the outer jit trace, so merge fresh
    # copies (trace-time only; nothing is copied at run time).
    m = nnx.merge(graphdef, *states, copy=True)
    logits, cache = m(tok[:, None], cache=cache)  # one token, O(1) in the position
    return (logits[:, -1], cache), tok

  keys = jax.random.split(key, max_new_tokens)
  _, toks = jax.lax.scan(step, (logits[:, -1], cache), keys)
  return toks.T


def generate(model_or_split: Any, prompt: jax.Array, *, max_new_tokens: int,
             temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
             seed: int = 0) -> jax.Array:
  """Continues each row of `prompt` by `max_new_tokens` sampled tokens.

  Args:
    model_or_split: a LanguageModel, or ``(graphdef, *states)`` from ``nnx.split`` (e.g. the
      trainer's ``(graphdef, params, model_state)``).
    prompt: int32 (B, P), P >= 1.
    max_new_tokens: tokens to generate per row.
    temperature, top_k, top_p: the sampling rule (module docstring); temperature 0 is greedy.
    seed: PRNG seed; the same seed gives the same tokens.
  Returns:
    int32 (B, max_new_tokens): the new tokens only.
  Raises:
    ValueError: bad arguments or an empty prompt.
  """
  check_sampling_args(max_new_tokens, temperature, top_k, top_p)
  prompt = jnp.asarray(prompt, jnp.int32)
  if prompt.ndim != 2 or prompt.shape[1] < 1:
    raise ValueError(f"prompt must be (batch, length >= 1) token ids, got shape {prompt.shape}")
  if isinstance(model_or_split, tuple):
    graphdef, *states = model_or_split
  else:
    graphdef, *states = nnx.split(model_or_split)
  return _generate(graphdef, tuple(states), prompt, jax.random.key(seed), max_new_tokens=int(max_new_tokens),
                   temperature=float(temperature), top_k=int(top_k), top_p=float(top_p))

"""A memory-bounded sequential scan: lax.scan over jax.checkpoint-ed chunks.

Reverse-mode autodiff of a plain lax.scan keeps every step's residuals (O(N) of them). Here the
outer scan only keeps the carry at chunk boundaries (O(N / chunk)); each chunk's residuals are
recomputed during the backward pass and live only while that chunk is differentiated.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
from jax import lax


def checkpointed_scan(
    step: Callable[[Any, Any], tuple[Any, Any]],
    carry: Any,
    xs: Any,
    *,
    chunk: int,
    unroll: int = 8,
) -> tuple[Any, Any]:
  """lax.scan(step, carry, xs) with per-chunk rematerialisation.

  Args:
    step: (carry, x_t) -> (carry, y_t), as for lax.scan.
    carry: initial carry pytree.
    xs: pytree of arrays scanned along axis 0 (length N, any N >= 1).
    chunk: steps per checkpointed chunk. N need not be a multiple: the tail is padded by
      repeating the last input (so the padded steps compute finite values) and the carry is
      frozen on padded steps, so results equal the unpadded scan exactly.
    unroll: unroll factor of the inner scan.

  Returns:
    (final carry, ys) with ys stacked along axis 0, length N.
  """
  n = jax.tree.leaves(xs)[0].shape[0]
  chunk = max(1, min(chunk, n))
  n_chunks = -(-n // chunk)
  pad = n_chunks * chunk - n

  def pad_and_split(x):
    if pad:
      x = jnp.concatenate([x, jnp.repeat(x[-1:], pad, axis=0)], axis=0)
    return x.reshape((n_chunks, chunk) + x.shape[1:])

  xs_c = jax.tree.map(pad_and_split, xs)
  valid = (jnp.arange(n_chunks * chunk) < n).reshape(n_chunks, chunk)

  def masked_step(c, inp):
    x, ok = inp
    new_c, y = step(c, x)
    if pad:  # freeze the carry on padded steps (static: no cost when N divides evenly)
      new_c = jax.tree.map(lambda new, old: jnp.where(ok, new, old), new_c, c)
    return new_c, y

  @jax.checkpoint
  def run_chunk(c, inp):
    return lax.scan(masked_step, c, inp, unroll=unroll)

  carry, ys = lax.scan(run_chunk, carry, (xs_c, valid))
  ys = jax.tree.map(lambda y: y.reshape((n_chunks * chunk,) + y.shape[2:])[:n], ys)
  return carry, ys

"""Memory-bounded scans: lax.scan over jax.checkpoint-ed chunks, and the platform rule.

Reverse-mode autodiff of a plain lax.scan keeps every step's residuals (O(N) of them). Here the
outer scan only keeps the carry at chunk boundaries (O(N / chunk)); each chunk's residuals are
recomputed during the backward pass and live only while that chunk is differentiated.

`checkpointed_chunks` is the one chunking mechanism: the caller's `chunk_fn` sees a whole chunk
at once (so it may build large per-chunk tensors, e.g. Mamba's (chunk, B, D, S) transition
terms, and contract them away before returning). `checkpointed_scan` is `checkpointed_chunks`
with a per-step `lax.scan` as the chunk function.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
from jax import lax


def prefers_parallel(platform: str | None = None) -> bool:
  """Whether log-depth (associative) scans should be the default on `platform`.

  True on accelerators (GPU/TPU: a sequential recurrence leaves them idle, 40-170x slower
  measured on an H200), False on the CPU (where the sequential recurrence is fastest). This is
  the one platform rule behind every "auto" method (resolvent, linear scan, Mamba).

  Args:
    platform: "cpu", "gpu", "tpu", ...; default `jax.default_backend()`.

  Returns:
    True unless the platform is the CPU.
  """
  return (platform or jax.default_backend()) != "cpu"


def checkpointed_chunks(
    chunk_fn: Callable[[Any, Any], tuple[Any, Any]],
    carry: Any,
    xs: Any,
    *,
    chunk: int,
) -> tuple[Any, Any]:
  """Runs `chunk_fn` over consecutive length-`chunk` slices of `xs`, each under jax.checkpoint.

  Equivalent to one `chunk_fn(carry, xs)` over the whole length, provided chunk_fn is causal
  and carry-composable (chaining it over pieces equals one call on their concatenation). The
  full chunks run under an outer `lax.scan`; a tail of N mod chunk steps (if any) runs as one
  more, shorter call, so no padding or masking is needed and results are exact for any N.

  Args:
    chunk_fn: (carry, xs_chunk) -> (carry, ys_chunk); xs_chunk has leading length L <= chunk
      (L = chunk except for the tail), ys_chunk must have leading length L.
    carry: initial carry pytree.
    xs: pytree of arrays split along axis 0 (length N >= 1, the same for every leaf).
    chunk: steps per checkpointed chunk (clipped to [1, N]).

  Returns:
    (final carry, ys) with ys concatenated along axis 0, length N.
  """
  n = jax.tree.leaves(xs)[0].shape[0]
  if n == 0:
    raise ValueError("checkpointed_chunks needs a non-empty axis 0")
  chunk = max(1, min(int(chunk), n))
  n_full, rem = divmod(n, chunk)
  run = jax.checkpoint(chunk_fn)

  head = jax.tree.map(lambda x: x[:n_full * chunk].reshape((n_full, chunk) + x.shape[1:]), xs)
  carry, ys = lax.scan(run, carry, head)
  ys = jax.tree.map(lambda y: y.reshape((n_full * chunk,) + y.shape[2:]), ys)
  if rem:
    carry, ys_tail = run(carry, jax.tree.map(lambda x: x[n_full * chunk:], xs))
    ys = jax.tree.map(lambda y, t: jnp.concatenate([y, t], axis=0), ys, ys_tail)
  return carry, ys


def checkpointed_scan(
    step: Callable[[Any, Any], tuple[Any, Any]],
    carry: Any,
    xs: Any,
    *,
    chunk: int,
    unroll: int = 8,
) -> tuple[Any, Any]:
  """lax.scan(step, carry, xs) with per-chunk rematerialisation (via `checkpointed_chunks`).

  Args:
    step: (carry, x_t) -> (carry, y_t), as for lax.scan.
    carry: initial carry pytree.
    xs: pytree of arrays scanned along axis 0 (length N, any N >= 1; N need not be a multiple
      of chunk: the tail runs as one shorter chunk, results equal the unchunked scan exactly).
    chunk: steps per checkpointed chunk.
    unroll: unroll factor of the inner scan.

  Returns:
    (final carry, ys) with ys stacked along axis 0, length N.
  """
  return checkpointed_chunks(lambda c, x: lax.scan(step, c, x, unroll=unroll), carry, xs,
                             chunk=chunk)

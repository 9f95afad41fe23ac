"""The elementwise (diagonal) linear recurrence h_t = a_t * h_{t-1} + b_t, along axis 0.

Two exact forms of one operator:

* "sequential": `lax.scan` over t (O(T) depth, minimal work; the CPU's fastest form).
* "associative": `lax.associative_scan` over the pairs (a_t, b_t) with the composition

      (a1, b1) then (a2, b2)  =  (a2 a1, a2 b1 + b2),

  which yields prefix pairs (A_t, B_t) = (a_t ... a_1, sum_s a_t ... a_{s+1} b_s); the initial
  state enters afterwards as h_t = A_t h0 + B_t (O(log T) depth: the accelerator form).

`linear_scan(..., chunk=L)` runs either form inside `checkpointed_chunks`, so reverse mode keeps
only the state at chunk boundaries. Callers that build a and b per chunk (Mamba: (L, B, D, S)
transitions from (L, B, D) inputs) call `checkpointed_chunks` with their own chunk function and
`linear_scan` inside it, so the big tensors exist one chunk at a time.
"""

from __future__ import annotations

from typing import Literal

import jax
import jax.numpy as jnp
from jax import lax

from bk_jax.ops.scan import checkpointed_chunks, prefers_parallel

Method = Literal["auto", "sequential", "associative"]
METHODS = ("sequential", "associative")  # concrete forms; "auto" resolves to one


def resolve_scan_method(method: str, platform: str | None = None) -> str:
  """Returns the concrete form for `method`; "auto" is associative on accelerators.

  Args:
    method: "auto" or one of METHODS.
    platform: "cpu", "gpu", "tpu", ...; default `jax.default_backend()`.

  Returns:
    One of METHODS ("auto": "associative" where `prefers_parallel(platform)`, else
    "sequential").
  """
  if method == "auto":
    return "associative" if prefers_parallel(platform) else "sequential"
  if method not in METHODS:
    raise ValueError(f"unknown linear scan method {method!r}; expected 'auto' or one of {METHODS}")
  return method


def _combine(earlier, later):
  a1, b1 = earlier
  a2, b2 = later
  return a2 * a1, a2 * b1 + b2


def _scan_once(a, b, h0, method):
  if method == "sequential":
    def step(h, ab):
      h = ab[0] * h + ab[1]
      return h, h

    h_last, h = lax.scan(step, h0, (a, b))
    return h, h_last
  a_pre, b_pre = lax.associative_scan(_combine, (a, b), axis=0)
  h = a_pre * h0 + b_pre
  return h, h[-1]


def linear_scan(
    a: jax.Array,
    b: jax.Array,
    h0: jax.Array,
    *,
    method: str,
    chunk: int | None = None,
) -> tuple[jax.Array, jax.Array]:
  """Solves h_t = a_t * h_{t-1} + b_t for t = 1..T (elementwise), time-major.

  Args:
    a: (T, ...) real or complex transition coefficients.
    b: (T, ...) real or complex inputs; a and b broadcast against each other.
    h0: (...) initial state h_0, broadcastable to the trailing shape of a and b.
    method: "sequential", "associative" or "auto" (see `resolve_scan_method`); all give the same
      h up to floating-point rounding.
    chunk: if given, run in jax.checkpoint-ed chunks of this many steps (memory O(T / chunk)
      states plus one chunk's residuals under reverse mode); None: one piece.

  Returns:
    (h, h_last): h (T, ...) the states h_1..h_T, h_last (...) = h[-1]. The dtype is the common
    dtype of a, b and h0 (e.g. complex when any of them is complex).

  Raises:
    ValueError: unknown method, T == 0, or shapes that do not broadcast.
  """
  method = resolve_scan_method(method)
  a, b, h0 = jnp.asarray(a), jnp.asarray(b), jnp.asarray(h0)
  if a.ndim == 0 or b.ndim == 0:
    raise ValueError(f"a and b need a leading time axis; got shapes {a.shape}, {b.shape}")
  try:
    shape = jnp.broadcast_shapes(a.shape, b.shape)
    jnp.broadcast_shapes(h0.shape, shape[1:])
  except ValueError:
    raise ValueError(f"a {a.shape}, b {b.shape} and h0 {h0.shape} do not broadcast "
                     "to (T, ...) and (...)") from None
  if shape[0] == 0:
    raise ValueError("linear_scan needs T >= 1")
  dtype = jnp.result_type(a.dtype, b.dtype, h0.dtype)
  a = jnp.broadcast_to(a, shape)
  b = jnp.broadcast_to(b, shape).astype(dtype)
  h0 = jnp.broadcast_to(h0, shape[1:]).astype(dtype)
  if chunk is None:
    return _scan_once(a, b, h0, method)

  def chunk_fn(h, ab):
    hs, h_last = _scan_once(ab[0], ab[1], h, method)
    return h_last, hs

  h_last, h = checkpointed_chunks(chunk_fn, h0, (a, b), chunk=chunk)
  return h, h_last

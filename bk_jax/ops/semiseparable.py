"""Exact causal resolvent diagonal of a tridiagonal-plus-low-rank Hamiltonian.

Per head, H = T + U diag(s) U^T where T = H0 + diag(v) is the BK tridiagonal operator and the
rows U_i in R^r are projections of the input at position i (never position-indexed parameters).
The causal output o_i = [(H_{0..i} - z)^{-1}]_{ii} follows from Woodbury on the prefix
(DESIGN.md §2.4). With V = U diag(s) and g the tridiagonal prefix resolvent:

    x_i = g_i (U_i - t x_{i-1})        # row i of G_T U on the prefix
    y_i = g_i (V_i - t y_{i-1})        # column i of V^T G_T on the prefix
    M_i = M_{i-1} + y_i x_i^T / g_i    # V^T G_T U on the prefix, r x r
    o_i = g_i - x_i^T (I + M_i)^{-1} y_i

Everything depends on positions <= i only, so the output is causal. The state (g, x, y, M) is
O(r^2) per head and carries across calls. Because H stays real symmetric (s real), o keeps the
resolvent bounds |o| <= 1/Im z and Im o > 0.

Cost O(N r^3) (an r x r solve per step); memory is bounded by a checkpointed chunked scan.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from bk_jax.ops.resolvent import complex_dtype_for
from bk_jax.ops.scan import checkpointed_scan

DEFAULT_CHUNK = 256


class Carry(NamedTuple):
  """Streaming state per head: g (..., H), x and y (..., H, r), M (..., H, r, r)."""

  g: jax.Array
  x: jax.Array
  y: jax.Array
  m: jax.Array


def init_carry(batch_shape: tuple[int, ...], n_heads: int, rank: int, dtype=jnp.complex64) -> Carry:
  """The empty-prefix state (every call without a carry starts here)."""
  shape = tuple(batch_shape) + (n_heads,)
  return Carry(
      g=jnp.zeros(shape, dtype),
      x=jnp.zeros(shape + (rank,), dtype),
      y=jnp.zeros(shape + (rank,), dtype),
      m=jnp.zeros(shape + (rank, rank), dtype),
  )


def causal_diag(
    v: jax.Array,
    u: jax.Array,
    s: jax.Array,
    *,
    hopping: jax.Array,
    z: jax.Array,
    carry: Carry | None = None,
    chunk_size: int = DEFAULT_CHUNK,
) -> tuple[jax.Array, Carry]:
  """Causal diagonal of (H_{0..i} - z)^{-1} for H = T + U diag(s) U^T.

  Args:
    v: real potentials (..., N, H).
    u: real low-rank factors (..., N, H, r), one r-vector per position and head.
    s: real (H, r) diagonal of the symmetric core S (any sign).
    hopping: (H,) > 0.
    z: (H,) complex with Im z > 0.
    carry: state returned by a previous call (None: empty prefix).
    chunk_size: steps per rematerialised chunk (memory/compute trade-off only).

  Returns:
    (o, carry): o complex (..., N, H); the carry continues the sequence in the next call.
  """
  if v.ndim < 2 or u.shape[:-1] != v.shape:
    raise ValueError(f"expected v (..., N, H) and u (..., N, H, r); got {v.shape} and {u.shape}")
  rank = u.shape[-1]
  if s.shape != (v.shape[-1], rank):
    raise ValueError(f"s must have shape (H, r) = {(v.shape[-1], rank)}; got {s.shape}")
  cdt = complex_dtype_for(v)
  rdt = jnp.float64 if cdt == jnp.complex128 else jnp.float32
  t = jnp.asarray(hopping, rdt).astype(cdt)
  t2 = t * t
  a = v.astype(cdt) - 2.0 - jnp.asarray(z, cdt)
  uc = u.astype(cdt)
  vc = uc * jnp.asarray(s, rdt).astype(cdt)
  if carry is None:
    carry = init_carry(v.shape[:-2], v.shape[-1], rank, cdt)
  carry = Carry(*(jnp.asarray(c, cdt) for c in carry))
  eye = jnp.eye(rank, dtype=cdt)

  def step(c: Carry, inputs):
    a_i, u_i, v_i = inputs
    g = 1.0 / (a_i - t2 * c.g)
    x = g[..., None] * (u_i - t[:, None] * c.x)
    y = g[..., None] * (v_i - t[:, None] * c.y)
    m = c.m + y[..., :, None] * x[..., None, :] / g[..., None, None]
    w = jnp.linalg.solve(eye + m, y[..., None])[..., 0]
    o = g - jnp.sum(x * w, axis=-1)
    return Carry(g, x, y, m), o

  xs = (jnp.moveaxis(a, -2, 0), jnp.moveaxis(uc, -3, 0), jnp.moveaxis(vc, -3, 0))
  carry, o = checkpointed_scan(step, carry, xs, chunk=chunk_size, unroll=1)
  return jnp.moveaxis(o, 0, -2), carry

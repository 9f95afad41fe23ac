"""The Green's-function mixer: values mixed by the causal prefix resolvent's last row (§2.10).

For the prefix Hamiltonians H_{0..i} of `kernels.causal_diag` (per-head or per-position
coupling t_i and shift z_i, DESIGN §2.9), the whole last row of the prefix resolvent is as cheap
as its diagonal: by the Schur complement r_i = g_i [-t_i r_{i-1}, 1]. For values x_j (d per
head) the causal mix

    y_i = sum_{j<=i} [(H_{0..i} - diag(z))^{-1}]_{ij} x_j   obeys   y_i = g_i (x_i - t_i y_{i-1}),

i.e. the affine recurrence y_i = c_i y_{i-1} + b_i with c_i = -t_i g_i and b_i = g_i x_i. It is
evaluated as `kernels.causal_diag` for g (exact custom VJP) followed by one
`linear_scan.linear_scan` over (c, b) (sequential, associative or chunked), and differentiated by
plain autodiff through that scan. Bounds: ||r_i||_2 <= ||(H_{0..i} - diag z)^{-1}|| <= 1/eta_min,
so |y_i| <= ||x||_2 / eta_min at any length. The streaming carry is (g_last, y_last).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from bk_jax.ops import resolvent_kernels as kernels
from bk_jax.ops.linear_scan import linear_scan


class GreenCarry(NamedTuple):
  """Streaming state of `causal_green`: g (..., H) and y (..., H, d) at the last position."""
  g: jax.Array
  y: jax.Array


def _affine_spec(method: str, chunk_size: int) -> dict:
  """linear_scan arguments for a concrete resolvent method."""
  if method == "associative":
    return dict(method="associative")
  if method == "chunked":
    return dict(method="sequential", chunk=chunk_size)
  return dict(method="sequential")


def affine_terms(g, x, hopping):
  """(c, b) of y_i = c_i y_{i-1} + b_i: c = -t g (..., N, H), b = g x (..., N, H, d)."""
  t = jnp.asarray(hopping, jnp.real(g).dtype)
  return -t * g, g[..., None] * x


def mix(c, b, y_prev, *, method: str, chunk_size: int = kernels.DEFAULT_CHUNK):
  """Runs y_i = c_i y_{i-1} + b_i from y_prev along axis -3 of b; returns (y, y_last).

  c (..., N, H), b (..., N, H, D), y_prev (..., H, D); method is a concrete resolvent method.
  """
  a = jnp.moveaxis(c, -2, 0)[..., None]  # (N, ..., H, 1): broadcast over the value channels
  y, y_last = linear_scan(a, jnp.moveaxis(b, -3, 0), y_prev, **_affine_spec(method, chunk_size))
  return jnp.moveaxis(y, 0, -3), y_last


def check_inputs(v, x):
  if v.ndim < 2:
    raise ValueError(f"v must have shape (..., N, H); got {v.shape}")
  if v.shape[-2] == 0:
    raise ValueError("v has an empty sequence axis (N = 0)")
  if x.ndim != v.ndim + 1 or x.shape[:-1] != v.shape:
    raise ValueError(f"x must have shape v.shape + (d,) = {v.shape} + (d,); got {x.shape}")


def cast_values(v, x):
  """x as v's real dtype (real values) or complex dtype (complex values)."""
  cdt = kernels.complex_dtype_for(v)
  rdt = jnp.float64 if cdt == jnp.complex128 else jnp.float32
  return x.astype(cdt if jnp.iscomplexobj(x) else rdt)


def causal_green_local(
    v: jax.Array,
    x: jax.Array,
    *,
    hopping: jax.Array,
    z: jax.Array,
    carry: tuple[jax.Array, jax.Array] | None = None,
    method: kernels.Method = "scan",
    chunk_size: int = kernels.DEFAULT_CHUNK,
) -> tuple[jax.Array, GreenCarry]:
  """`bk_jax.ops.resolvent.causal_green` on one device: same arguments, same (y, carry); see there.

  g comes from the resolvent kernels (exact VJP), y from `linear_scan` over (c = -t g, b = g x).
  """
  method = kernels.resolve_method(method)
  v = jnp.asarray(v)
  x = jnp.asarray(x)
  check_inputs(v, x)
  g_prev, y_prev = (None, None) if carry is None else carry
  v, shift, t2, g_prev = kernels.prepare_inputs(v, hopping, z, g_prev)
  g, g_last = kernels.causal_diag_prepared(v, shift, t2, g_prev, method, chunk_size)
  c, b = affine_terms(g, cast_values(v, x), hopping)
  y_shape = b.shape[:-3] + b.shape[-2:]
  y_prev = (jnp.zeros(y_shape, g.dtype) if y_prev is None
            else jnp.broadcast_to(jnp.asarray(y_prev, g.dtype), y_shape))
  y, y_last = mix(c, b, y_prev, method=method, chunk_size=chunk_size)
  return y, GreenCarry(g_last, y_last)

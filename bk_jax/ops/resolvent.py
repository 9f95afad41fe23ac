"""Public entry of the BK resolvent ops: `causal_diag`, `causal_green`, `full_diag` (DESIGN §4).

Each call runs on one device through the kernels (bk_jax.ops.resolvent_kernels for g,
bk_jax.ops.green for the Green's-function mixer), or, when traced under a mesh whose "sequence"
axis has more than one device, through the sequence-parallel wrappers of
bk_jax.ops.sharded_scan (which compose the same kernels shard by shard). The imports run one
way: kernels <- green <- sharded_scan <- this module.

The maths, methods and shapes are documented in bk_jax.ops.resolvent_kernels.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from bk_jax.ops import sharded_scan
from bk_jax.ops.green import GreenCarry, causal_green_local, check_inputs
from bk_jax.ops.resolvent_kernels import (  # noqa: F401 - the public names of this module
    DEFAULT_CHUNK, METHODS, Method, causal_diag_local, causal_diag_prepared, complex_dtype_for,
    full_diag, mobius_combine, mobius_matrices, per_position, prepare_inputs, resolve_method)


def causal_diag(
    v: jax.Array,
    *,
    hopping: jax.Array,
    z: jax.Array,
    carry: jax.Array | None = None,
    method: Method = "scan",
    chunk_size: int = DEFAULT_CHUNK,
) -> tuple[jax.Array, jax.Array]:
  """Causal prefix resolvent diagonal g_i = [(H_{0..i} - diag(z))^{-1}]_{ii}.

  Args:
    v: real potentials, shape (..., N, H). float64 input computes in complex128.
    hopping: t > 0 per head (H,) or per position (..., N, H) (DESIGN §2.9): hopping[..., i, h]
      is the bond between positions i-1 and i. Position 0's bond joins the previous call's last
      position (it only matters with a carry; without one it is ignored).
    z: complex shifts with Im z > 0, per head (H,) or per position (..., N, H).
    carry: (..., H) complex, g at the last position of the previous call (None: fresh start).
      Chaining calls with the returned carry equals one call on the concatenated sequence.
    method: "auto", "scan", "associative" or "chunked" (bk_jax.ops.resolvent_kernels); all
      give the same g; "auto" is `resolve_method("auto")`.
    chunk_size: chunk length for method="chunked".

  Returns:
    (g, carry): g complex (..., N, H); carry complex (..., H) = g[..., -1, :]. Gradients
    w.r.t. v, hopping, z and carry are exact (per-head parameters sum over batch and positions).
  """
  if (mesh := sharded_scan.sequence_mesh_for(v)) is not None:  # mesh "sequence" axis > 1
    return sharded_scan.sequence_parallel_causal_diag(
        v, hopping=hopping, z=z, carry=carry, mesh=mesh, method=resolve_method(method),
        chunk_size=chunk_size)
  return causal_diag_local(v, hopping=hopping, z=z, carry=carry, method=method,
                           chunk_size=chunk_size)


def causal_green(
    v: jax.Array,
    x: jax.Array,
    *,
    hopping: jax.Array,
    z: jax.Array,
    carry: tuple[jax.Array, jax.Array] | None = None,
    method: Method = "scan",
    chunk_size: int = DEFAULT_CHUNK,
) -> tuple[jax.Array, GreenCarry]:
  """Values mixed by the prefix resolvent row: y_i = sum_{j<=i} [(H_{0..i} - z)^{-1}]_{ij} x_j.

  Args:
    v: real potentials (..., N, H). float64 input computes in complex128.
    x: values (..., N, H, d), real or complex.
    hopping: t > 0 per head (H,) or per position (..., N, H) (the bond between i-1 and i; a
      call's first entry is the bond to the previous call's last position, used with a carry).
    z: complex shifts, Im z > 0, per head (H,) or per position (..., N, H).
    carry: (g_last (..., H), y_last (..., H, d)) from the previous call, or None (fresh start).
      Chaining calls through it equals one call on the concatenated sequence.
    method: "auto", "scan", "associative" or "chunked", as for `causal_diag`.
    chunk_size: chunk length for method="chunked".

  Returns:
    (y, carry): y complex (..., N, H, d); carry GreenCarry(g (..., H), y (..., H, d)) at the
    last position. Differentiable w.r.t. v, x, hopping, z and the carry.
  """
  v, x = jnp.asarray(v), jnp.asarray(x)
  check_inputs(v, x)
  if (mesh := sharded_scan.sequence_mesh_for(v)) is not None:  # mesh "sequence" axis > 1
    return sharded_scan.sequence_parallel_causal_green(
        v, x, hopping=hopping, z=z, carry=carry, mesh=mesh,
        method=resolve_method(method), chunk_size=chunk_size)
  return causal_green_local(v, x, hopping=hopping, z=z, carry=carry, method=method,
                            chunk_size=chunk_size)

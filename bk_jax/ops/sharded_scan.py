"""Sequence-parallel causal resolvent: the sequence axis split over a mesh axis (DESIGN §2.2).

With the sequence cut into S contiguous shards, shard s needs only one number from the shards
before it: g at the last position of shard s-1 (its incoming state). The recurrence is a
projective (Möbius) map, g_i = p_i / q_i with (p_i, q_i)ᵀ = M_i (p_{i-1}, q_{i-1})ᵀ and
M_i = [[0, 1], [-t², a_i]], so a shard's effect on any incoming state is the 2×2 product of its
matrices. Inside `jax.shard_map` (manual over the sequence axis only; batch and head axes stay
under automatic partitioning):

1. reduce: every shard multiplies its own matrices (log-depth pairwise products, each divided by
   its largest entry, so no overflow at any length) into one normalised 2×2 product per
   (batch, head);
2. exclusive combine: the S products are all-gathered (4·S complex numbers per batch and head)
   and each shard applies the products of the shards before it to the start vector
   (carry, 1), which gives its incoming g (shard 0 gets the carry itself);
3. local pass: the ordinary `resolvent.causal_diag` (scan / associative / chunked, with its exact
   custom VJP) runs on the shard from that incoming g.

The returned carry (g at the very last position; the last shard's local carry) continues the
stream across calls exactly as in the unsharded op.

Per-position coupling and shift (DESIGN §2.9) are split along the sequence like v: M_i carries
its own t_i² and a_i, and a shard's first bond t_0 joins it to the previous shard's last position,
so the products and the local pass need nothing else.

Gradients are exact: reverse-mode differentiates through the shard_map (the all_gather transposes
to a reduce-scatter, the local pass uses the resolvent's custom VJP, whose g_prev cotangent flows
back into the combine). The reduction is `jax.checkpoint`-ed, so the only residuals kept per
shard are the local g (as in the unsharded op) and the 2×2 products; the reduction is recomputed
in the backward pass. The normalising scales are stop-gradient: g = p/q does not depend on them,
so treating them as constants gives the exact derivative.

`resolvent.causal_diag` dispatches here automatically when it is traced under a mesh
(`jax.set_mesh` / `jax.sharding.use_abstract_mesh`) whose "sequence" axis has more than one
device and the sequence length divides evenly (see `sequence_mesh_for`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax
from jax.sharding import PartitionSpec as P

from bk_jax.ops import green
from bk_jax.ops import resolvent_kernels as kernels
from bk_jax.ops.resolvent_kernels import mobius_combine, mobius_matrices

SEQUENCE_AXIS = "sequence"


def sequence_mesh_for(v: jax.Array, axis: str = SEQUENCE_AXIS):
  """The context mesh when `v`'s sequence axis should run sequence-parallel, else None.

  True when a mesh is set, it has `axis` with more than one device, that axis is not already
  manual (i.e. we are not inside this module's own shard_map) and N divides by its size.
  Otherwise the caller runs the ordinary op (automatic partitioning gathers the sequence).
  """
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty or axis not in mesh.axis_names:
    return None
  size = mesh.shape[axis]
  if size <= 1 or axis in mesh.manual_axes:
    return None
  if v.ndim < 2 or v.shape[-2] % size:
    return None
  return mesh


@jax.checkpoint
def _shard_product(v, shift, t2):
  """Normalised product M_{n-1} ... M_0 of one shard: 4 arrays (..., H). v (..., n, H) real."""
  mats = mobius_matrices(v, shift, t2)
  while mats[0].shape[-2] > 1:
    n = mats[0].shape[-2]
    if n % 2:  # pad with the identity at the end: later @ ... unchanged
      eye = (1.0, 0.0, 0.0, 1.0)
      mats = tuple(jnp.concatenate([m, jnp.full_like(m[..., :1, :], e)], axis=-2)
                   for m, e in zip(mats, eye))
    mats = mobius_combine(tuple(m[..., 0::2, :] for m in mats),
                          tuple(m[..., 1::2, :] for m in mats))
  return tuple(m[..., 0, :] for m in mats)


def _incoming_state(prods, g0, axis: str, size: int):
  """Exclusive combine: g entering this shard from the all-gathered per-shard products.

  prods: 4 arrays (S, ..., H) (shard-major); g0: (..., H) the carry entering shard 0.
  """
  p, q = g0, jnp.ones_like(g0)
  states = []
  for k in range(size):  # S is a small static mesh size
    states.append(p / q)
    m00, m01, m10, m11 = (m[k] for m in prods)
    p, q = m00 * p + m01 * q, m10 * p + m11 * q
    scale = lax.stop_gradient(jnp.maximum(jnp.abs(p), jnp.abs(q)))
    p, q = p / scale, q / scale
  states = jnp.stack(states)
  # shard 0 gets the carry exactly (no p/q rounding)
  states = states.at[0].set(g0)
  return states[lax.axis_index(axis)]


def _sequence_inputs(v, hopping, z, carry, mesh, axis):
  """Casts and checks the arguments of the sequence-parallel ops.

  Returns (v, hopping, z, carry, specs): per-position hopping / z broadcast to v's shape and
  split along the sequence like v, per-head ones replicated; specs are their PartitionSpecs.
  """
  size = mesh.shape[axis]
  if v.ndim < 2 or v.shape[-2] % size:
    raise ValueError(f"sequence length {v.shape[-2] if v.ndim >= 2 else None} of v {v.shape} "
                     f"does not divide by mesh axis {axis!r} of size {size}")
  cdt = kernels.complex_dtype_for(v)
  rdt = jnp.float64 if cdt == jnp.complex128 else jnp.float32
  v = v.astype(rdt)
  seq_spec = P(*((None,) * (v.ndim - 2)), axis, None)
  specs = []
  params = []
  for name, x, dt in (("hopping", hopping, rdt), ("z", z, cdt)):
    x = jnp.asarray(x, dt)
    if kernels.per_position(x, v.shape, name):
      params.append(jnp.broadcast_to(x, v.shape))
      specs.append(seq_spec)
    else:
      params.append(jnp.broadcast_to(x, v.shape[-1:]))
      specs.append(P())
  heads_shape = v.shape[:-2] + v.shape[-1:]
  carry = (jnp.zeros(heads_shape, cdt) if carry is None
           else jnp.broadcast_to(jnp.asarray(carry, cdt), heads_shape))
  return v, params[0], params[1], carry, (seq_spec, *specs)


def _local_incoming_g(v_s, hop, z_s, g0, axis, size):
  """Inside shard_map: the exact g entering this shard (Mobius reduce + exclusive combine)."""
  shift = 2.0 + z_s
  prod = _shard_product(v_s, shift, hop * hop)
  prods = tuple(lax.all_gather(m, axis, axis=0) for m in prod)
  return _incoming_state(prods, g0, axis, size)


def sequence_parallel_causal_diag(v, *, hopping, z, carry=None, mesh=None,
                                  axis: str = SEQUENCE_AXIS, method: str = "scan",
                                  chunk_size: int | None = None):
  """`resolvent.causal_diag` with the sequence axis (-2) of v split over mesh axis `axis`.

  Args:
    v: real potentials (..., N, H); N must divide by the size of `axis`.
    hopping: > 0, per head (H,) or per position (..., N, H) (split like v).
    z: complex, Im z > 0, per head (H,) or per position (..., N, H) (split like v).
    carry: (..., H) complex g before position 0 (None: fresh sequence).
    mesh: a Mesh or AbstractMesh with `axis`; None takes the context mesh (jax.set_mesh).
    axis: the mesh axis the sequence is split over.
    method, chunk_size: the local pass's strategy (see resolvent.causal_diag).

  Returns:
    (g, carry) exactly as resolvent.causal_diag: g (..., N, H) complex, sharded like v along
    the sequence; carry (..., H) = g[..., -1, :].
  """

  mesh = jax.sharding.get_abstract_mesh() if mesh is None else mesh
  size = mesh.shape[axis]
  v, hopping, z, carry, (seq_spec, hop_spec, z_spec) = _sequence_inputs(
      v, hopping, z, carry, mesh, axis)
  kw = dict(method=method) if chunk_size is None else dict(method=method, chunk_size=chunk_size)

  def local(v_s, hop, z_s, g0):
    g_in = _local_incoming_g(v_s, hop, z_s, g0, axis, size)
    g, g_last = kernels.causal_diag_local(v_s, hopping=hop, z=z_s, carry=g_in, **kw)
    return g, g_last[None]

  # check_vma=False: the local pass's custom VJP builds its reverse-scan carries without
  # varying-axis annotations. Nothing here relies on psum's transpose: the carry leaves the
  # shard_map as one row per shard and the last row is taken outside.
  f = jax.shard_map(local, mesh=mesh, in_specs=(seq_spec, hop_spec, z_spec, P()),
                    out_specs=(seq_spec, P(axis)), axis_names={axis}, check_vma=False)
  g, lasts = f(v, hopping, z, carry)
  return g, lasts[-1]



def _incoming_affine(c_last, y_last, y0, axis: str, size: int):
  """Exclusive combine of per-shard affine maps y -> C_s y + Y_s: the y entering this shard.

  c_last (S, ..., H), y_last (S, ..., H, d) all-gathered; y0 (..., H, d) enters shard 0.
  """
  y, states = y0, []
  for k in range(size):  # S is a small static mesh size
    states.append(y)
    y = c_last[k][..., None] * y + y_last[k]
  return jnp.stack(states)[lax.axis_index(axis)]


def sequence_parallel_causal_green(v, x, *, hopping, z, carry=None, mesh=None,
                                   axis: str = SEQUENCE_AXIS, method: str = "scan",
                                   chunk_size: int | None = None):
  """`resolvent.causal_green` with the sequence axis of v (-2) and x (-3) split over `axis`.

  Two exclusive combines: first the Mobius one of `sequence_parallel_causal_diag` gives each
  shard its exact incoming g, so its local g and affine coefficients (c_i = -t_i g_i,
  b_i = g_i x_i) are final; then each shard's affine map y -> C y + Y (C = prod c_i, Y = its y
  from a zero start) composes like the Mobius products: all-gathered, applied in order to the
  incoming y. One local affine scan yields both Y and the prefix products A_i = prod_{k<=i} c_k
  (an extra value channel started at 1), so y = Y_i + A_i y_in needs no second pass. Gradients:
  plain autodiff (the g pass keeps its exact custom VJP).

  Args:
    v: real potentials (..., N, H); N must divide by the size of `axis`.
    x: values (..., N, H, d), real or complex.
    hopping, z: per head (H,) or per position (..., N, H), as resolvent.causal_green.
    carry: (g_last (..., H), y_last (..., H, d)) or None.
    mesh, axis, method, chunk_size: as `sequence_parallel_causal_diag`.

  Returns:
    (y, carry) exactly as resolvent.causal_green, y sharded like x along the sequence.
  """

  mesh = jax.sharding.get_abstract_mesh() if mesh is None else mesh
  size = mesh.shape[axis]
  g_carry, y_carry = (None, None) if carry is None else carry
  v, hopping, z, g0, (seq_spec, hop_spec, z_spec) = _sequence_inputs(
      v, hopping, z, g_carry, mesh, axis)
  x = green.cast_values(v, jnp.asarray(x))
  y_shape = g0.shape + x.shape[-1:]
  y0 = (jnp.zeros(y_shape, g0.dtype) if y_carry is None
        else jnp.broadcast_to(jnp.asarray(y_carry, g0.dtype), y_shape))
  chunk_size = kernels.DEFAULT_CHUNK if chunk_size is None else chunk_size

  def local(v_s, hop, z_s, x_s, g0, y0):
    g_in = _local_incoming_g(v_s, hop, z_s, g0, axis, size)
    g, g_last = kernels.causal_diag_prepared(*kernels.prepare_inputs(v_s, hop, z_s, g_in),
                                               method, chunk_size)
    c, b = green.affine_terms(g, x_s, hop)
    # Channel d is the prefix product A_i of c (start 1, no input); channels < d are Y (start 0).
    b = jnp.concatenate([b, jnp.zeros_like(b[..., :1])], axis=-1)
    start = jnp.concatenate([jnp.zeros_like(y0), jnp.ones_like(y0[..., :1])], axis=-1)
    ya, ya_last = green.mix(c, b, start, method=method, chunk_size=chunk_size)
    c_all = lax.all_gather(ya_last[..., -1], axis, axis=0)
    y_all = lax.all_gather(ya_last[..., :-1], axis, axis=0)
    y_in = _incoming_affine(c_all, y_all, y0, axis, size)
    y = ya[..., :-1] + ya[..., -1:] * y_in[..., None, :, :]
    return y, g_last[None], y[..., -1, :, :][None]

  x_spec = P(*seq_spec, None)
  f = jax.shard_map(local, mesh=mesh, in_specs=(seq_spec, hop_spec, z_spec, x_spec, P(), P()),
                    out_specs=(x_spec, P(axis), P(axis)), axis_names={axis}, check_vma=False)
  y, g_lasts, y_lasts = f(v, hopping, z, x, g0, y0)
  return y, green.GreenCarry(g_lasts[-1], y_lasts[-1])

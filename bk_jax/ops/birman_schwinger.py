"""Birman-Schwinger stability monitors (DESIGN.md §2.5): pure functions, O(N) per call.

K = |V|^{1/2} R0 |V|^{1/2} with R0 = (H0 - z)^{-1} the resolvent of the free (infinite) lattice,
whose kernel is known in closed form:

    R0(u, w) = xi^{|u-w|} / (t (xi - 1/xi)),   |xi| < 1 the root of t (xi + 1/xi) = z + 2.

* `schatten_s2`: ||K||_S2 = sqrt(sum_{u,w} |V_u| |V_w| |R0(u,w)|^2). |R0|^2 is a geometric kernel
  rho^{|u-w|} (rho = |xi|^2 < 1), so the double sum is one exponential scan: O(N), exact.
* `schatten_s1_window`: ||K||_S1 (trace norm) needs singular values; it is computed exactly on
  the most recent `window` positions (fixed cost per call, independent of N).
* `condition_bound`: Gershgorin bound on cond(H - z) = ||H - z|| ||(H - z)^{-1}||
  <= (max_i |v_i - 2| + 2t + |z|) / Im z.
* `causal_diag_with_upgrade`: the precision-upgrade rule: recompute the resolvent in complex128
  when the condition bound passes a threshold (only possible with jax_enable_x64).

All monitors take v (..., N, H), hopping (H,), z (H,) and return (..., H) (reduced over N).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from bk_jax.ops import resolvent


def _real_dtype(v):
  return jnp.float64 if v.dtype == jnp.float64 else jnp.float32


def free_lattice_root(hopping: jax.Array, z: jax.Array) -> jax.Array:
  """xi with |xi| < 1 solving t (xi + 1/xi) = z + 2, per head.

  The two roots multiply to 1, and Im z > 0 keeps them off the unit circle, so exactly one of
  them lies strictly inside the unit disk.
  """
  c = (z + 2.0) / hopping
  disc = jnp.sqrt(c * c - 4.0)
  r1 = 0.5 * (c - disc)
  r2 = 0.5 * (c + disc)
  return jnp.where(jnp.abs(r1) < 1.0, r1, r2)


def free_resolvent_kernel(distance: jax.Array, *, hopping: jax.Array, z: jax.Array) -> jax.Array:
  """R0(u, w) for |u - w| = distance (integer array broadcasting against (H,))."""
  xi = free_lattice_root(hopping, z)
  return xi**distance / (hopping * (xi - 1.0 / xi))


def schatten_s2(v: jax.Array, *, hopping: jax.Array, z: jax.Array) -> jax.Array:
  """Hilbert-Schmidt norm ||K||_S2 of the Birman-Schwinger operator, exact in O(N).

  Args:
    v: real potentials (..., N, H).
    hopping: (H,) > 0.
    z: (H,) complex, Im z > 0.

  Returns:
    (..., H) real.
  """
  rdt = _real_dtype(v)
  cdt = resolvent.complex_dtype_for(v)
  hopping = jnp.asarray(hopping, rdt)
  z = jnp.asarray(z, cdt)
  xi = free_lattice_root(hopping.astype(cdt), z)
  rho = (jnp.abs(xi) ** 2).astype(rdt)
  c = 1.0 / jnp.abs(hopping * (xi - 1.0 / xi)) ** 2
  w = jnp.abs(v).astype(rdt)

  # s_u = sum_{w < u} |V_w| rho^{u - w} = rho (s_{u-1} + |V_{u-1}|): the off-diagonal half.
  def step(s_prev_and_w, w_u):
    s_prev, w_prev = s_prev_and_w
    s_u = rho * (s_prev + w_prev)
    return (s_u, w_u), s_u

  zeros = jnp.zeros(v.shape[:-2] + v.shape[-1:], rdt)
  _, s = lax.scan(step, (zeros, zeros), jnp.moveaxis(w, -2, 0), unroll=8)
  s = jnp.moveaxis(s, 0, -2)
  total = jnp.sum(w * w, axis=-2) + 2.0 * jnp.sum(w * s, axis=-2)
  return jnp.sqrt(c * total)


def birman_schwinger_matrix(v: jax.Array, *, hopping: jax.Array, z: jax.Array) -> jax.Array:
  """Dense K over the given positions: (..., N, H) -> (..., H, N, N) complex. O(N^2)."""
  cdt = resolvent.complex_dtype_for(v)
  n = v.shape[-2]
  idx = jnp.arange(n)
  dist = jnp.abs(idx[:, None] - idx[None, :])[..., None]  # (N, N, 1)
  r0 = free_resolvent_kernel(dist, hopping=jnp.asarray(hopping).astype(cdt), z=jnp.asarray(z, cdt))
  r0 = jnp.moveaxis(r0, -1, 0)  # (H, N, N)
  sq = jnp.sqrt(jnp.abs(v)).astype(cdt)
  sq = jnp.moveaxis(sq, -1, -2)  # (..., H, N)
  return sq[..., :, None] * r0 * sq[..., None, :]


def schatten_s1_window(v: jax.Array, *, hopping: jax.Array, z: jax.Array, window: int) -> jax.Array:
  """Trace norm ||K||_S1 restricted to the most recent `window` positions (exact SVD).

  The window is the last min(N, window) positions, so the cost is fixed per call and the
  monitor reflects what the model has just read.

  Args:
    v: real potentials (..., N, H).
    hopping: (H,) > 0.
    z: (H,) complex, Im z > 0.
    window: number of positions (> 0).

  Returns:
    (..., H) real.
  """
  if window <= 0:
    raise ValueError(f"window must be positive; got {window}")
  k = birman_schwinger_matrix(v[..., -window:, :], hopping=hopping, z=z)
  return jnp.sum(jnp.linalg.svd(k, compute_uv=False), axis=-1)


def condition_bound(v: jax.Array, *, hopping: jax.Array, z: jax.Array) -> jax.Array:
  """Upper bound on the condition number of H - z (Gershgorin), O(N).

  ||H - z|| <= max_i |v_i - 2| + 2t + |z| (row sums of a tridiagonal matrix) and
  ||(H - z)^{-1}|| <= 1 / Im z because H is real symmetric.

  Returns:
    (..., H) real, >= the true 2-norm condition number of every prefix block H_{0..i} - z.
  """
  rdt = _real_dtype(v)
  z = jnp.asarray(z)
  norm = jnp.max(jnp.abs(v.astype(rdt) - 2.0), axis=-2) + 2.0 * jnp.abs(hopping) + jnp.abs(z)
  return (norm / jnp.imag(z)).astype(rdt)


def _cast_tree(tree, real_dtype, complex_dtype):
  def cast(a):
    if a is None:
      return None
    a = jnp.asarray(a)
    if jnp.issubdtype(a.dtype, jnp.complexfloating):
      return a.astype(complex_dtype)
    return a.astype(real_dtype) if jnp.issubdtype(a.dtype, jnp.floating) else a

  return jax.tree.map(cast, tree, is_leaf=lambda x: x is None)


def with_precision_upgrade(fn, args, *, flagged: jax.Array):
  """Runs fn(*args), recomputed in float64/complex128 when `flagged` (one lax.cond).

  The precision-upgrade rule of DESIGN §2.5 for any resolvent-like computation: the cheap
  path costs nothing extra; when `flagged` is true every floating leaf of `args` is promoted
  to double precision, `fn` is rerun, and the outputs are cast back to the cheap path's dtypes.
  complex128 exists only with jax_enable_x64; without it (or when the inputs are already
  double) nothing is recomputed and `upgraded` is False, so counts never claim work that did
  not happen.

  Args:
    fn: function of the args returning a pytree of arrays.
    args: tuple of pytrees (None leaves allowed).
    flagged: scalar bool, e.g. condition_bound(...).max() > threshold.

  Returns:
    (fn's outputs, upgraded: scalar bool).
  """
  already_double = any(
      jnp.asarray(a).dtype in (jnp.float64, jnp.complex128)
      for a in jax.tree.leaves(args) if hasattr(a, "dtype")
  )
  if not jax.config.jax_enable_x64 or already_double:
    return fn(*args), jnp.zeros((), bool)
  low = lambda a: fn(*a)
  out_dtypes = jax.tree.map(lambda x: x.dtype, jax.eval_shape(low, args))

  def high(a):
    out = fn(*_cast_tree(a, jnp.float64, jnp.complex128))
    return jax.tree.map(lambda x, dt: x.astype(dt), out, out_dtypes)

  return lax.cond(flagged, high, low, args), flagged


def causal_diag_with_upgrade(
    v: jax.Array,
    *,
    hopping: jax.Array,
    z: jax.Array,
    threshold: float,
    carry: jax.Array | None = None,
    method: resolvent.Method = "scan",
) -> tuple[jax.Array, jax.Array, dict[str, jax.Array]]:
  """Causal resolvent, recomputed in complex128 when the condition bound passes `threshold`.

  See `with_precision_upgrade` for when the recomputation can happen.

  Returns:
    (g, carry, info): g and carry as `resolvent.causal_diag` (dtype of the float32 path);
    info = {"bound": max condition bound (scalar), "flagged": bound > threshold,
            "upgraded": whether the complex128 recomputation ran}.
  """
  bound = jnp.max(condition_bound(v, hopping=hopping, z=z))
  flagged = bound > threshold

  def core(v_, hopping_, z_, carry_):
    return resolvent.causal_diag(v_, hopping=hopping_, z=z_, carry=carry_, method=method)

  args = (v, jnp.asarray(hopping, v.dtype), jnp.asarray(z, resolvent.complex_dtype_for(v)), carry)
  (g, new_carry), upgraded = with_precision_upgrade(core, args, flagged=flagged)
  return g, new_carry, {"bound": bound, "flagged": flagged, "upgraded": upgraded}

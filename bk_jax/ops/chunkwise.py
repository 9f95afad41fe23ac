"""Chunkwise scalar-decay kernel: a decayed outer-product state read by queries, by matmuls.

Per head, with a scalar decay c_u (complex or real), a write weight w_j (complex or real), keys
and queries k_j, q_j (n) and values v_j (d), the recurrence

    S_i = c_i S_{i-1} + w_i k_i v_i^T   (S: n x d),     o_i = S_i^T q_i

has the closed form o_i = sum_{j<=i} (prod_{j<u<=i} c_u) w_j (q_i . k_j) v_j + (prod_{u<=i} c_u)
S_{-1}^T q_i. It is the keyed Green mixer (c_u = -t_u g_u, w_j = g_j: G_ij = g_j prod c; DESIGN
§2.10), its modulus kernel (|c_u|, |g_j|) and Mamba-2's SSD layer (c_u = exp(dt_u A), w_j = dt_j).
A sequential scan materialises S (n x d per head) at every token, and keeps it for the backward
pass. Here the sequence is cut into chunks of L tokens and each chunk is three matmuls (the
state-space-duality algorithm of Dao & Gu 2024, "Transformers are SSMs"; also gated linear
attention's chunk form):

    Seg[r, m] = sum_{m<u<=r} log c_u          a masked cumulative sum (SSD's `segsum`)
    D = exp(Seg) on r >= m, 0 above the diagonal (applied by `where` after the sum)
    O = ((Q K^T) * D * w^T) V                  within the chunk
      + exp(cumsum log c) * (Q S_prev)          from earlier chunks
    S_next = exp(sum log c) S_prev + K^T diag(w exp(Seg[L-1, :])) V

and the chunk states S_prev follow from one `linear_scan` over the chunk sequence (sequential
or associative). Seg is never a difference of prefix sums nor a ratio of cumulative products:
both lose everything when |c| is tiny (a ratio of two underflowed products is 0/0). Only sums of
logs of the factors that are actually multiplied are exponentiated, so a factor of 1e-30 decays
to an exact 0, never to NaN. For a BK chain arg c lies in (-pi, 0), so the principal log is
smooth; log c is the caller's argument, so any branch the caller picks works the same.

Reverse mode differentiates through the matmuls (no custom VJP: every residual is a chunk-sized
matmul operand). Sequences are processed in blocks of `block` tokens under `jax.checkpoint`
(`ops.scan.checkpointed_chunks`), so the backward pass keeps one state per block and one block's
residuals at a time: peak memory does not grow with the residual size of the whole sequence.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import PartitionSpec as P

from bk_jax.ops.linear_scan import linear_scan, resolve_scan_method
from bk_jax.ops.scan import checkpointed_chunks, prefers_parallel
from bk_jax.ops.sharded_scan import SEQUENCE_AXIS, sequence_mesh_for

#: Chunk length "auto" picks: 16 is the CPU's fastest (scripts/bench_chunkwise.py), 64
#: feeds a GPU's matrix units.
CPU_CHUNK = 16
ACCELERATOR_CHUNK = 64
#: Tokens per jax.checkpoint-ed block (rounded to whole chunks).
BLOCK = 1024


def resolve_chunk(chunk: int | str, platform: str | None = None) -> int:
  """The chunk length for `chunk` ("auto": CPU_CHUNK on the CPU, ACCELERATOR_CHUNK elsewhere)."""
  if chunk == "auto":
    return ACCELERATOR_CHUNK if prefers_parallel(platform) else CPU_CHUNK
  if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
    raise ValueError(f"chunk must be 'auto' or a positive int; got {chunk!r}")
  return chunk


def segment_sums(log_c: jax.Array) -> jax.Array:
  """Seg[..., r, m] = sum_{m<u<=r} log_c[..., u] for r >= m (0 above the diagonal).

  A masked sum of exactly the terms in each segment (SSD's `segsum`), never a difference of
  prefix sums, which cancels catastrophically when the sums are large. It is evaluated as one
  matmul against the fixed 0/1 tensor M[u, r, m] = [m < u <= r] (adding exact zeros for the
  other terms), which XLA runs far faster than a cumulative sum over an (L, L) array.
  log_c: (..., L) real and finite; returns (..., L, L).
  """
  length = log_c.shape[-1]
  u, r, m = np.ogrid[:length, :length, :length]
  mask = jnp.asarray((m < u) & (u <= r), log_c.dtype).reshape(length, length * length)
  return (log_c @ mask).reshape(*log_c.shape, length)


def prefix_sums(x: jax.Array) -> jax.Array:
  """sum_{u<=r} x[..., u] along the last (chunk) axis, as a matmul with a triangular 0/1 matrix
  (XLA's CPU backend fuses a cumulative sum into its consumers and recomputes it per element)."""
  length = x.shape[-1]
  return x @ jnp.triu(jnp.ones((length, length), x.dtype))


# Complex numbers inside the kernel are (real, imag) pairs of real arrays, imag None for a real
# quantity: XLA's CPU backend runs complex elementwise ops and complex dots several times slower
# than the same work on real arrays, and a packed (values | values) layout turns each complex
# matmul into one real matmul of twice the width.

def _mul(a, b):
  """(a_re + i a_im)(b_re + i b_im) on pairs whose imag may be None (real)."""
  (ar, ai), (br, bi) = a, b
  if ai is None and bi is None:
    return ar * br, None
  if ai is None:
    return ar * br, ar * bi
  if bi is None:
    return ar * br, ai * br
  return ar * br - ai * bi, ar * bi + ai * br


def _scale_values(x, v):
  """Per-token complex scalar x (..., L) times real values v (..., L, d), packed (..., L, 2d)."""
  xr, xi = x
  if xi is None:
    return xr[..., None] * v
  return jnp.concatenate([xr[..., None] * v, xi[..., None] * v], axis=-1)


def _unpack(y, d: int, rotating: bool):
  """Packed (..., 2d) -> pair of (..., d) (or the real (..., d) itself, imag None)."""
  return (y[..., :d], y[..., d:]) if rotating else (y, None)


def _chunks(q, k, v, log_mod, theta, w, state, scan_method: str):
  """Whole chunks of one block: q (C, ..., H, L, n), k (C, ..., H, n, L) (transposed: both of
  its matmuls then contract XLA's preferred axes), v (C, ..., H, L, d) real; log_mod and
  theta (log |c| and arg c; theta None for a real decay) and the write weight pair w, each
  (C, ..., H, L); state: pair (S_re, S_im or None), each (..., H, n, d); scan_method: the
  `linear_scan` method across chunks.

  Returns (o pair (C, ..., H, L, d), state pair at the block's end).
  """
  d = v.shape[-1]
  rotating = theta is not None or w[1] is not None
  length = log_mod.shape[-1]
  causal = jnp.tril(jnp.ones((length, length), bool))
  decay = jnp.where(causal, jnp.exp(segment_sums(log_mod)), 0.0)  # |D|, (C, ..., H, L, L)
  if theta is None:
    phase = None
  else:  # unit phasors p_r = exp(i sum_{u<=r} theta_u): D[r, m] = |D[r, m]| p_r conj(p_m)
    angle = prefix_sums(theta)
    # materialised once: XLA would otherwise recompute cos and sin inside every consumer fusion
    phase = lax.optimization_barrier((jnp.cos(angle), jnp.sin(angle)))
  # a token's write seen from its chunk's start (phase removed): w_m conj(p_m)
  write = w if phase is None else _mul(w, (phase[0], -phase[1]))
  scores = jnp.matmul(q, k) * decay
  o_local = _unpack(jnp.matmul(scores, _scale_values(write, v)), d, rotating)
  if phase is not None:  # back from the chunk's start to token r: times p_r
    o_local = _mul((phase[0][..., None], phase[1][..., None]), o_local)
  # the chunk's own state from a zero start: sum_m D[L-1, m] w_m k_m v_m^T
  to_end = (write[0] * decay[..., -1, :], None if write[1] is None
            else write[1] * decay[..., -1, :])
  if phase is not None:
    to_end = _mul(to_end, (phase[0][..., -1:], phase[1][..., -1:]))
  s_local = _unpack(jnp.matmul(k, _scale_values(to_end, v)), d, rotating)
  # the chunk's total decay prod c_u and the decay from its start to each token
  from_start = (jnp.exp(prefix_sums(log_mod)), None)
  total = (jnp.exp(jnp.sum(log_mod, axis=-1)), None)
  if phase is not None:
    from_start = _mul(from_start, phase)
    total = _mul(total, (phase[0][..., -1], phase[1][..., -1]))
  # states entering each chunk: S_c = total_c S_{c-1} + s_local_c (complex only across chunks)
  as_complex = lambda x: x[0] if x[1] is None else lax.complex(x[0], x[1])
  s0 = as_complex(state)
  states, last = linear_scan(as_complex(total)[..., None, None], as_complex(s_local), s0,
                             method=scan_method)
  entering = jnp.concatenate([s0[None], states[:-1]], axis=0)  # (C, ..., H, n, d)
  packed = (jnp.concatenate([jnp.real(entering), jnp.imag(entering)], axis=-1) if rotating
            else entering)
  carried = _unpack(jnp.matmul(q, packed), d, rotating)
  carried = _mul((from_start[0][..., None], None if from_start[1] is None
                  else from_start[1][..., None]), carried)
  o = (o_local[0] + carried[0],
       None if not rotating else o_local[1] + carried[1])
  split = (jnp.real(last), jnp.imag(last)) if rotating else (last, None)
  return o, split


def chunkwise_local(q, k, v, log_c, w, state=None, *, chunk: int | str = "auto",
                    scan_method: str = "auto", block: int = BLOCK):
  """o_i = S_i^T q_i for S_i = c_i S_{i-1} + w_i k_i v_i^T, on one device, chunk by chunk.

  Args:
    q, k: (..., N, H, n) real queries and keys.
    v: (..., N, H, d) real values.
    log_c: (..., N, H) log of the decay c_u: real, or complex for a rotating decay (finite).
    w: (..., N, H) write weights, real or complex.
    state: (..., H, n, d) S before position 0 (None: zeros, a fresh sequence).
    chunk: tokens per matmul chunk, or "auto" (`resolve_chunk`).
    scan_method: the `linear_scan` method across chunks ("auto": associative on accelerators).
    block: tokens per jax.checkpoint-ed block (rounded to whole chunks).

  Returns:
    (o (..., N, H, d), state (..., H, n, d) = S_{N-1}): complex when log_c, w or state is
    complex, else real. Chaining calls through `state` equals one call on the concatenated
    sequence.

  Raises:
    ValueError: complex q, k or v, shapes that do not match, or N = 0.
  """
  q, k, v, log_c, w = map(jnp.asarray, (q, k, v, log_c, w))
  if any(jnp.iscomplexobj(x) for x in (q, k, v)):
    raise ValueError("q, k and v must be real (a complex decay or write weight carries phases)")
  if q.ndim < 3 or q.shape != k.shape:
    raise ValueError(f"q and k must have one shape (..., N, H, n); got {q.shape}, {k.shape}")
  if v.shape[:-1] != q.shape[:-1] or log_c.shape != q.shape[:-1] or w.shape != q.shape[:-1]:
    raise ValueError(f"v (..., N, H, d), log_c and w (..., N, H) must match q {q.shape}; got "
                     f"{v.shape}, {log_c.shape}, {w.shape}")
  n_tok, d = q.shape[-3], v.shape[-1]
  if n_tok == 0:
    raise ValueError("chunkwise_local needs N >= 1")
  dtype = jnp.result_type(q, k, v, log_c, w, *(() if state is None else (state,)))
  real = jnp.real(jnp.zeros((), dtype)).dtype
  rotating = jnp.issubdtype(dtype, jnp.complexfloating)
  state_shape = q.shape[:-3] + q.shape[-2:] + v.shape[-1:]
  state = (jnp.zeros(state_shape, dtype) if state is None
           else jnp.broadcast_to(jnp.asarray(state, dtype), state_shape))
  chunk = min(resolve_chunk(chunk), n_tok)
  scan_method = resolve_scan_method(scan_method)
  n_chunks = -(-n_tok // chunk)
  pad = n_chunks * chunk - n_tok

  def chunk_major(x, per_token_axes, token_last=False):
    """(..., N, H, .) -> (C, ..., H, L, .) (or (C, ..., H, ., L)), zero-padded to whole chunks."""
    axis = x.ndim - 1 - per_token_axes  # the token axis
    x = jnp.pad(x, [(0, pad) if i == axis else (0, 0) for i in range(x.ndim)])
    x = x.reshape(*x.shape[:axis], n_chunks, chunk, *x.shape[axis + 1:])
    x = jnp.moveaxis(x, axis, 0)  # (C, ..., L, H, .)
    return jnp.moveaxis(x, axis + 1, -1 if token_last else axis + 2)

  # padding: log c = 0 (c = 1) and w = 0 leave S unchanged; padded outputs are dropped
  theta = jnp.imag(log_c).astype(real) if jnp.iscomplexobj(log_c) else None
  xs = [chunk_major(q.astype(real), 2), chunk_major(k.astype(real), 2, token_last=True),
        chunk_major(v.astype(real), 2)]
  xs += [chunk_major(jnp.real(log_c).astype(real), 1),
         None if theta is None else chunk_major(theta, 1),
         chunk_major(jnp.real(w).astype(real), 1),
         chunk_major(jnp.imag(w).astype(real), 1) if jnp.iscomplexobj(w) else None]
  split = (jnp.real(state).astype(real), jnp.imag(state).astype(real)) if rotating else (
      state, None)

  def block_fn(carry, blk):
    qb, kb, vb, lb, tb, wr, wi = blk
    o, carry = _chunks(qb, kb, vb, lb, tb, (wr, wi), carry, scan_method)
    return carry, o

  per_block = max(1, min(block, n_chunks * chunk) // chunk)
  if n_chunks <= per_block:
    last, o = block_fn(split, xs)
  else:  # the backward pass keeps one state per block and one block's residuals at a time
    last, o = checkpointed_chunks(block_fn, split, xs, chunk=per_block)
  o = o[0] if o[1] is None else lax.complex(o[0], o[1])  # (C, ..., H, L, d)
  o = jnp.moveaxis(jnp.moveaxis(o, 0, -4), -2, -3)  # (..., C, L, H, d)
  o = o.reshape(*o.shape[:-4], n_chunks * chunk, *o.shape[-2:])[..., :n_tok, :, :]
  last = last[0] if last[1] is None else lax.complex(last[0], last[1])
  return o.astype(dtype), last.astype(dtype)


def _incoming_state(log_totals, s_locals, s0, axis: str, size: int):
  """Exclusive combine of per-shard maps S -> exp(log_total) S + S_local: S entering this shard.

  log_totals (S, ..., H) and s_locals (S, ..., H, n, d) all-gathered; s0 (..., H, n, d) enters
  shard 0. Returns (S entering this shard, S after the last shard).
  """
  s, states = s0, []
  for k in range(size):  # the mesh axis size is small and static
    states.append(s)
    s = jnp.exp(log_totals[k])[..., None, None] * s + s_locals[k]
  return jnp.stack(states)[lax.axis_index(axis)], s


def sequence_parallel_chunkwise(q, k, v, log_c, w, state, *, mesh, axis: str, chunk: int | str,
                                scan_method: str):
  """`chunkwise` with the sequence axis (-3 of q, k, v; -2 of log_c, w) split over `axis`.

  Each shard runs `chunkwise_local` from a zero state, giving its outputs O_local and the map
  S -> C S + S_local it applies to an incoming state (C = prod c over the shard). The maps are
  all-gathered and composed in order (an exclusive combine, as for the resolvent's Mobius
  products), and each shard adds what its incoming state contributes:
  o_i += (prod_{u<=i} c_u) S_in^T q_i, with the prefix products from one `linear_scan` of c
  (products of the factors, exact to rounding even when they underflow).
  """
  size = mesh.shape[axis]
  dtype = jnp.result_type(q, k, v, log_c, w)
  state_shape = q.shape[:-3] + q.shape[-2:] + v.shape[-1:]
  state = (jnp.zeros(state_shape, dtype) if state is None
           else jnp.broadcast_to(jnp.asarray(state), state_shape).astype(dtype))
  lead = (None,) * (q.ndim - 3)
  tok_spec, gate_spec = P(*lead, axis, None, None), P(*lead, axis, None)

  def local(q_s, k_s, v_s, l_s, w_s, s0):
    o, s_local = chunkwise_local(q_s, k_s, v_s, l_s, w_s, None, chunk=chunk,
                                 scan_method=scan_method)
    log_totals = lax.all_gather(jnp.sum(l_s, axis=-2), axis, axis=0)
    s_in, s_out = _incoming_state(log_totals, lax.all_gather(s_local, axis, axis=0), s0,
                                  axis, size)
    c = jnp.moveaxis(jnp.exp(l_s), -2, 0)  # (N_s, ..., H)
    prefix, _ = linear_scan(c, jnp.zeros_like(c), jnp.ones(c.shape[1:], c.dtype),
                            method=scan_method)
    prefix = jnp.moveaxis(prefix, 0, -2)
    o = o + prefix[..., None] * jnp.einsum("...thn,...hnd->...thd", q_s, s_in)
    return o.astype(dtype), s_out[None].astype(dtype)

  f = jax.shard_map(local, mesh=mesh,
                    in_specs=(tok_spec, tok_spec, tok_spec, gate_spec, gate_spec, P()),
                    out_specs=(tok_spec, P(axis)), axis_names={axis}, check_vma=False)
  o, lasts = f(q, k, v, log_c, w, state)
  return o, lasts[-1]


def chunkwise(q, k, v, log_c, w, state=None, *, chunk: int | str = "auto",
              scan_method: str = "auto"):
  """o_i = S_i^T q_i for S_i = c_i S_{i-1} + w_i k_i v_i^T (the public entry; DESIGN §2.11).

  Runs `chunkwise_local` on one device, or `sequence_parallel_chunkwise` when traced under a
  mesh whose "sequence" axis has more than one device and divides N
  (`sharded_scan.sequence_mesh_for`). Arguments and returns as `chunkwise_local`.
  """
  log_c = jnp.asarray(log_c)
  if (mesh := sequence_mesh_for(log_c)) is not None:
    return sequence_parallel_chunkwise(q, k, v, log_c, w, state, mesh=mesh, axis=SEQUENCE_AXIS,
                                       chunk=chunk, scan_method=resolve_scan_method(scan_method))
  return chunkwise_local(q, k, v, log_c, w, state, chunk=chunk, scan_method=scan_method)

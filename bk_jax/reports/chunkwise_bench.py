"""The chunkwise kernel against the per-token recurrence it replaces, over chunk lengths.

Times, for one keyed-mixer shape (batch, N, heads, key dim n, value dim d), the jitted forward
and forward+backward of `ops.chunkwise.chunkwise_local` at each chunk length, and of the
per-token form (the keyed values k ⊗ v through `ops.linear_scan`, the state materialised at every
token, as `bk_mix_method="recurrent"`), with XLA's temporary memory of each compiled program.
Prints medians and the ratio to the recurrence (scripts/bench_chunkwise.py).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from bk_jax.ops.chunkwise import chunkwise_local
from bk_jax.ops.linear_scan import linear_scan
from bk_jax.reports.throughput import _median_seconds


def keyed_inputs(batch: int, n_tok: int, heads: int, n: int, d: int, rotating: bool = True):
  """Random q, k, v and a BK-like decay (|c| < 1, arg c in (-pi, 0) when rotating)."""
  rng = np.random.default_rng(0)
  q, k = (jnp.asarray(rng.normal(size=(batch, n_tok, heads, n)), jnp.float32) for _ in range(2))
  v = jnp.asarray(rng.normal(size=(batch, n_tok, heads, d)), jnp.float32)
  mod = rng.uniform(0.5, 1.0, (batch, n_tok, heads))
  if rotating:
    c = mod * np.exp(1j * rng.uniform(-np.pi, 0, mod.shape))
    return q, k, v, jnp.asarray(np.log(c), jnp.complex64), jnp.asarray(c, jnp.complex64)
  return q, k, v, jnp.asarray(np.log(mod), jnp.float32), jnp.asarray(mod, jnp.float32)


def recurrent(q, k, v, log_c, w):
  """The per-token form: S_i (n * d per head) at every token by a sequential affine scan."""
  b, t, h, n = q.shape
  x = (k[..., :, None] * v[..., None, :]).reshape(b, t, h, -1)
  time = lambda a: jnp.moveaxis(a, 1, 0)
  y, _ = linear_scan(time(jnp.exp(log_c))[..., None], time(w[..., None] * x),
                     jnp.zeros((b, h, x.shape[-1]), jnp.result_type(log_c, w)),
                     method="sequential")
  return jnp.einsum("bthn,bthnd->bthd", q, time(y).reshape(b, t, h, n, -1))


def time_one(fn, args, backward: bool, repeats: int) -> dict:
  loss = lambda *a: jnp.sum(jnp.abs(fn(*a)) ** 2)
  f = jax.jit(jax.grad(loss, argnums=(0, 1, 2, 3, 4)) if backward else fn)
  compiled = f.lower(*args).compile()
  jax.block_until_ready(compiled(*args))
  mem = compiled.memory_analysis()
  return dict(seconds=_median_seconds(lambda: compiled(*args), repeats),
              temp_mb=None if mem is None else mem.temp_size_in_bytes / 2**20)


def run(batch: int, n_tok: int, heads: int, n: int, d: int, chunks: list[int], repeats: int,
        rotating: bool = True) -> list[dict]:
  """Rows (form, chunk, pass, seconds, temp_mb, ratio to the recurrence), printed as they come."""
  args = keyed_inputs(batch, n_tok, heads, n, d, rotating)
  forms = [("recurrent", None, recurrent)] + [
      ("chunkwise", c, lambda *a, c=c: chunkwise_local(*a, chunk=c)[0]) for c in chunks]
  rows, base = [], {}
  print(f"{'form':>10} {'chunk':>6} {'pass':>8} {'median ms':>10} {'temp MB':>8} {'vs recurrent':>13}")
  for name, chunk, fn in forms:
    for backward in (False, True):
      r = {"form": name, "chunk": chunk, "pass": "fwd+bwd" if backward else "fwd",
           **time_one(fn, args, backward, repeats)}
      base.setdefault(r["pass"], r["seconds"])
      r["ratio"] = base[r["pass"]] / r["seconds"]
      rows.append(r)
      print(f"{name:>10} {str(chunk or '-'):>6} {r['pass']:>8} {1e3 * r['seconds']:10.1f} "
            f"{r['temp_mb'] or 0:8.1f} {r['ratio']:12.2f}x", flush=True)
  return rows

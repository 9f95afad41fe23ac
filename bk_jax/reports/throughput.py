"""Timing one jitted training step per (model kind, N) at equal parameters and tokens per step.

Shared by scripts/benchmark.py (bk_jax.reports.benchmark), scripts/ablations.py and the GPU
suite, so they all time exactly the same step. `bench_one` additionally returns every timed
step, XLA's FLOP count of the compiled step and an MFU estimate against a measured matmul peak.
"""

from __future__ import annotations

import copy
import math
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from bk_jax.models import build_model, default_model_config
from bk_jax.sharding import make_mesh
from bk_jax.train.cli import DEFAULT_CONFIG, load_config
from bk_jax.train.step import build_sharded_step


def mamba2_headdim(d_model: int) -> int:
  """Mamba-2's head width in the reports at width d_model: the reference's 64 wherever it
  divides d_inner (every d_model that is a multiple of 32), else the largest power of two that
  does (the tiny models of --quick runs), as the reports fit the Transformer's heads to d_model."""
  m = default_model_config().mamba2
  return math.gcd(m.headdim, m.expand * d_model)


def model_config(kind: str, d_model: int, n_layers: int, vocab: int, **overrides):
  c = default_model_config()
  c.kind, c.d_model, c.n_layers, c.vocab_size = kind, d_model, n_layers, vocab
  c.d_ff = 4 * d_model
  c.remat, c.scan_layers = "full", True
  c.transformer.n_heads = max(1, d_model // 32)
  c.mamba2.headdim = mamba2_headdim(d_model)
  for k, v in overrides.items():
    c[k] = v
  return c


def param_count(cfg) -> int:
  abstract = nnx.eval_shape(lambda: build_model(cfg))
  return sum(x.size for x in jax.tree.leaves(nnx.state(abstract, nnx.Param)))


def layers_for_params(model_cfg, target: int) -> int:
  """The layer count of `model_cfg` whose parameter total is closest to `target`.

  The one layer-matching rule of the reports (equal-parameter comparisons): the parameter count
  is affine in n_layers, so it is measured at 1 and 2 layers and solved for `target`.

  Args:
    model_cfg: a model config (kind, widths, vocab_size); its own n_layers is ignored.
    target: parameter count to approach.
  Returns:
    n_layers >= 1.
  """
  m = copy.deepcopy(model_cfg)
  m.n_layers = 1
  base = param_count(m)
  m.n_layers = 2
  per_layer = param_count(m) - base
  return max(1, round((target - (base - per_layer)) / per_layer))


def _flops(compiled) -> float | None:
  try:
    ca = compiled.cost_analysis()
    if isinstance(ca, (list, tuple)):
      ca = ca[0]
    f = float(ca.get("flops", 0.0))
    return f if f > 0 else None
  except Exception:  # cost analysis is optional on some backends
    return None


def bench_one(cfg, n: int, tokens_per_step: int, repeats: int) -> dict:
  """Times the trainer's own jitted step (B = max(1, tokens_per_step // n)): 1 warm-up + `repeats`.

  The step is `bk_jax.train.step.build_sharded_step` with configs/base.py's optimizer
  (clipping, AdamW, the learning-rate schedule) and the monitors folded in, jitted on a
  one-device mesh with the state donated: what `scripts/train.py` runs per batch.
  """
  config = load_config(DEFAULT_CONFIG)
  config.model = cfg
  state, step_fn, _ = build_sharded_step(config, make_mesh(config.mesh, jax.devices()[:1]),
                                         repeats + 1)
  n_params = sum(x.size for x in jax.tree.leaves(state.params))
  batch = max(1, tokens_per_step // n)
  tokens = jax.random.randint(jax.random.key(0), (batch, n + 1), 0, cfg.vocab_size, jnp.int32)
  data = {"inputs": tokens[:, :-1], "targets": tokens[:, 1:],
          "mask": jnp.ones((batch, n), jnp.float32)}
  t0 = time.perf_counter()
  compiled = step_fn.lower(state, data).compile()
  compile_s = time.perf_counter() - t0
  mem = compiled.memory_analysis()
  peak = (mem.argument_size_in_bytes + mem.output_size_in_bytes + mem.temp_size_in_bytes
          - mem.alias_size_in_bytes)
  times = []
  for i in range(repeats + 1):  # step 0 is a warm-up
    t0 = time.perf_counter()
    state, metrics = compiled(state, data)
    loss = metrics["loss"].block_until_ready()
    if i:
      times.append(time.perf_counter() - t0)
  if not jnp.isfinite(loss):
    raise FloatingPointError(f"{cfg.kind} N={n}: non-finite loss {loss}")
  step = statistics.median(times)
  flops = _flops(compiled)
  return {"kind": cfg.kind, "n": n, "batch": batch, "tokens_per_step": batch * n,
          "step_s": step, "step_s_min": min(times), "step_s_max": max(times),
          "step_s_all": times, "tokens_per_s": batch * n / step, "peak_mb": peak / 2**20,
          "peak_bytes_per_token": peak / (batch * n), "compile_s": compile_s,
          "n_params": int(n_params), "xla_flops_per_step": flops,
          "flops_6nd_per_step": 6.0 * n_params * batch * n}


def matmul_peak_flops(size: int = 1024, repeats: int = 5) -> float:
  """Measured float32 matmul FLOP/s of this device (median of `repeats`): the MFU denominator.

  No vendor peak is assumed; on a shared CPU this is what a large dense GEMM actually achieves now.
  """
  a = jax.random.normal(jax.random.key(1), (size, size), jnp.float32)
  f = jax.jit(lambda x: x @ x)
  f(a).block_until_ready()
  ts = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    f(a).block_until_ready()
    ts.append(time.perf_counter() - t0)
  return 2.0 * size ** 3 / float(np.median(ts))


def add_mfu(row: dict, peak_flops: float) -> dict:
  """MFU = model FLOP/s over the measured matmul peak, for XLA's count and for 6·params·tokens."""
  for key, out in (("xla_flops_per_step", "mfu_xla"), ("flops_6nd_per_step", "mfu_6nd")):
    f = row.get(key)
    row[out] = None if not f else f / row["step_s"] / peak_flops
  return row


# --- the BK resolvent alone (scripts/bench_ops.py and the GPU suite's ops grid) ---

BYTES_PER_ELEMENT = 4 + 8  # float32 v read, complex64 g written


def _median_seconds(fn, repeats: int, max_s: float | None = None) -> float:
  """Median wall time of `repeats` calls; with max_s, stops early once that much time is spent."""
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - t0)
    if max_s is not None and sum(times) > max_s:
      break
  return statistics.median(times)


def bytes_per_element(op: str, d: int) -> int:
  """Bytes the op must touch per (position, head): causal_green also reads x and writes y."""
  return BYTES_PER_ELEMENT if op == "diag" else 4 + 4 * d + 8 * d


def roofline_ns_per_element(n_elements: int, repeats: int,
                            nbytes: int = BYTES_PER_ELEMENT) -> float:
  """ns/element of a numpy copy moving the same bytes (the memory-bandwidth floor)."""
  src = np.ones(n_elements * nbytes // 4, np.float32)
  dst = np.empty_like(src)
  np.copyto(dst, src)
  return _median_seconds(lambda: np.copyto(dst, src), repeats) / n_elements * 1e9


def bench_resolvent(method: str, n: int, heads: int, backward: bool, repeats: int,
                    max_s: float | None = None, op: str = "diag", d: int = 8) -> dict:
  """Times jitted `resolvent.causal_diag` or `causal_green` (forward, or gradient w.r.t. v).

  Args:
    method: a `causal_diag` method ("auto" is resolved and recorded in "method_ran").
    n, heads: sequence length and heads (batch 1).
    backward: time forward+backward instead of forward only.
    repeats: timed calls after one warm-up (median reported).
    max_s: stop repeating once this many seconds are spent (slow cells still get one timing).
    op: "diag" (causal_diag) or "green" (causal_green with fixed values x of d per head).
    d: values per head for op "green".

  Returns:
    dict with method, method_ran, N, H, pass, seconds, tokens_per_s (positions/s),
    ns_per_element (per position and head), temp_bytes (XLA temporaries) and temp_over_g.
  """
  from bk_jax.ops import resolvent

  rng = np.random.default_rng(0)
  v = jnp.asarray(rng.normal(size=(n, heads)), jnp.float32)
  x = jnp.asarray(rng.normal(size=(n, heads, d)), jnp.float32) if op == "green" else None
  hopping = jnp.ones((heads,), jnp.float32)
  z = jnp.asarray(np.linspace(-3.5, -0.5, heads) + 1j * np.geomspace(0.1, 1.0, heads),
                  jnp.complex64)

  def forward(v_):
    if op == "green":  # values x fixed; the gradient is taken w.r.t. v as for causal_diag
      return resolvent.causal_green(v_, x, hopping=hopping, z=z, method=method)[0]
    return resolvent.causal_diag(v_, hopping=hopping, z=z, method=method)[0]

  def loss(v_):
    return jnp.sum(jnp.abs(forward(v_)) ** 2)

  fn = jax.jit(jax.grad(loss) if backward else forward)
  compiled = fn.lower(v).compile()
  mem = compiled.memory_analysis()
  temp_bytes = getattr(mem, "temp_size_in_bytes", None) if mem is not None else None
  jax.block_until_ready(compiled(v))  # warm-up
  seconds = _median_seconds(lambda: compiled(v), repeats, max_s)
  g_bytes = n * heads * 8 * (d if op == "green" else 1)  # the output: g, or y for green
  return {
      "op": op if op == "diag" else f"green(d={d})",
      "method": method,
      "method_ran": resolvent.resolve_method(method),
      "N": n,
      "H": heads,
      "pass": "fwd+bwd" if backward else "fwd",
      "seconds": seconds,
      "tokens_per_s": n / seconds,
      "ns_per_element": seconds / (n * heads) * 1e9,
      "temp_bytes": temp_bytes,
      "temp_over_g": None if temp_bytes is None else temp_bytes / g_bytes,
  }


def resolvent_grid(methods: list[str], lengths: list[int], heads_list: list[int], repeats: int,
                   op: str = "diag", d: int = 8) -> list[dict]:
  """`bench_resolvent` over methods x N x H x (fwd, fwd+bwd), each against the copy roofline.

  Prints one table line per cell as it finishes (scripts/bench_ops.py).

  Args:
    methods, lengths, heads_list: the grid.
    repeats: timed calls per cell (median) and per roofline measurement.
    op, d: see `bench_resolvent`.
  Returns:
    The rows of `bench_resolvent` plus roofline_ns_per_element and ratio_to_roofline.
  """
  header = (f"{'method':>12} {'N':>7} {'H':>4} {'pass':>8} {'ns/elem':>9} {'roofline':>9} "
            f"{'ratio':>7} {'temp MiB':>9} {'temp/g':>7}")
  print(header)
  print("-" * len(header))
  rows = []
  for n in lengths:
    for heads in heads_list:
      roof = roofline_ns_per_element(n * heads, repeats, bytes_per_element(op, d))
      for method in methods:
        for backward in (False, True):
          row = bench_resolvent(method, n, heads, backward, repeats, op=op, d=d)
          row["roofline_ns_per_element"] = roof
          row["ratio_to_roofline"] = row["ns_per_element"] / roof
          rows.append(row)
          temp = "n/a" if row["temp_bytes"] is None else f"{row['temp_bytes'] / 2**20:9.1f}"
          ratio_g = "n/a" if row["temp_over_g"] is None else f"{row['temp_over_g']:7.2f}"
          print(f"{method:>12} {n:>7} {heads:>4} {row['pass']:>8} {row['ns_per_element']:9.2f} "
                f"{roof:9.2f} {row['ratio_to_roofline']:7.1f} {temp:>9} {ratio_g:>7}", flush=True)
  return rows

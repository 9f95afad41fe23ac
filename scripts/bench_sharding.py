"""Step time and per-device memory of the sharded train step on fake CPU devices.

    python scripts/bench_sharding.py                       # docs/results.md's table: N = 131,072, 4 rows
    python scripts/bench_sharding.py --seq_len 8192 --meshes 1,1,1,8 2,1,1,4 --batch 8

A row is `MESH[:BATCH]`: MESH is `data,fsdp,tensor,sequence` over all the fake devices, or `1dev`
(one device, no sharding); BATCH is that row's global batch (default --batch). The default rows
are those of docs/results.md: batch 8 on (1,1,1,8) and (8,1,1,1), batch 1 on (1,1,1,8) and on one device.
Per mesh (data, fsdp, tensor, sequence) it builds a tiny ResNet-BK LM, creates the sharded
state, compiles the jitted train step and prints the XLA memory analysis of the compiled step
(per device: arguments, outputs, temporaries, generated code) and the median wall time of
`--steps` steps after one warm-up step. Fake CPU devices share the host's cores, so the times
compare layouts on this machine; they are not a scaling measurement.
"""

from __future__ import annotations

import argparse
import os
import time


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--devices", type=int, default=8, help="fake CPU devices (XLA_FLAGS)")
  p.add_argument("--seq_len", type=int, default=131_072)
  p.add_argument("--batch", type=int, default=8, help="global batch (sequences)")
  p.add_argument("--meshes", nargs="+", default=["1,1,1,8", "8,1,1,1", "1,1,1,8:1", "1dev:1"],
                 metavar="MESH[:BATCH]", help="rows: data,fsdp,tensor,sequence or 1dev, optional :batch")
  p.add_argument("--steps", type=int, default=3)
  p.add_argument("--d_model", type=int, default=32)
  p.add_argument("--n_heads", type=int, default=8)
  p.add_argument("--n_layers", type=int, default=1)
  p.add_argument("--vocab", type=int, default=64)
  a = p.parse_args(argv)
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                             f" --xla_force_host_platform_device_count={a.devices}")
  # imported after XLA_FLAGS is set: the fake devices exist only if jax starts with it
  import jax
  import numpy as np

  from bk_jax.sharding import make_mesh, shard_batch
  from bk_jax.train.cli import DEFAULT_CONFIG, load_config
  from bk_jax.train.step import build_sharded_step

  print(f"jax {jax.__version__} | {jax.device_count()} x {jax.devices()[0].platform} devices | "
        f"N={a.seq_len:,} | global batch {a.batch} | d_model {a.d_model}, heads {a.n_heads}, "
        f"layers {a.n_layers}, vocab {a.vocab}")
  gib = 2.0 ** 30
  table = []
  for row in a.meshes:
    spec, _, nb = row.partition(":")
    nb = int(nb) if nb else a.batch
    one = spec == "1dev"
    shape = (1, 1, 1, 1) if one else tuple(int(x) for x in spec.split(","))
    if len(shape) != 4:
      p.error(f"mesh {spec!r}: give data,fsdp,tensor,sequence or 1dev")
    toks = np.random.default_rng(0).integers(0, a.vocab, size=(nb, a.seq_len + 1), dtype=np.int32)
    batch = dict(inputs=toks[:, :-1], targets=toks[:, 1:], mask=np.ones((nb, a.seq_len), np.float32))
    cfg = load_config(DEFAULT_CONFIG)
    m = cfg.model
    m.vocab_size, m.d_model, m.n_heads, m.d_ff, m.n_layers = (a.vocab, a.d_model, a.n_heads,
                                                              2 * a.d_model, a.n_layers)
    cfg.train.lr, cfg.train.warmup_steps = 3e-3, 2
    cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor, cfg.mesh.sequence = shape
    mesh = make_mesh(cfg.mesh, devices=jax.devices()[:1] if one else None)
    state, step, _ = build_sharded_step(cfg, mesh, 20)
    b = shard_batch(batch, mesh)
    t0 = time.perf_counter()
    compiled = step.lower(state, b).compile()
    t_compile = time.perf_counter() - t0
    m = compiled.memory_analysis()
    state, metrics = compiled(state, b)  # warm-up
    jax.block_until_ready(metrics)
    times = []
    for _ in range(a.steps):
      t0 = time.perf_counter()
      state, metrics = compiled(state, b)
      jax.block_until_ready(metrics)
      times.append(time.perf_counter() - t0)
    t = float(np.median(times))
    per_dev = (m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
               - m.alias_size_in_bytes)
    table.append(f"| {a.seq_len:,} | {nb} | {'1 device' if one else '(' + spec + ')'} | {t:.2f} s | "
                 f"{nb * a.seq_len / t:,.0f} | {per_dev / gib:.3f} GiB |")
    print(f"mesh {spec:>9} (data,fsdp,tensor,sequence) batch {nb}: step {t:7.3f} s "
          f"({nb * a.seq_len / t:,.0f} tokens/s) | per-device memory {per_dev / gib:6.3f} GiB "
          f"(args {m.argument_size_in_bytes / gib:.3f}, out {m.output_size_in_bytes / gib:.3f}, "
          f"temp {m.temp_size_in_bytes / gib:.3f}, aliased {m.alias_size_in_bytes / gib:.3f}) | "
          f"compile {t_compile:.1f} s | loss {float(metrics['loss']):.4f}", flush=True)
  print("\n| N | global batch | mesh (data,fsdp,tensor,sequence) | step | tokens/s | per-device memory |\n"
        "|---|---|---|---|---|---|\n" + "\n".join(table))


if __name__ == "__main__":
  main()

"""Per-device memory (and an MFU estimate) of a config's sharded train step, compiled, not run.

    python scripts/plan_memory.py --config configs/bk_1b.py \
        --mesh data=1,fsdp=8,tensor=1,sequence=1 --device_memory_gb 80
    python scripts/plan_memory.py --config configs/bk_7b.py --find_min_mesh --device_memory_gb 80
    python scripts/plan_memory.py --config configs/bk_1b.py --seq_len 32768 --config.model.n_layers=4

Creates fake CPU devices (XLA_FLAGS=--xla_force_host_platform_device_count, set here before JAX
is imported), builds the sharded train state with jax.eval_shape (nothing allocated), compiles
the sharded train step for the mesh and prints XLA's per-device memory and cost analysis
(bk_jax.reports.memory_plan). --find_min_mesh tries 8, 16, 32, ... devices (fsdp as wide as the
global batch allows, the rest on the sequence axis) and stops at the first that fits.
Writes <out>/<config>_N<seq>_<mesh>.txt/.json.
"""

from __future__ import annotations

import argparse
import math
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--config", required=True, help="config file; --config.a.b=value overrides")
  p.add_argument("--mesh", default="", help="data=1,fsdp=8,tensor=1,sequence=1 (default: the "
                 "config's mesh with data=-1 read as 1)")
  p.add_argument("--seq_len", type=int, default=0, help="default: the longest trained length")
  p.add_argument("--device_memory_gb", type=float, default=80.0)
  p.add_argument("--find_min_mesh", action="store_true")
  p.add_argument("--max_devices", type=int, default=64, help="largest mesh --find_min_mesh tries")
  p.add_argument("--peak_tflops", type=float, default=989.0,
                 help="dense peak of the target device (default: H100 SXM bf16)")
  p.add_argument("--hbm_tbps", type=float, default=3.35, help="default: H100 SXM HBM3")
  p.add_argument("--target_platform", default="gpu", help="resolves resolvent_method 'auto'")
  p.add_argument("--out", default=os.path.join("results", "scaling", "memory_plan"))
  argv = sys.argv[1:] if argv is None else list(argv)
  if any(a in ("-h", "--help") for a in argv):
    p.print_help()
    return 0
  
  from bk_jax.train.cli import parse_config_args
  from bk_jax.train.config_validation import ConfigError

  try:
    cfg, rest = parse_config_args(argv)
    a = p.parse_args(rest + ["--config", argv[argv.index("--config") + 1]])
    if a.find_min_mesh:
      n_dev = a.max_devices
    else:
      from bk_jax.reports.memory_plan import parse_mesh
      mesh = parse_mesh(a.mesh) if a.mesh else tuple(
          max(1, int(cfg.mesh[k])) for k in ("data", "fsdp", "tensor", "sequence"))
      n_dev = math.prod(mesh)
  except ConfigError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                             f" --xla_force_host_platform_device_count={n_dev}")
  from bk_jax.reports.memory_plan import plan_meshes

  try:
    res = plan_meshes(cfg, None if a.find_min_mesh else mesh,
                      config_name=os.path.splitext(os.path.basename(a.config))[0], out=a.out,
                      seq_len=a.seq_len, max_devices=a.max_devices,
                      device_memory_gb=a.device_memory_gb, target_platform=a.target_platform,
                      peak_tflops=a.peak_tflops, hbm_tbps=a.hbm_tbps)
  except ConfigError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  return 0 if res["found"] or not a.find_min_mesh else 1


if __name__ == "__main__":
  sys.exit(main())

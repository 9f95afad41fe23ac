"""Multi-host start-up on JAX's distributed runtime.

`maybe_initialize(config)` calls ``jax.distributed.initialize`` once, before any JAX
computation, when either

* the config has a ``distributed`` section with ``coordinator_address`` ("host:port" of
  process 0), ``num_processes`` and ``process_id`` (fields left at ""/0/-1 fall back to the
  environment), or
* the standard environment variables are set: ``JAX_COORDINATOR_ADDRESS`` plus
  ``JAX_NUM_PROCESSES`` and ``JAX_PROCESS_ID`` (or a cluster JAX auto-detects: SLURM, Open MPI,
  Kubernetes/TPU pods; then only ``JAX_COORDINATOR_ADDRESS`` or nothing is needed).

Nothing set: a single-process run, and nothing happens. After initialisation `jax.devices()`
spans every process; the mesh (bk_jax.sharding.make_mesh) covers all of them, each process
feeds its own slice of the batch (the data pipelines shard by `jax.process_index()`), only
process 0 writes TensorBoard and the results file, and orbax checkpoints are written
collectively by every process. On CPU the cross-process collectives use gloo.
"""

from __future__ import annotations

import os

import jax

ENV_ADDRESS = "JAX_COORDINATOR_ADDRESS"
ENV_NUM_PROCESSES = "JAX_NUM_PROCESSES"
ENV_PROCESS_ID = "JAX_PROCESS_ID"


def _section(config):
  if config is None:
    return {}
  d = config.get("distributed", None) if hasattr(config, "get") else None
  return {} if d is None else dict(d)


def settings(config=None) -> dict | None:
  """{coordinator_address, num_processes, process_id} to initialise with, or None (one process)."""
  d = _section(config)
  address = d.get("coordinator_address") or os.environ.get(ENV_ADDRESS) or None
  num = d.get("num_processes") or int(os.environ.get(ENV_NUM_PROCESSES, "0")) or None
  pid = d.get("process_id", -1)
  if pid is None or pid < 0:
    pid = int(os.environ[ENV_PROCESS_ID]) if ENV_PROCESS_ID in os.environ else None
  if address is None:
    return None
  if num == 1:
    return None
  return dict(coordinator_address=address, num_processes=num, process_id=pid)


def maybe_initialize(config=None, *, timeout_s: int = 120) -> bool:
  """Initialises the distributed runtime when configured (see module docstring).

  Returns True when running multi-process. Idempotent. Must run before the first JAX
  computation of the process.
  """
  if jax.distributed.is_initialized():
    return True
  s = settings(config)
  if s is None:
    return False
  jax.config.update("jax_cpu_collectives_implementation", "gloo")  # CPU only; gloo is the default
  jax.distributed.initialize(**s, initialization_timeout=timeout_s)
  return True


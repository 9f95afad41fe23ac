"""Train state (a pytree), the device mesh and the shardings of state and batches.

The sharding engineer swaps `LOGICAL_AXIS_RULES` (logical parameter axis -> mesh axes) and
`batch_spec`; everything else (jit in/out shardings, checkpoint restore targets) derives from
`state_shardings` / `batch_sharding`.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import nnx, struct
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

from bk_jax.train.config_validation import ConfigError
from bk_jax.train.monitors import MonitorState

MESH_AXES = ("data", "fsdp", "tensor", "sequence")
#: logical parameter axis name -> mesh axis (or None = replicated). Unknown names replicate.
LOGICAL_AXIS_RULES: dict[str, Any] = {}


@struct.dataclass
class TrainState:
  """Everything a step reads and writes. `params`/`model_state` are nnx.State (graphdef kept out)."""

  params: Any  # nnx.State of nnx.Param
  model_state: Any  # nnx.State of every other variable (rng counters, caches, ...)
  opt_state: Any
  step: jnp.ndarray  # global step (batches consumed, skipped ones included)
  lr_scale: jnp.ndarray  # learning-rate multiplier (lowered by divergence recovery)
  monitors: MonitorState


def make_mesh(mesh_cfg: ml_collections.ConfigDict, devices=None) -> jax.sharding.Mesh:
  """A (data, fsdp, tensor, sequence) mesh; mesh.data = -1 takes the devices left over."""
  devices = jax.devices() if devices is None else devices
  n = len(devices)
  other = mesh_cfg.fsdp * mesh_cfg.tensor * mesh_cfg.sequence
  data = mesh_cfg.data if mesh_cfg.data != -1 else n // other
  if data < 1 or data * other != n:
    raise ConfigError(
        f"mesh data={mesh_cfg.data} fsdp={mesh_cfg.fsdp} tensor={mesh_cfg.tensor} "
        f"sequence={mesh_cfg.sequence} does not cover the {n} available device(s)")
  shape = (data, mesh_cfg.fsdp, mesh_cfg.tensor, mesh_cfg.sequence)
  return jax.make_mesh(shape, MESH_AXES, axis_types=(AxisType.Auto,) * 4, devices=devices)


def data_parallel_size(mesh: jax.sharding.Mesh) -> int:
  return mesh.shape["data"] * mesh.shape["fsdp"]


def batch_spec() -> P:
  """Batches (B, N) split over the data-parallel axes; the sequence axis stays whole for now."""
  return P(("data", "fsdp"), None)


def batch_sharding(mesh: jax.sharding.Mesh) -> NamedSharding:
  return NamedSharding(mesh, batch_spec())


def _logical_to_mesh(names) -> P:
  if names is None:
    return P()
  return P(*(LOGICAL_AXIS_RULES.get(n) if n is not None else None for n in names))


def state_shardings(state: Any, mesh: jax.sharding.Mesh) -> Any:
  """NamedShardings for every leaf of `state` (concrete or abstract).

  Leaves inside an nnx.Variable carrying `out_sharding` (logical axes, set by
  nnx.with_partitioning) follow LOGICAL_AXIS_RULES; everything else is replicated.
  """

  def one(x):
    if isinstance(x, nnx.Variable):
      names = x.get_metadata().get("out_sharding", None)
      spec = _logical_to_mesh(names)
      return x.replace(NamedSharding(mesh, spec))
    return NamedSharding(mesh, P())

  return jax.tree.map(one, state, is_leaf=lambda x: isinstance(x, nnx.Variable))


def create_train_state(model: nnx.Module, tx: optax.GradientTransformation):
  """Splits `model` into (graphdef, TrainState) with a fresh optimizer and monitors."""
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  state = TrainState(params=params, model_state=rest, opt_state=tx.init(params),
                     step=jnp.int32(0), lr_scale=jnp.float32(1.0), monitors=MonitorState.zeros())
  return graphdef, state

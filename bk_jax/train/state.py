"""Train state (a pytree), the device mesh and the shardings of state and batches.

Mesh, logical-axis rules and shardings live in `bk_jax.sharding`; jit in/out shardings and
checkpoint restore targets derive from its `state_shardings` / `batch_sharding`.
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
import optax
from flax import nnx, struct

from bk_jax.sharding import create_sharded_state
from bk_jax.train.monitors import MonitorState


@struct.dataclass
class TrainState:
  """Everything a step reads and writes. `params`/`model_state` are nnx.State (graphdef kept out)."""

  params: Any  # nnx.State of nnx.Param
  model_state: Any  # nnx.State of every other variable (rng counters, caches, ...)
  opt_state: Any
  step: jnp.ndarray  # global step (batches consumed, skipped ones included)
  lr_scale: jnp.ndarray  # learning-rate multiplier (lowered by divergence recovery)
  monitors: MonitorState


def create_train_state(model: nnx.Module, tx: optax.GradientTransformation):
  """Splits `model` into (graphdef, TrainState) with a fresh optimizer and monitors."""
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  state = TrainState(params=params, model_state=rest, opt_state=tx.init(params),
                     step=jnp.int32(0), lr_scale=jnp.float32(1.0), monitors=MonitorState.zeros())
  return graphdef, state


def create_sharded_train_state(make_model, tx: optax.GradientTransformation, mesh):
  """(graphdef, state, shardings, abstract) with the state initialised directly into its shards.

  `make_model()` builds the model (e.g. ``lambda: build_model(cfg.model, rngs=nnx.Rngs(seed))``);
  it is traced by jax.eval_shape and run once under jit with out_shardings (no host copy).
  `abstract` (ShapeDtypeStructs with shardings) is the checkpoint-restore target on this mesh.
  """
  graphdef = nnx.split(nnx.eval_shape(make_model), nnx.Param, ...)[0]
  state, shardings, abstract = create_sharded_state(
      lambda: create_train_state(make_model(), tx)[1], mesh)
  return graphdef, state, shardings, abstract

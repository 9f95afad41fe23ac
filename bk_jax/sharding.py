"""Device mesh and partitioning rules (DESIGN §3, §5).

Mesh: four named axes ``(data, fsdp, tensor, sequence)`` from ``config.mesh`` (all 1 by default;
``data = -1`` takes the devices the other axes leave over), built with ``jax.make_mesh`` and
``AxisType.Auto`` so arrays are partitioned by their NamedShardings and XLA inserts the
collectives.

Partitioning: every parameter carries logical axis names (``nnx.with_partitioning``, names from
{"vocab", "embed", "mlp", "heads", "experts", "state", "conv", None}) and activations are
constrained by "activation_*" names; `LOGICAL_AXIS_RULES` (from ``config.mesh.rules``) maps both
onto mesh axes:

* parameters and the optimizer moments (which inherit the parameters' metadata) are sharded
  over ``fsdp`` along "embed" (ZeRO-3 style: XLA all-gathers a weight where it is used and
  reduce-scatters its gradient) and over ``tensor`` along the per-head / hidden / vocabulary
  axes (Megatron style);
* batches ``(B, N)`` are sharded over ``(data, fsdp)`` along B and over ``sequence`` along N,
  and so are the activations, pinned at block boundaries by `constrain` with the
  ``activation_*`` rules (otherwise XLA may gather a batch next to an fsdp-sharded weight);
  with ``mesh.sequence > 1`` the BK core runs `bk_jax.ops.sharded_scan` (local scan, exclusive
  2×2 Möbius combine across shards, local correction pass).

A mesh axis is used at most once per array and a dimension is only sharded when it divides by
the mesh axes' product (otherwise it is replicated), so odd sizes (a 259-token vocabulary) are
always legal.

State creation never materialises a host copy: `create_sharded_state` takes the abstract
state from ``jax.eval_shape`` and builds the real one inside ``jax.jit`` with ``out_shardings``,
so every device only ever allocates its own shards.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import jax
import numpy as np
from flax import nnx
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

from bk_jax.runtime.errors import ConfigError

MESH_AXES = ("data", "fsdp", "tensor", "sequence")
DATA_AXES = ("data", "fsdp")  # the batch axis is split over both (fsdp is data parallel too)

#: logical axis name -> mesh axis (or tuple of mesh axes, or None = replicated). The defaults of
#: ``config.mesh.rules`` (configs/base.py); `make_mesh` installs a config's rules (see `set_rules`).
#: Parameter axes (layers.py, bk.py, mamba.py, mamba2.py, transformer.py) and activation axes
#: (MaxText's ``activation_*`` names, `constrain`, bk_jax/models/lm.py and bk.py):
DEFAULT_RULES: dict[str, Any] = {
    # parameters
    "embed": "fsdp",
    "vocab": "tensor",
    "mlp": "tensor",
    "heads": "tensor",
    "experts": None,  # experts are replicated; their hidden ("mlp") axis is tensor-sharded
    "state": None,
    "conv": None,
    # activations: batch over (data, fsdp) (fsdp is data parallel too), tokens over sequence,
    # the residual stream's features replicated (Megatron style), per-head/vocab over tensor
    "activation_batch": DATA_AXES,
    "activation_length": "sequence",
    "activation_embed": None,
    "activation_heads": "tensor",
    "activation_vocab": "tensor",
}
LOGICAL_AXIS_RULES: dict[str, Any] = dict(DEFAULT_RULES)  # the active rules


def set_rules(rules) -> None:
  """Installs logical-axis rules for this process (used by `state_shardings`, `batch_spec` and
  `constrain`): a mapping or (name, axes) pairs; axes are a mesh axis name, a tuple of them,
  or None. Unknown mesh axes are a MeshError."""
  items = rules.items() if hasattr(rules, "items") else rules
  new = {}
  for name, axes in items:
    axes = None if axes in (None, "", ()) else (axes if isinstance(axes, str) else tuple(axes))
    for a in (() if axes is None else (axes,) if isinstance(axes, str) else axes):
      if a not in MESH_AXES:
        raise MeshError(f"mesh.rules: {name!r} -> unknown mesh axis {a!r}; expected {MESH_AXES}")
    new[str(name)] = axes
  LOGICAL_AXIS_RULES.clear()
  LOGICAL_AXIS_RULES.update(new)


def default_rules_config() -> tuple:
  """DEFAULT_RULES as (name, axes) pairs, the form of ``config.mesh.rules``."""
  return tuple((k, v) for k, v in DEFAULT_RULES.items())


class MeshError(ConfigError):
  """A mesh that does not fit the devices or the model; the message is one line."""


def mesh_shape(mesh_cfg, n_devices: int) -> tuple[int, int, int, int]:
  """(data, fsdp, tensor, sequence) for `n_devices`; raises MeshError when they do not cover it."""
  sizes = {a: int(mesh_cfg.get(a, 1)) for a in MESH_AXES}
  other = sizes["fsdp"] * sizes["tensor"] * sizes["sequence"]
  for a in ("fsdp", "tensor", "sequence"):
    if sizes[a] < 1:
      raise MeshError(f"mesh.{a} must be >= 1, got {sizes[a]}")
  if sizes["data"] == -1:
    if n_devices % other:  # data=-1 fills the rest; the other axes must divide the devices
      raise MeshError(
          f"mesh fsdp={sizes['fsdp']} tensor={sizes['tensor']} sequence={sizes['sequence']} "
          f"(product {other}) does not divide the number of devices, {n_devices} (data=-1 takes "
          f"the rest)")
    sizes["data"] = n_devices // other
  shape = tuple(sizes[a] for a in MESH_AXES)
  if sizes["data"] < 1 or int(np.prod(shape)) != n_devices:
    raise MeshError(
        f"mesh data={mesh_cfg.get('data', 1)} fsdp={sizes['fsdp']} tensor={sizes['tensor']} "
        f"sequence={sizes['sequence']} (product {int(np.prod(shape))}) must "
        f"equal the number of devices, {n_devices}")
  return shape


def make_mesh(mesh_cfg, devices: Sequence[jax.Device] | None = None) -> jax.sharding.Mesh:
  """The (data, fsdp, tensor, sequence) mesh of `config.mesh` over `devices` (all by default).

  When `mesh_cfg` has ``rules`` they become the process's logical-axis rules (`set_rules`).
  """
  devices = list(jax.devices() if devices is None else devices)
  if mesh_cfg.get("rules", None):
    set_rules(mesh_cfg["rules"])
  shape = mesh_shape(mesh_cfg, len(devices))
  return jax.make_mesh(shape, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES),
                       devices=devices)


def check_model_fits_mesh(model_cfg, mesh_cfg) -> None:
  """Raises MeshError for model options that cannot use the mesh as configured."""
  if int(mesh_cfg.get("sequence", 1)) > 1 and model_cfg.get("kind") == "resnet_bk" and \
      model_cfg.get("use_semiseparable", False):
    raise MeshError(
        "mesh.sequence > 1 is not supported with model.use_semiseparable: the semiseparable "
        "(g, x, y, M) state has no cross-shard combine yet, so it would fall back to gathering "
        "the whole sequence on every device; use mesh.sequence = 1 (data/fsdp/tensor work)")


def _mesh_axes_of(name) -> tuple[str, ...]:
  if name is None:
    return ()
  axes = LOGICAL_AXIS_RULES.get(name)
  if axes is None:
    return ()
  return (axes,) if isinstance(axes, str) else tuple(axes)


def logical_to_spec(names: Sequence[str | None] | None, shape: Sequence[int],
                    mesh: jax.sharding.Mesh) -> P:
  """PartitionSpec for an array of `shape` whose axes carry logical `names`.

  Mesh axes of size 1 are dropped, a mesh axis is used once per array (first axis wins), and a
  dimension that does not divide by its mesh axes' product stays replicated.
  """
  if not names:
    return P()
  names = tuple(names)
  if len(names) != len(shape):
    raise MeshError(f"logical axes {names} do not match the array shape {tuple(shape)}")
  used: set[str] = set()
  spec = []
  for name, dim in zip(names, shape):
    axes = tuple(a for a in _mesh_axes_of(name) if mesh.shape[a] > 1 and a not in used)
    size = int(np.prod([mesh.shape[a] for a in axes])) if axes else 1
    if not axes or dim % size:
      spec.append(None)
      continue
    used.update(axes)
    spec.append(axes[0] if len(axes) == 1 else axes)
  return P(*spec)


def _shape_of(x) -> tuple[int, ...]:
  value = x.get_value() if isinstance(x, nnx.Variable) else x
  return tuple(np.shape(value)) if not hasattr(value, "shape") else tuple(value.shape)


def state_shardings(state: Any, mesh: jax.sharding.Mesh) -> Any:
  """NamedShardings for every leaf of `state` (concrete arrays or ShapeDtypeStructs).

  Leaves inside an nnx.Variable with logical `out_sharding` metadata (parameters, and the
  optimizer moments, which inherit it) follow LOGICAL_AXIS_RULES; everything else (step
  counters, monitors, rng state) is replicated.
  """

  def one(x):
    if isinstance(x, nnx.Variable):
      names = x.get_metadata().get("out_sharding", None)
      return x.replace(NamedSharding(mesh, logical_to_spec(names, _shape_of(x), mesh)))
    return NamedSharding(mesh, P())

  return jax.tree.map(one, state, is_leaf=lambda x: isinstance(x, nnx.Variable))


def batch_spec() -> P:
  """Batches (B, N): the "activation_batch" and "activation_length" rules (by default B over
  (data, fsdp), N over sequence)."""
  return P(LOGICAL_AXIS_RULES.get("activation_batch"), LOGICAL_AXIS_RULES.get("activation_length"))


def constrain(x: jax.Array, names: Sequence[str | None]) -> jax.Array:
  """Pins the sharding of an activation by logical axis names (MaxText's ``activation_*``).

  Without a mesh in context (eager calls, one device, traced outside `with_mesh_context`) or
  on a mesh of one device this is the identity, so models run unchanged everywhere. Under a
  mesh it is ``with_sharding_constraint`` to `logical_to_spec(names)`: XLA keeps e.g. the batch
  split over (data, fsdp) instead of gathering it next to an fsdp-sharded weight.

  Args:
    x: the activation.
    names: one logical name (or None) per axis of x.

  Returns:
    x, with a sharding constraint when a mesh is active.
  """
  mesh = jax.sharding.get_abstract_mesh()
  if mesh is None or mesh.empty or mesh.size == 1:
    return x
  return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, logical_to_spec(names, x.shape, mesh)))


def batch_sharding(mesh: jax.sharding.Mesh) -> NamedSharding:
  return NamedSharding(mesh, batch_spec())


def replicated(mesh: jax.sharding.Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def data_parallel_size(mesh: jax.sharding.Mesh) -> int:
  return mesh.shape["data"] * mesh.shape["fsdp"]


def shard_batch(batch: Any, mesh: jax.sharding.Mesh) -> Any:
  """Places a host batch on the mesh.

  One process: `batch` is the global batch (device_put). Several processes: `batch` is this
  process's slice of the global batch along B (the data pipelines shard per process), and the
  global array is assembled from the process-local pieces without any cross-host copy.
  """
  sharding = batch_sharding(mesh)
  if jax.process_count() == 1:
    return jax.device_put(batch, sharding)
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)),
                      batch)


def put_replicated(tree: Any, mesh: jax.sharding.Mesh) -> Any:
  """Host values replicated on every device of `mesh` (multi-process safe: no cross-process
  equality check, which NaN-valued monitors would fail)."""
  sharding = replicated(mesh)
  if jax.process_count() == 1:
    return jax.device_put(tree, sharding)
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)),
                      tree)


def create_sharded_state(init_fn: Callable[[], Any], mesh: jax.sharding.Mesh):
  """Runs `init_fn() -> state pytree` directly into its shards.

  The abstract state comes from ``jax.eval_shape`` (no FLOPs, no memory), its shardings from
  `state_shardings`, and the real state from ``jax.jit(init_fn, out_shardings=...)``: each
  device computes and keeps only its own shards, and there is no host-side full copy.

  Returns:
    (state, shardings, abstract) with `abstract` the ShapeDtypeStructs carrying the shardings
    (the target of a checkpoint restore onto this mesh).
  """
  abstract = jax.eval_shape(init_fn)
  shardings = state_shardings(abstract, mesh)
  state = jax.jit(init_fn, out_shardings=shardings)()
  abstract = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                          abstract, shardings)
  return state, shardings, abstract


def with_mesh_context(fn: Callable, mesh: jax.sharding.Mesh) -> Callable:
  """Wraps a function to be traced so that ops see `mesh` as the context (abstract) mesh.

  `bk_jax.ops.resolvent.causal_diag` reads it to run sequence-parallel when mesh.sequence > 1.
  (jax.set_mesh cannot be entered inside jit; use_abstract_mesh can.)
  """

  def wrapped(*args, **kwargs):
    with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):
      return fn(*args, **kwargs)

  wrapped.__name__ = getattr(fn, "__name__", "wrapped")
  wrapped.__doc__ = fn.__doc__
  return wrapped


def jit_sharded(fn: Callable, mesh: jax.sharding.Mesh, in_shardings, out_shardings,
                donate_argnums=()) -> Callable:
  """jax.jit of `fn` traced under `mesh` with explicit in/out shardings and donation."""
  return jax.jit(with_mesh_context(fn, mesh), in_shardings=in_shardings,
                 out_shardings=out_shardings, donate_argnums=donate_argnums)

"""Per-device memory and FLOPs of the sharded train step, planned without allocating anything.

`plan(config, mesh_shape)`:

1. the train state is built abstractly (``jax.eval_shape`` of model + optimizer init) and given
   its NamedShardings by `bk_jax.sharding.state_shardings` (the same rules training uses);
2. the jitted, sharded train step (`bk_jax.train.step`, donated state) is lowered on those
   ShapeDtypeStructs and a global batch of ShapeDtypeStructs, and compiled for the mesh;
3. XLA's ``memory_analysis()`` of the compiled per-device program gives the arguments, outputs,
   aliased (donated) bytes and the temporary buffers of the step; parameters, AdamW moments and
   gradients per device come from the shard shapes of the state; ``cost_analysis()`` gives the
   FLOPs and bytes accessed of the per-device program.

The caller must have created at least mesh-size devices (fake CPU devices via
``XLA_FLAGS=--xla_force_host_platform_device_count=N`` set before JAX is imported:
scripts/plan_memory.py). XLA compiles for the CPU backend then: buffer assignment follows the
same HLO the GPU compiler receives, but fusion and the backend's own passes differ, so the
temporaries are an estimate of the GPU figure (of the right order, not to the byte).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from bk_jax.data import batch_size_for
from bk_jax.models import build_model, count_params
from bk_jax.ops.resolvent import resolve_method
from bk_jax.sharding import batch_sharding, make_mesh, state_shardings
from bk_jax.runtime.errors import ConfigError
from bk_jax.runtime.provenance import command, stamped
from bk_jax.train.schedule import learning_rate_schedule
from bk_jax.train.state import create_train_state
from bk_jax.train.config_validation import train_lengths
from bk_jax.train.step import jit_train_step, make_optimizer, make_train_step

GIB = 2.0 ** 30
#: Dense bf16 peak of an H100 SXM (TFLOP/s, no sparsity): the default of --peak_tflops.
H100_BF16_TFLOPS = 989.0
#: HBM3 bandwidth of an H100 SXM (TB/s): the default of --hbm_tbps.
H100_HBM_TBPS = 3.35


def parse_mesh(text: str) -> tuple[int, int, int, int]:
  """"data=1,fsdp=8,tensor=1,sequence=1" (any order, missing axes = 1) -> (data, fsdp, tensor, seq)."""
  sizes = dict(data=1, fsdp=1, tensor=1, sequence=1)
  for part in filter(None, text.replace(" ", "").split(",")):
    name, _, value = part.partition("=")
    if name not in sizes or not value.isdigit() or int(value) < 1:
      raise ConfigError(f"bad mesh entry {part!r}: expected data|fsdp|tensor|sequence=<int >= 1>")
    sizes[name] = int(value)
  return tuple(sizes[a] for a in ("data", "fsdp", "tensor", "sequence"))


def _nbytes(shape, dtype) -> int:
  return int(math.prod(shape)) * jnp.dtype(dtype).itemsize


def _leaf_rows(tree: Any, shardings: Any, group: str) -> list[dict]:
  """One row per array: path, global shape, dtype, spec, per-device bytes."""
  rows = []
  flat = jax.tree_util.tree_flatten_with_path(tree)[0]
  specs = jax.tree.leaves(shardings)
  for (path, x), s in zip(flat, specs):
    local = s.shard_shape(x.shape)
    rows.append(dict(group=group, path=group + jax.tree_util.keystr(path), shape=list(x.shape),
                     dtype=str(x.dtype), spec=str(s.spec), bytes=_nbytes(local, x.dtype)))
  return rows


def _compile_step(cfg, mesh, batch: int, n: int):
  """(compiled train step, abstract sharded state, abstract batch); nothing is allocated."""
  tx = make_optimizer(cfg.train)
  make_model = lambda: build_model(cfg.model, rngs=nnx.Rngs(cfg.seed))
  graphdef = nnx.split(nnx.eval_shape(make_model), nnx.Param, ...)[0]
  abstract = jax.eval_shape(lambda: create_train_state(make_model(), tx)[1])
  shardings = state_shardings(abstract, mesh)
  abstract = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                          abstract, shardings)
  step = jit_train_step(make_train_step(graphdef, tx, learning_rate_schedule(cfg.train, 1000), cfg),
                        abstract, mesh)
  bsh = batch_sharding(mesh)
  abatch = dict(inputs=jax.ShapeDtypeStruct((batch, n), jnp.int32, sharding=bsh),
                targets=jax.ShapeDtypeStruct((batch, n), jnp.int32, sharding=bsh),
                mask=jax.ShapeDtypeStruct((batch, n), jnp.float32, sharding=bsh))
  return step.lower(abstract, abatch).compile(), abstract, abatch


def _cost(compiled) -> tuple[float, float]:
  ca = compiled.cost_analysis()
  ca = ca[0] if isinstance(ca, (list, tuple)) else ca
  return float(ca.get("flops", 0.0)), float(ca.get("bytes accessed", 0.0))


def per_layer_cost(cfg, mesh, batch: int, n: int) -> tuple[float, float]:
  """XLA FLOPs and bytes accessed per device of the whole step, counted layer by layer.

  XLA's cost analysis counts a while-loop body once, so the step compiled with scan_layers
  reports one layer. The step is compiled twice more, unrolled (scan_layers False) with 1 and 2
  layers; cost(L) = cost(1) + (L - 1) * (cost(2) - cost(1)) is exact for identical layers.
  """
  costs = []
  for layers in (1, 2):
    c = ml_collections.ConfigDict(cfg.to_dict())
    c.model.n_layers, c.model.scan_layers = layers, False
    costs.append(_cost(_compile_step(c, mesh, batch, n)[0]))
  big = int(cfg.model.n_layers)
  return tuple(costs[0][i] + (big - 1) * (costs[1][i] - costs[0][i]) for i in range(2))


@dataclasses.dataclass
class Plan:
  """Everything `plan` measured; `to_dict` is the JSON form."""

  config_name: str
  mesh: dict
  seq_len: int
  global_batch: int
  grad_accum_steps: int
  n_params: int
  resolvent_method: str
  bytes: dict  # per device: params, opt_state, grads, other_state, batch, xla_* and peak
  largest: list  # the largest per-device state arrays
  flops: dict
  device_memory_gb: float
  fits: bool
  compile_s: float

  def to_dict(self) -> dict:
    return dataclasses.asdict(self)


def plan(config: ml_collections.ConfigDict, mesh_shape: tuple[int, int, int, int], *,
         seq_len: int | None = None, device_memory_gb: float = 80.0,
         target_platform: str = "gpu", peak_tflops: float = H100_BF16_TFLOPS,
         hbm_tbps: float = H100_HBM_TBPS, config_name: str = "", top: int = 8,
         flops_by_layer: bool | str = True) -> Plan:
  """Compiles the sharded train step of `config` on `mesh_shape` and measures it (see module doc).

  Args:
    config: a full training config (configs/*.py); model.vocab_size is used as is.
    mesh_shape: (data, fsdp, tensor, sequence); needs that many JAX devices.
    seq_len: tokens per sequence; default the longest length the config trains.
    device_memory_gb: memory per device (GB = 1e9 bytes) the plan must fit in.
    target_platform: resolves model.resolvent_method "auto" for the platform the plan is for.
    peak_tflops: dense peak of the target device (for the MFU estimate).
    hbm_tbps: memory bandwidth of the target device (for the roofline time).
    config_name: label for the report.
    top: how many of the largest state arrays to list.
    flops_by_layer: count XLA FLOPs by `per_layer_cost` (two more, smaller compiles); False:
      the scanned step's own cost analysis (one layer's worth when scan_layers is on);
      "if_fits": by layer only when the plan fits (mesh searches).

  Returns:
    A `Plan`.
  """
  import time

  from bk_jax.data import batch_size_for
  from bk_jax.runtime.run_config import train_lengths

  cfg = ml_collections.ConfigDict(config.to_dict())
  names = ("data", "fsdp", "tensor", "sequence")
  for a, n in zip(names, mesh_shape):
    cfg.mesh[a] = n
  n_dev = int(np.prod(mesh_shape))
  if jax.device_count() < n_dev:
    raise ConfigError(f"mesh {mesh_shape} needs {n_dev} devices, JAX has {jax.device_count()} "
                      "(set XLA_FLAGS=--xla_force_host_platform_device_count before importing jax)")
  mesh = make_mesh(cfg.mesh, devices=jax.devices()[:n_dev])
  n = int(seq_len or max(train_lengths(cfg)))
  t = cfg.train
  batch = batch_size_for(n, t.batch_size, t.tokens_per_batch)
  accum = int(t.get("grad_accum_steps", 1))
  dp = mesh_shape[0] * mesh_shape[1]
  if batch % (dp * accum):
    raise ConfigError(f"global batch {batch} at N={n} is not divisible by data x fsdp x "
                      f"grad_accum_steps = {dp} x {accum}")
  if n % mesh_shape[3]:
    raise ConfigError(f"N={n} is not divisible by mesh sequence={mesh_shape[3]}")
  if cfg.model.kind == "resnet_bk":
    cfg.model.resolvent_method = resolve_method(cfg.model.resolvent_method, target_platform)

  t0 = time.perf_counter()
  compiled, abstract, abatch = _compile_step(cfg, mesh, batch, n)
  compile_s = time.perf_counter() - t0
  bsh = batch_sharding(mesh)

  state_sh = state_shardings(abstract, mesh)
  params = _leaf_rows(abstract.params, state_sh.params, "params")
  opt = _leaf_rows(abstract.opt_state, state_sh.opt_state, "opt_state")
  rest = _leaf_rows((abstract.model_state, abstract.step, abstract.lr_scale, abstract.monitors),
                    (state_sh.model_state, state_sh.step, state_sh.lr_scale, state_sh.monitors),
                    "other")
  p_bytes = sum(r["bytes"] for r in params)
  ma = compiled.memory_analysis()
  b = dict(
      params=p_bytes,
      opt_state=sum(r["bytes"] for r in opt),
      # one float32 gradient per parameter, sharded like it (XLA temporaries, counted below too)
      grads=p_bytes,
      other_state=sum(r["bytes"] for r in rest),
      batch=sum(_nbytes(bsh.shard_shape(x.shape), x.dtype) for x in abatch.values()),
      xla_arguments=int(ma.argument_size_in_bytes),
      xla_outputs=int(ma.output_size_in_bytes),
      xla_aliased=int(ma.alias_size_in_bytes),
      xla_temp=int(ma.temp_size_in_bytes),
      xla_code=int(ma.generated_code_size_in_bytes),
  )
  # Live at the peak: the arguments (state + batch; the donated state is reused for the
  # outputs), the outputs not aliased to an argument, and the step's temporaries.
  b["peak"] = b["xla_arguments"] + b["xla_outputs"] - b["xla_aliased"] + b["xla_temp"]
  fits = b["peak"] <= device_memory_gb * 1e9

  # per device; the scanned step's own count covers one layer (see per_layer_cost)
  flops_by_layer = bool(fits if flops_by_layer == "if_fits" else flops_by_layer)
  xla_flops, xla_bytes = per_layer_cost(cfg, mesh, batch, n) if flops_by_layer else _cost(compiled)
  n_par = count_params(cfg.model)
  n_embed = cfg.model.vocab_size * cfg.model.d_model  # the embedding lookup does no matmul
  tokens = batch * n
  model_flops = 6.0 * (n_par - n_embed) * tokens / n_dev  # per device, fwd + bwd (PaLM's 6N)
  peak = peak_tflops * 1e12
  t_compute = xla_flops / peak
  t_memory = xla_bytes / (hbm_tbps * 1e12)
  t_step = max(t_compute, t_memory)
  flops = dict(
      xla_flops_per_device=xla_flops, xla_bytes_accessed_per_device=xla_bytes,
      model_flops_per_device=model_flops, tokens_per_step=tokens,
      peak_tflops=peak_tflops, hbm_tbps=hbm_tbps, roofline_step_s=t_step,
      # only meaningful when XLA's count covers every layer
      mfu_upper_bound=(model_flops / (t_step * peak) if t_step > 0 and
                       (flops_by_layer or not cfg.model.scan_layers) else None),
      flops_by_layer=flops_by_layer,
      flops_note=("XLA FLOPs/bytes: layer by layer (per_layer_cost) when flops_by_layer, "
                  "rematerialisation included; a time loop inside a block (lax.scan) still "
                  "counts once. Model FLOPs = 6 x non-embedding parameters x tokens / devices. "
                  "The MFU figure is an upper bound from a roofline step time, not a "
                  "measurement"))
  rows = sorted(params + opt, key=lambda r: -r["bytes"])[:top]
  return Plan(config_name=config_name, mesh=dict(zip(names, mesh_shape)), seq_len=n,
              global_batch=batch, grad_accum_steps=accum, n_params=n_par,
              resolvent_method=str(cfg.model.get("resolvent_method", "")), bytes=b,
              largest=rows, flops=flops, device_memory_gb=device_memory_gb, fits=fits,
              compile_s=compile_s)


def format_plan(p: Plan) -> str:
  """The human-readable report of a plan."""
  g = lambda x: f"{x / GIB:8.2f} GiB"
  b, f = p.bytes, p.flops
  mesh = ",".join(f"{k}={v}" for k, v in p.mesh.items())
  n_dev = int(np.prod(list(p.mesh.values())))
  lines = [
      f"config {p.config_name}: {p.n_params:,} parameters | N = {p.seq_len:,} tokens x global "
      f"batch {p.global_batch} (grad_accum_steps {p.grad_accum_steps}) | mesh {mesh} "
      f"({n_dev} devices) | resolvent {p.resolvent_method or '-'} | compiled in {p.compile_s:.0f} s",
      "per device:",
      f"  parameters (f32)            {g(b['params'])}",
      f"  optimizer state (AdamW)     {g(b['opt_state'])}",
      f"  gradients (f32, in temp)    {g(b['grads'])}",
      f"  other state                 {g(b['other_state'])}",
      f"  batch                       {g(b['batch'])}",
      f"  XLA arguments               {g(b['xla_arguments'])}",
      f"  XLA outputs (aliased)       {g(b['xla_outputs'])} ({g(b['xla_aliased']).strip()} donated)",
      f"  XLA temporaries of the step {g(b['xla_temp'])}",
      f"  peak = args + unaliased outputs + temp  {g(b['peak'])}",
      f"  => {'FITS' if p.fits else 'DOES NOT FIT'} in {p.device_memory_gb:g} GB "
      f"({p.device_memory_gb * 1e9 / GIB:.2f} GiB) per device",
      "largest state arrays (per-device bytes, global shape, sharding):",
  ]
  for r in p.largest:
    lines.append(f"  {g(r['bytes'])}  {r['path']:<48} {str(tuple(r['shape'])):<22} "
                 f"{r['dtype']:<9} {r['spec']}")
  lines += [
      "FLOPs per device and step:",
      f"  XLA cost analysis{' (layer by layer)' if f['flops_by_layer'] else ''}  "
      f"{f['xla_flops_per_device']:.3e} FLOPs, "
      f"{f['xla_bytes_accessed_per_device']:.3e} bytes accessed",
      f"  model FLOPs (6 x non-embedding params x tokens / devices)  "
      f"{f['model_flops_per_device']:.3e}",
      (f"  MFU ESTIMATE (upper bound): {100 * f['mfu_upper_bound']:.1f}% = model FLOPs / "
       f"(roofline step {f['roofline_step_s']:.2f} s x {f['peak_tflops']:g} TFLOP/s peak); "
       f"roofline step = max(XLA FLOPs / peak, XLA bytes accessed / {f['hbm_tbps']:g} TB/s)"
       if f["mfu_upper_bound"] is not None else
       "  MFU: not estimated (XLA's count of the scanned step covers one layer; layer-by-layer "
       "counting is only done for a plan that fits)"),
      f"  note: {f['flops_note']}",
  ]
  return "\n".join(lines)



def candidate_meshes(global_batch: int, seq_len: int, max_devices: int):
  """(data, fsdp, tensor, sequence) for 8, 16, 32, ... devices: fsdp = the largest power of two
  dividing both the device count and the global batch, sequence = the rest."""
  n = 8
  while n <= max_devices:
    fsdp = math.gcd(n, global_batch)
    seq = n // fsdp
    if seq_len % seq == 0:
      yield (1, fsdp, 1, seq)
    n *= 2


def plan_meshes(cfg: ml_collections.ConfigDict, mesh: tuple[int, int, int, int] | None, *,
                config_name: str, out: str, seq_len: int = 0, max_devices: int = 64,
                device_memory_gb: float = 80.0, target_platform: str = "gpu",
                peak_tflops: float = H100_BF16_TFLOPS, hbm_tbps: float = H100_HBM_TBPS) -> dict:
  """scripts/plan_memory.py: plans `mesh`, or (mesh None) the candidate meshes up to the first fit.

  Each plan is printed and written to out/<config_name>_N<seq>_<mesh>.txt (the command line, then
  `format_plan`) and .json (`Plan.to_dict`, stamped). With mesh None, a summary of the meshes
  tried follows.

  Args:
    cfg: the run config.
    mesh: (data, fsdp, tensor, sequence), or None: try `candidate_meshes` of the config's global
      batch (per gradient-accumulation step) up to `max_devices` and stop at the first that fits.
    config_name: the name in the report and the file names.
    out: output folder (created).
    seq_len: the planned length; 0: the longest trained length of the config.
    max_devices, device_memory_gb, target_platform, peak_tflops, hbm_tbps: see `plan`.

  Returns:
    {"tried": [(mesh, peak bytes per device, fits)], "found": the first mesh that fits or None}.

  Raises:
    ConfigError: the config cannot be planned (after the plans already printed).
  """
  seq = seq_len or max(train_lengths(cfg))
  find_min = mesh is None
  if find_min:
    batch = batch_size_for(seq, cfg.train.batch_size, cfg.train.tokens_per_batch)
    meshes = list(candidate_meshes(batch // int(cfg.train.get("grad_accum_steps", 1)), seq,
                                   max_devices))
  else:
    meshes = [mesh]
  os.makedirs(out, exist_ok=True)
  tried, found = [], None
  for m in meshes:
    pl = plan(cfg, m, seq_len=seq, device_memory_gb=device_memory_gb,
              target_platform=target_platform, peak_tflops=peak_tflops, hbm_tbps=hbm_tbps,
              config_name=config_name, flops_by_layer="if_fits" if find_min else True)
    text = format_plan(pl)
    print(text + "\n", flush=True)
    tag = f"{config_name}_N{seq}_" + "x".join(str(x) for x in m)
    with open(os.path.join(out, tag + ".txt"), "w") as f:
      f.write(f"$ {command()}\n{text}\n")
    with open(os.path.join(out, tag + ".json"), "w") as f:
      json.dump(stamped(pl.to_dict()), f, indent=1)
    tried.append((m, pl.bytes["peak"], pl.fits))
    if pl.fits:
      found = m
      break
  if find_min:
    for m, peak, fits in tried:
      print(f"mesh data,fsdp,tensor,sequence={m}: peak {peak / 2 ** 30:.2f} GiB per device "
            f"-> {'fits' if fits else 'does not fit'}")
    print(f"smallest mesh that fits in {device_memory_gb:g} GB: "
          f"{found if found else f'none up to {max_devices} devices'}")
  return dict(tried=tried, found=found)

"""The model-kind registry: a kind name maps to its block factory, config check and aux reductions.

Every place that depends on the kind asks this registry (no if/else that assumes a default):
`LanguageModel` builds its blocks with `get_kind(cfg.kind).make_block`, `validate_model_config`
runs the kind's `check`, `execution_paths` its `paths`, checkpoint matching compares
`arch_fields()` (evaluation lets the caller choose `runtime_fields()`), the aux reduction uses
the kind's `aux_reduce`, and the report colours follow `KINDS`. An unknown kind is one
`ConfigError` naming the known ones.

Adding a kind: write its block module (a class following the `Block` protocol below, with an
`AUX_REDUCE` dict for any statistics it emits), add its config fields to
`config.default_model_config`, then one `register(ModelKind(...))` here with its factory, check,
execution paths, and the config fields that fix its parameter shapes or only choose how they are
computed.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, Protocol

import jax
import jax.numpy as jnp
from flax import nnx

from bk_jax.models import bk
from bk_jax.models.bk_mixers import DELTA_MAX_INIT
from bk_jax.models.config import (ATTENTIONS, BK_DECAYS, BK_INITS, BK_MIX_METHODS, BK_MIXERS,
                                  BK_STEPS, BK_WRITES, DTYPES, MAMBA_SCAN_METHODS, REMAT_POLICIES,
                                  RESOLVENT_METHODS, ROUTERS, resolve_mix_method)
from bk_jax.models.mamba import MambaBlock
from bk_jax.models.mamba2 import SSD_CHUNK, Mamba2Block
from bk_jax.models.transformer import TransformerBlock, attention_implementation
from bk_jax.ops.linear_scan import resolve_scan_method
from bk_jax.ops.resolvent import resolve_method
from bk_jax.runtime.errors import ConfigError

#: The aux key every block emits: its (already weighted) auxiliary loss, summed over layers.
AUX_LOSS = "aux_loss"

Aux = dict[str, jax.Array]


class Block(Protocol):
  """What `LanguageModel` needs of a block (an nnx.Module).

  `init_carry(batch)` returns the fresh-sequence streaming state (a pytree of fixed shapes, e.g.
  a NamedTuple); `block(x, carry, pos, bias)` maps the residual stream x (B, N, d_model), the
  carry (None: a fresh sequence, training), the int32 absolute position of x[:, 0] and the
  optional (N,) position bias to (x', new carry, aux); aux always holds `AUX_LOSS` (a scalar)
  plus the kind's declared statistics.
  """

  def init_carry(self, batch_size: int) -> Any: ...

  def __call__(self, x: jax.Array, carry: Any, pos: jax.Array,
               bias: jax.Array | None) -> tuple[jax.Array, Any, Aux]: ...


def need(cond: bool, msg: str) -> None:
  """Raises ConfigError("model config: msg") unless `cond`."""
  if not cond:
    raise ConfigError(f"model config: {msg}")


@dataclasses.dataclass(frozen=True)
class ModelKind:
  """One registered model kind.

  Attributes:
    name: the `model.kind` value.
    make_block: (cfg, rngs, dtype, param_dtype) -> a `Block`.
    check: cfg -> None; raises ConfigError (through `need`) on the kind's own fields.
    paths: (cfg, platform, batch, seq_len) -> {name: concrete implementation} for banners.
    arch_fields: dotted model fields (beyond the shared ones) that fix the parameter shapes.
    runtime_fields: dotted model fields (beyond the shared ones) that only choose how the same
      parameters are computed (evaluation takes the caller's value, not the checkpoint's).
    aux_reduce: aux key -> reduction over a leading (layers or microbatches) axis, for every key
      the block emits besides `AUX_LOSS` (declared in the block's module, next to the code that
      computes the figure, e.g. bk.AUX_REDUCE).
  """
  name: str
  make_block: Callable[..., Block]
  check: Callable[[Any], None]
  paths: Callable[..., dict[str, str]]
  arch_fields: tuple[str, ...] = ()
  runtime_fields: tuple[str, ...] = ()
  aux_reduce: Mapping[str, Callable[[jax.Array], jax.Array]] = dataclasses.field(
      default_factory=dict)


_REGISTRY: dict[str, ModelKind] = {}

#: Model fields every kind shares that fix the parameter shapes (see `arch_fields`).
SHARED_ARCH_FIELDS = ("kind", "vocab_size", "d_model", "n_layers", "d_ff", "scan_layers",
                      "prime_bump", "prime_bump_scale", "param_dtype")
#: Model fields every kind shares that only choose how the parameters are computed.
SHARED_RUNTIME_FIELDS = ("remat", "dtype", "dropout")


def register(kind: ModelKind) -> ModelKind:
  """Adds `kind` to the registry (its name must be new); returns it."""
  if kind.name in _REGISTRY:
    raise ValueError(f"model kind {kind.name!r} is already registered")
  _REGISTRY[kind.name] = kind
  return kind


def get_kind(name: str) -> ModelKind:
  """The registered kind `name`; ConfigError naming the known kinds otherwise."""
  try:
    return _REGISTRY[name]
  except (KeyError, TypeError):
    raise ConfigError(f"model config: unknown kind {name!r}; expected one of "
                      f"{kind_names()}") from None


def kind_names() -> tuple[str, ...]:
  """Registered kind names, in registration order."""
  return tuple(_REGISTRY)


def _union(shared: tuple[str, ...], per_kind: str) -> tuple[str, ...]:
  out = list(shared)
  for k in _REGISTRY.values():
    out += [f for f in getattr(k, per_kind) if f not in out]
  return tuple(out)


def arch_fields() -> tuple[str, ...]:
  """Shared + every kind's architecture fields (a checkpoint restores only where all match)."""
  return _union(SHARED_ARCH_FIELDS, "arch_fields")


def runtime_fields() -> tuple[str, ...]:
  """Shared + every kind's runtime-only fields (see `ModelKind.runtime_fields`)."""
  return _union(SHARED_RUNTIME_FIELDS, "runtime_fields")


def reduce_aux(kind: str, stacked: Mapping[str, jax.Array], *,
               loss_reduce: Callable[[jax.Array], jax.Array] = jnp.sum) -> Aux:
  """Combines aux dicts stacked on a leading axis into one, with each key's declared reduction.

  Args:
    kind: the model kind whose blocks emitted `stacked`.
    stacked: {key: (L, ...)}: per-layer (or per-microbatch) values.
    loss_reduce: the reduction of `AUX_LOSS` (sum over layers; the trainer's microbatches
      average it).

  Returns:
    {key: reduced value}.

  Raises:
    KeyError: a key the kind did not declare (one line naming where to declare it).
  """
  table = get_kind(kind).aux_reduce
  out = {}
  for key, v in stacked.items():
    if key == AUX_LOSS:
      out[key] = loss_reduce(v)
    elif key in table:
      out[key] = table[key](v)
    else:
      raise KeyError(f"aux key {key!r} of model kind {kind!r} has no declared reduction; add it to "
                     f"the kind's aux_reduce in bk_jax/models/kinds.py")
  return out


# --- resnet_bk -----------------------------------------------------------------------------------

def _check_resnet_bk(cfg: Any) -> None:
  need(cfg.n_heads > 0, f"n_heads must be positive, got {cfg.n_heads}")
  need(cfg.eta_min > 0, f"eta_min must be > 0, got {cfg.eta_min}")
  need(cfg.resolvent_method in RESOLVENT_METHODS,
       f"resolvent_method {cfg.resolvent_method!r} not in {RESOLVENT_METHODS}")
  need(not cfg.use_semiseparable or cfg.semiseparable_rank > 0, "semiseparable_rank must be > 0")
  need(cfg.bs_window > 0, "bs_window must be > 0")
  need(cfg.bk_mixer in BK_MIXERS, f"bk_mixer {cfg.bk_mixer!r} not in {BK_MIXERS}")
  need(cfg.bk_head_dim > 0, f"bk_head_dim must be positive, got {cfg.bk_head_dim}")
  need(cfg.bk_key_dim >= 0, f"bk_key_dim must be >= 0, got {cfg.bk_key_dim}")
  need(cfg.bk_key_dim == 0 or cfg.bk_mixer != "diag",
       "bk_key_dim > 0 needs bk_mixer='green', 'green_modulus' or 'ward_selective'")
  need(cfg.bk_key_dim > 0 or cfg.bk_mixer != "ward_selective",
       "bk_mixer='ward_selective' needs bk_key_dim > 0 (its state is keyed)")
  need(cfg.bk_ward_decay or cfg.bk_mixer == "ward_selective",
       "bk_ward_decay=False (the scalar-decay control) needs bk_mixer='ward_selective'")
  need(0 <= cfg.bk_selective_heads < cfg.n_heads,
       f"bk_selective_heads must be in [0, n_heads) = [0, {cfg.n_heads}), got "
       f"{cfg.bk_selective_heads} (every head selective is bk_mixer='ward_selective')")
  need(cfg.bk_selective_heads == 0 or (cfg.bk_mixer in ("green", "green_modulus")
                                       and cfg.bk_key_dim > 0),
       "bk_selective_heads > 0 needs a keyed Green block (bk_mixer='green' or 'green_modulus', "
       "bk_key_dim > 0)")
  # the selective step's options need heads that run it
  stepped = cfg.bk_mixer == "ward_selective" or cfg.bk_selective_heads > 0
  step_msg = "needs bk_mixer='ward_selective' or bk_selective_heads > 0"
  need(0 < cfg.bk_delta_min_init <= DELTA_MAX_INIT,
       f"bk_delta_min_init must be in (0, {DELTA_MAX_INIT}], got {cfg.bk_delta_min_init}")
  need(cfg.bk_rate_max_init >= 1, f"bk_rate_max_init must be >= 1, got {cfg.bk_rate_max_init}")
  need(cfg.bk_write in BK_WRITES, f"bk_write {cfg.bk_write!r} not in {BK_WRITES}")
  need(cfg.bk_write == "complement" or stepped, f"bk_write={cfg.bk_write!r} {step_msg}")
  need(cfg.bk_decay in BK_DECAYS, f"bk_decay {cfg.bk_decay!r} not in {BK_DECAYS}")
  need(cfg.bk_decay == "head" or stepped, f"bk_decay={cfg.bk_decay!r} {step_msg}")
  need(cfg.bk_step in BK_STEPS, f"bk_step {cfg.bk_step!r} not in {BK_STEPS}")
  need(cfg.bk_step_threshold >= 0,
       f"bk_step_threshold must be >= 0, got {cfg.bk_step_threshold}")
  need(cfg.bk_step_threshold == 0 or stepped,
       f"bk_step_threshold={cfg.bk_step_threshold} {step_msg}")
  need(cfg.bk_step_penalty >= 0, f"bk_step_penalty must be >= 0, got {cfg.bk_step_penalty}")
  need(cfg.bk_step_penalty == 0 or stepped, f"bk_step_penalty={cfg.bk_step_penalty} {step_msg}")
  need(cfg.bk_step == "head" or stepped, f"bk_step={cfg.bk_step!r} {step_msg}")
  need(cfg.bk_ward_decay or not (cfg.selective_shift or cfg.selective_coupling or cfg.prime_bump),
       "bk_ward_decay=False has no resolvent: selective_shift, selective_coupling and prime_bump "
       "do not apply")
  need(cfg.bk_init in BK_INITS, f"bk_init {cfg.bk_init!r} not in {BK_INITS}")
  need(cfg.bk_mix_method in BK_MIX_METHODS,
       f"bk_mix_method {cfg.bk_mix_method!r} not in {BK_MIX_METHODS}")
  per_position = cfg.selective_shift or cfg.selective_coupling
  need(not cfg.use_semiseparable or (cfg.bk_mixer == "diag" and not per_position),
       "use_semiseparable replaces the diagonal resolvent of bk_mixer='diag' with a per-head "
       "operator (no selective_shift or selective_coupling)")
  need(not cfg.use_birman_schwinger or (cfg.bk_ward_decay and not per_position),
       "use_birman_schwinger monitors a per-head resolvent: not with selective_shift, "
       "selective_coupling or bk_ward_decay=False")
  need(not (cfg.use_moe and cfg.router == "scattering") or cfg.bk_mixer == "diag",
       "router='scattering' reads the resolvent's diagonal amplitude, which only bk_mixer='diag' "
       "exposes; use router='learned'")
  if cfg.use_moe:
    need(cfg.router in ROUTERS, f"router {cfg.router!r} not in {ROUTERS}")
    need(cfg.num_experts >= 2, f"num_experts must be >= 2, got {cfg.num_experts}")
    need(1 <= cfg.top_k <= cfg.num_experts, f"top_k must be in [1, num_experts], got {cfg.top_k}")


def _resnet_bk_paths(cfg: Any, platform, batch, seq_len) -> dict[str, str]:
  paths = {"resolvent_method": resolve_method(cfg.resolvent_method, platform)}
  if cfg.bk_key_dim:
    paths["bk_mix"] = resolve_mix_method(cfg.bk_mix_method)
  return paths


register(ModelKind(
    name="resnet_bk",
    make_block=lambda cfg, rngs, dtype, param_dtype: bk.BKBlock(
        cfg, rngs=rngs, dtype=dtype, param_dtype=param_dtype),
    check=_check_resnet_bk,
    paths=_resnet_bk_paths,
    arch_fields=("n_heads", "use_semiseparable", "semiseparable_rank", "use_moe", "num_experts",
                 "router", "top_k", "bk_mixer", "bk_head_dim", "bk_key_dim", "selective_shift",
                 "selective_coupling", "bk_conv", "bk_gate", "bk_ward_decay",
                 "bk_selective_heads"),
    runtime_fields=("resolvent_method", "use_birman_schwinger", "bk_mix_method"),
    aux_reduce=bk.AUX_REDUCE))  # declared in bk.py / moe.py, where the figures are computed


# --- mamba ---------------------------------------------------------------------------------------

def _check_mamba(cfg: Any) -> None:
  m = cfg.mamba
  need(m.d_state > 0 and m.d_conv > 0 and m.expand > 0,
       "mamba.d_state, d_conv, expand must be positive")
  need(m.chunk > 0, "mamba.chunk must be positive")
  need(m.scan_method in MAMBA_SCAN_METHODS,
       f"mamba.scan_method {m.scan_method!r} not in {MAMBA_SCAN_METHODS}")


def _make_mamba(cfg: Any, rngs: nnx.Rngs, dtype, param_dtype) -> MambaBlock:
  m = cfg.mamba
  return MambaBlock(cfg.d_model, d_state=m.d_state, d_conv=m.d_conv, expand=m.expand,
                    chunk=m.chunk, n_layers=cfg.n_layers, rngs=rngs, dtype=dtype,
                    param_dtype=param_dtype, scan_method=m.scan_method)


register(ModelKind(
    name="mamba",
    make_block=_make_mamba,
    check=_check_mamba,
    paths=lambda cfg, platform, batch, seq_len: {
        "mamba_scan": resolve_scan_method(cfg.mamba.scan_method, platform)},
    arch_fields=("mamba.d_state", "mamba.d_conv", "mamba.expand"),
    runtime_fields=("mamba.chunk", "mamba.scan_method")))


# --- transformer ---------------------------------------------------------------------------------

def _check_transformer(cfg: Any) -> None:
  tc = cfg.transformer
  need(tc.n_heads > 0 and cfg.d_model % tc.n_heads == 0,
       f"transformer.n_heads ({tc.n_heads}) must divide d_model ({cfg.d_model})")
  need((cfg.d_model // tc.n_heads) % 2 == 0, "transformer head dim must be even (RoPE)")
  need(tc.block_size > 0 and tc.cache_window > 0, "block_size and cache_window must be > 0")
  need(tc.attention in ATTENTIONS, f"transformer.attention {tc.attention!r} not in {ATTENTIONS}")


def _make_transformer(cfg: Any, rngs: nnx.Rngs, dtype, param_dtype) -> TransformerBlock:
  t = cfg.transformer
  return TransformerBlock(cfg.d_model, t.n_heads, cfg.d_ff, block_size=t.block_size,
                          cache_window=t.cache_window, n_layers=cfg.n_layers, rngs=rngs,
                          attention=t.attention, dtype=dtype, param_dtype=param_dtype)


def _transformer_paths(cfg: Any, platform, batch, seq_len) -> dict[str, str]:
  if batch is None or seq_len is None:  # without the shape, the configured value ("auto", ...)
    return {"attention": str(cfg.transformer.attention)}
  return {"attention": attention_implementation(cfg, batch=batch, seq_len=seq_len,
                                                platform=platform)}


register(ModelKind(
    name="transformer",
    make_block=_make_transformer,
    check=_check_transformer,
    paths=_transformer_paths,
    arch_fields=("transformer.n_heads",),
    runtime_fields=("transformer.cache_window", "transformer.block_size", "transformer.attention")))

# --- mamba2 --------------------------------------------------------------------------------------

def _check_mamba2(cfg: Any) -> None:
  m = cfg.mamba2
  need(min(m.d_state, m.d_conv, m.expand, m.headdim, m.ngroups) > 0,
       "mamba2.d_state, d_conv, expand, headdim, ngroups must be positive")
  d_inner = m.expand * cfg.d_model
  need(d_inner % m.headdim == 0,
       f"mamba2.headdim ({m.headdim}) must divide d_inner = expand * d_model ({d_inner})")
  need((d_inner // m.headdim) % m.ngroups == 0,
       f"mamba2.ngroups ({m.ngroups}) must divide the {d_inner // m.headdim} heads")
  need(m.chunk >= 0, f"mamba2.chunk must be >= 0 (0: {SSD_CHUNK}), got {m.chunk}")


def _mamba2_chunk(cfg: Any) -> int:
  return cfg.mamba2.chunk or SSD_CHUNK


def _make_mamba2(cfg: Any, rngs: nnx.Rngs, dtype, param_dtype) -> Mamba2Block:
  m = cfg.mamba2
  return Mamba2Block(cfg.d_model, d_state=m.d_state, d_conv=m.d_conv, expand=m.expand,
                     headdim=m.headdim, ngroups=m.ngroups, chunk=_mamba2_chunk(cfg),
                     n_layers=cfg.n_layers, rngs=rngs, dtype=dtype, param_dtype=param_dtype)


register(ModelKind(
    name="mamba2",
    make_block=_make_mamba2,
    check=_check_mamba2,
    paths=lambda cfg, platform, batch, seq_len: {
        "ssd_chunk": str(_mamba2_chunk(cfg))},
    arch_fields=("mamba2.d_state", "mamba2.d_conv", "mamba2.expand", "mamba2.headdim",
                 "mamba2.ngroups"),
    runtime_fields=("mamba2.chunk",)))

#: Registered kind names (registration order: also the report colour order).
KINDS = kind_names()


def validate_model_config(cfg: Any) -> None:
  """Raises ConfigError (a ValueError) with a clear message when `cfg` cannot build a model.

  The shared fields are checked here, the kind's own fields by its registered check; an unknown
  kind names the registered ones.

  Args:
    cfg: a model ConfigDict (as returned by `default_model_config`, possibly overridden).
  """
  kind = get_kind(cfg.kind)
  for name in ("vocab_size", "d_model", "n_layers", "d_ff"):
    need(int(cfg[name]) > 0, f"{name} must be positive, got {cfg[name]}")
  need(cfg.remat in REMAT_POLICIES, f"remat {cfg.remat!r} not in {REMAT_POLICIES}")
  need(0.0 <= float(cfg.dropout) < 1.0, f"dropout must be in [0, 1), got {cfg.dropout}")
  need(cfg.param_dtype in DTYPES and cfg.dtype in DTYPES, f"dtypes must be in {DTYPES}")
  kind.check(cfg)


def execution_paths(cfg: Any, platform: str | None = None, *, batch: int | None = None,
                    seq_len: int | None = None) -> dict[str, str]:
  """The concrete implementations `cfg` runs on `platform` (for banners, results and benchmarks).

  "auto" choices are resolved with the same rule the model applies when traced
  (`bk_jax.ops.scan.prefers_parallel`), so this names what actually runs.

  Args:
    cfg: a model ConfigDict.
    platform: "cpu", "gpu", "tpu", ...; default `jax.default_backend()`.
    batch, seq_len: the training shape; the Transformer's "auto" attention depends on it
      (without it the configured value, e.g. "auto", is reported).

  Returns:
    {"dtype": activation dtype} plus the kind's own entries (`ModelKind.paths`): resnet_bk
    "resolvent_method" ("scan" | "associative" | "chunked"), mamba "mamba_scan" ("sequential" |
    "associative"), transformer "attention", mamba2 "ssd_chunk" (the SSD kernel's chunk length).
  """
  return {"dtype": str(cfg.dtype), **get_kind(cfg.kind).paths(cfg, platform, batch, seq_len)}

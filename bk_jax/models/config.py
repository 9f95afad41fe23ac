"""Model configuration: one `ml_collections.ConfigDict` shared by every model kind.

`configs/base.py` does ``config.model = default_model_config()`` and experiment configs override
fields. Every field is read by `bk_jax.models` (see `validate_model_config` and the modules named
in the comments); kind-specific fields are ignored by the other kinds.
"""

from __future__ import annotations

import ml_collections

from bk_jax.models.transformer import attention_implementation
from bk_jax.ops.linear_scan import resolve_scan_method
from bk_jax.ops.resolvent import resolve_method

KINDS = ("resnet_bk", "mamba", "transformer")
ROUTERS = ("scattering", "learned")
REMAT_POLICIES = ("none", "full", "dots")
RESOLVENT_METHODS = ("auto", "scan", "associative", "chunked")
MAMBA_SCAN_METHODS = ("auto", "sequential", "associative")
DTYPES = ("float32", "bfloat16", "float64")
ATTENTIONS = ("auto", "xla", "cudnn", "blockwise")  # transformer.py: resolve_attention
BK_MIXERS = ("diag", "green")


def default_model_config() -> ml_collections.ConfigDict:
  """Returns the default model configuration (a small byte-level ResNet-BK LM).

  Returns:
    ConfigDict with the fields documented inline. `vocab_size` is overwritten by the trainer
    from the data pipeline.
  """
  c = ml_collections.ConfigDict()
  c.kind = "resnet_bk"  # "resnet_bk" | "mamba" | "transformer"
  c.vocab_size = 259  # 256 bytes + specials; set by the trainer from the data
  c.d_model = 128
  c.n_layers = 4
  c.n_heads = 16  # BK heads (one potential, hopping and shift each); DESIGN §2.8
  c.d_ff = 512  # width of the FFN and of every MoE expert
  # --- ResNet-BK options (bk.py) ---
  c.eta_min = 0.05  # lower bound of Im z; |g| <= 1/eta_min
  # bk_jax.ops.resolvent method; "auto": associative on GPU/TPU, scan on the CPU
  c.resolvent_method = "auto"
  c.use_semiseparable = False  # H = T + U diag(s) U^T (DESIGN §2.4)
  c.semiseparable_rank = 4
  c.prime_bump = False  # add the prime-bump potential of DESIGN §2.7 to v
  c.prime_bump_scale = 0.1  # s in DESIGN §2.7
  c.use_birman_schwinger = False  # emit Birman–Schwinger monitors (DESIGN §2.5)
  c.bs_window = 256  # window of the exact Schatten-1 norm
  c.precision_threshold = 1e4  # condition bound above which a layer is recomputed in complex128
  # --- ResNet-BK block variants (bk_mixers.py, issue 14); all off = the seed block (bk.py) ---
  c.bk_mixer = "diag"  # "diag": features eta*g (seed) | "green": values mixed by G (DESIGN §2.10)
  c.bk_head_dim = 8  # "green": values per head (the vector state per head)
  c.bk_key_dim = 0  # "green": > 0 stores key (x) value outer products read by queries (n per head)
  c.selective_shift = False  # per-position z_i from the input (DESIGN §2.9)
  c.selective_coupling = False  # per-position hopping t_i from the input (DESIGN §2.9)
  c.bk_conv = False  # width-4 causal depthwise conv (+ SiLU) on the block input, as Mamba's
  c.bk_gate = False  # mixer output times SiLU(W_gate u)
  # --- MoE (moe.py) ---
  c.use_scattering_router = False  # True: the FFN of every BK block becomes an MoE
  c.num_experts = 4
  c.router = "scattering"  # "scattering" (parameter-free, DESIGN §2.6) | "learned" (top-k)
  c.top_k = 2  # learned router only
  c.aux_loss_weight = 0.01  # weight of the learned router's load-balancing loss
  # --- stack (lm.py) ---
  c.remat = "none"  # "none" | "full" | "dots"
  c.scan_layers = False  # stack layer parameters and lax.scan over them
  c.param_dtype = "float32"
  c.dtype = "float32"  # activation dtype; logits are always float32
  c.seed = 0
  # --- baselines ---
  c.mamba = ml_collections.ConfigDict()
  c.mamba.d_state = 16
  c.mamba.d_conv = 4
  c.mamba.expand = 2
  c.mamba.chunk = 256  # time steps per checkpointed chunk of the selective scan
  # "auto": associative (log depth) on GPU/TPU, sequential on the CPU (ops.scan.prefers_parallel)
  c.mamba.scan_method = "auto"
  c.transformer = ml_collections.ConfigDict()
  c.transformer.n_heads = 4
  # training-path attention: "auto" (cuDNN flash on GPU where it applies, else XLA's fused
  # attention while its N x N scores are affordable, else blockwise) | "xla" | "cudnn" | "blockwise"
  c.transformer.attention = "auto"
  c.transformer.block_size = 512  # query/key block of the blockwise attention
  c.transformer.cache_window = 4096  # KV ring-buffer length for streaming
  return c


def uses_bk_variant(cfg: ml_collections.ConfigDict) -> bool:
  """True when a ResNet-BK config asks for the issue-14 variant block instead of the seed's."""
  return bool(cfg.bk_mixer != "diag" or cfg.selective_shift or cfg.selective_coupling
              or cfg.bk_conv or cfg.bk_gate)


def validate_model_config(cfg: ml_collections.ConfigDict) -> None:
  """Raises ValueError with a clear message when `cfg` cannot build a model.

  Args:
    cfg: a model ConfigDict (as returned by `default_model_config`, possibly overridden).
  """

  def need(cond: bool, msg: str) -> None:
    if not cond:
      raise ValueError(f"model config: {msg}")

  need(cfg.kind in KINDS, f"unknown kind {cfg.kind!r}; expected one of {KINDS}")
  for name in ("vocab_size", "d_model", "n_layers", "d_ff"):
    need(int(cfg[name]) > 0, f"{name} must be positive, got {cfg[name]}")
  need(cfg.remat in REMAT_POLICIES, f"remat {cfg.remat!r} not in {REMAT_POLICIES}")
  need(cfg.param_dtype in DTYPES and cfg.dtype in DTYPES, f"dtypes must be in {DTYPES}")
  if cfg.kind == "resnet_bk":
    need(cfg.n_heads > 0, f"n_heads must be positive, got {cfg.n_heads}")
    need(cfg.eta_min > 0, f"eta_min must be > 0, got {cfg.eta_min}")
    need(cfg.resolvent_method in RESOLVENT_METHODS,
         f"resolvent_method {cfg.resolvent_method!r} not in {RESOLVENT_METHODS}")
    need(not cfg.use_semiseparable or cfg.semiseparable_rank > 0, "semiseparable_rank must be > 0")
    need(cfg.bs_window > 0, "bs_window must be > 0")
    need(cfg.bk_mixer in BK_MIXERS, f"bk_mixer {cfg.bk_mixer!r} not in {BK_MIXERS}")
    need(cfg.bk_head_dim > 0, f"bk_head_dim must be positive, got {cfg.bk_head_dim}")
    need(cfg.bk_key_dim >= 0, f"bk_key_dim must be >= 0, got {cfg.bk_key_dim}")
    need(cfg.bk_key_dim == 0 or cfg.bk_mixer == "green", "bk_key_dim > 0 needs bk_mixer='green'")
    if uses_bk_variant(cfg):
      need(not (cfg.use_semiseparable or cfg.use_birman_schwinger or cfg.use_scattering_router),
           "bk_mixer='green', selective_shift, selective_coupling, bk_conv and bk_gate build the "
           "variant block, which has no semiseparable, Birman-Schwinger or MoE options")
    if cfg.use_scattering_router:
      need(cfg.router in ROUTERS, f"router {cfg.router!r} not in {ROUTERS}")
      need(cfg.num_experts >= 2, f"num_experts must be >= 2, got {cfg.num_experts}")
      need(1 <= cfg.top_k <= cfg.num_experts, f"top_k must be in [1, num_experts], got {cfg.top_k}")
  elif cfg.kind == "mamba":
    need(cfg.mamba.d_state > 0 and cfg.mamba.d_conv > 0 and cfg.mamba.expand > 0,
         "mamba.d_state, d_conv, expand must be positive")
    need(cfg.mamba.chunk > 0, "mamba.chunk must be positive")
    need(cfg.mamba.scan_method in MAMBA_SCAN_METHODS,
         f"mamba.scan_method {cfg.mamba.scan_method!r} not in {MAMBA_SCAN_METHODS}")
  else:
    tc = cfg.transformer
    need(tc.n_heads > 0 and cfg.d_model % tc.n_heads == 0,
         f"transformer.n_heads ({tc.n_heads}) must divide d_model ({cfg.d_model})")
    need((cfg.d_model // tc.n_heads) % 2 == 0, "transformer head dim must be even (RoPE)")
    need(tc.block_size > 0 and tc.cache_window > 0, "block_size and cache_window must be > 0")
    need(tc.attention in ATTENTIONS, f"transformer.attention {tc.attention!r} not in {ATTENTIONS}")


def execution_paths(cfg: ml_collections.ConfigDict, platform: str | None = None, *,
                    batch: int | None = None, seq_len: int | None = None) -> dict[str, str]:
  """The concrete implementations `cfg` runs on `platform` (for banners, results and benchmarks).

  "auto" choices are resolved with the same rule the model applies when traced
  (`bk_jax.ops.scan.prefers_parallel`), so this names what actually runs.

  Args:
    cfg: a model ConfigDict.
    platform: "cpu", "gpu", "tpu", ...; default `jax.default_backend()`.
    batch, seq_len: the training shape; the Transformer's "auto" attention depends on it
      (without it the configured value, e.g. "auto", is reported).

  Returns:
    {"dtype": activation dtype} plus, by kind, "resolvent_method" (resnet_bk: "scan" |
    "associative" | "chunked"), "mamba_scan" (mamba: "sequential" | "associative") or
    "attention" (transformer).
  """
  paths = {"dtype": str(cfg.dtype)}
  if cfg.kind == "resnet_bk":
    paths["resolvent_method"] = resolve_method(cfg.resolvent_method, platform)
  elif cfg.kind == "mamba":
    paths["mamba_scan"] = resolve_scan_method(cfg.mamba.scan_method, platform)
  else:
    paths["attention"] = (str(cfg.transformer.attention) if batch is None or seq_len is None else
                          attention_implementation(cfg, batch=batch, seq_len=seq_len,
                                                   platform=platform))
  return paths

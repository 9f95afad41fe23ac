"""Model configuration: one `ml_collections.ConfigDict` shared by every model kind.

`configs/base.py` does ``config.model = default_model_config()`` and experiment configs override
fields. Every field is read by `bk_jax.models` (see `bk_jax.models.kinds.validate_model_config`
and the modules named in the comments); kind-specific fields are ignored by the other kinds.
"""

from __future__ import annotations

import ml_collections

# the kinds themselves are registered in bk_jax.models.kinds (KINDS, validation, execution paths)
ROUTERS = ("scattering", "learned")
REMAT_POLICIES = ("none", "full", "dots")
RESOLVENT_METHODS = ("auto", "scan", "associative", "chunked")
MAMBA_SCAN_METHODS = ("auto", "sequential", "associative")
DTYPES = ("float32", "bfloat16", "float64")
ATTENTIONS = ("auto", "xla", "cudnn", "blockwise")  # transformer.py: resolve_attention
BK_MIXERS = ("diag", "green", "green_modulus", "ward_selective")
BK_INITS = ("short_memory", "long_memory", "mimetic")
BK_MIX_METHODS = ("auto", "chunkwise", "recurrent")
BK_WRITES = ("complement", "step")  # "ward_selective": w_j = 1 - a_j | Delta_j
BK_DECAYS = ("head", "key")  # "ward_selective": a rate per head | per head and key dimension
BK_STEPS = ("head", "key")  # "ward_selective": a step Delta per head | per head and key dimension


def default_model_config() -> ml_collections.ConfigDict:
  """Returns the default model configuration (a small byte-level ResNet-BK LM).

  Returns:
    ConfigDict with the fields documented inline. `vocab_size` is overwritten by the trainer
    from the data pipeline.
  """
  c = ml_collections.ConfigDict()
  # a kind registered in kinds.py: "resnet_bk" | "mamba" | "transformer" | "mamba2"
  c.kind = "resnet_bk"
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
  # --- ResNet-BK mixer and its options (bk.py, bk_mixers.py) ---
  # "diag": features eta*g, the resolvent's diagonal (the default) | "green": values mixed by G
  # (DESIGN §2.10) | "green_modulus": values mixed by |G_ij| (a real, non-rotating kernel;
  # DESIGN §2.10) | "ward_selective": a selective step whose decay adds BK's Ward log-decay,
  # apart from the write (DESIGN §2.12)
  c.bk_mixer = "diag"
  c.bk_head_dim = 8  # "green*", "ward_selective": values per head (the vector state per head)
  # "green*": > 0 stores key (x) value outer products read by queries (n per head);
  # "ward_selective" needs it > 0
  c.bk_key_dim = 0
  # "ward_selective": True adds s_h * (BK's Ward log-decay) to the decay rate A_h; False is the
  # scalar-decay control without any resolvent (what BK adds to recall and to text)
  c.bk_ward_decay = True
  # keyed "green*": > 0 makes the last bk_selective_heads of the n_heads heads selective-step heads
  # (the "ward_selective" mixer's, with every bk_* step option below), the others Green heads:
  # heads of both kinds in one block (DESIGN §2.13). 0 = every head a Green head
  c.bk_selective_heads = 0
  # the selective step's options: "ward_selective" below stands for its heads, or the selective
  # heads of a keyed Green block (bk_selective_heads)
  # "ward_selective": the smallest step Delta_h at init (the heads' steps spread geometrically from
  # it to 0.1): the slowest head forgets over ~1 / (bk_delta_min_init * A_h) tokens at init
  c.bk_delta_min_init = 1e-3
  # "ward_selective": the decay rates A_h at init spread geometrically from 1 to this over the heads,
  # in the order of the steps (so the time scales 1 / (Delta_h A_h) spread wider); 1 = A_h = 1
  c.bk_rate_max_init = 1.0
  # "ward_selective": the write weight w_j of S_j = a_j S_{j-1} + w_j k_j x_j^T: "complement"
  # (1 - a_j: S is a convex combination of the writes) | "step" (Delta_j: Mamba-2's write)
  c.bk_write = "complement"
  # "ward_selective": the decay's rates: "head" (one rate A_h per head: a scalar decay, Mamba-2's)
  # | "key" (a rate A_{h,i} per key dimension, A_{h,i} = (i + 1) A_h at init: a diagonal decay,
  # Mamba-1's per-state rates; the chunkwise kernel then runs one head per key dimension)
  c.bk_decay = "head"
  # "ward_selective": the selective step: "head" (one Delta_j per head, Mamba-2's) | "key" (a step
  # Delta_{j,i} per key dimension from its own projection, GLA's per-key gate; every key
  # dimension of a head starts at the head's step, so only the input-dependent part differs)
  c.bk_step = "head"
  # "ward_selective": the step's dead zone tau: Delta_j = max(softplus(s_j) - tau, 0), so a token
  # whose softplus(s_j) <= tau has Delta_j = 0 exactly: no write and no decay, a skip that holds at
  # any length (a softplus step only tends to 0). 0 = the plain softplus step; the step biases
  # start at inv_softplus(Delta_h + tau), so the steps at init do not depend on tau
  c.bk_step_threshold = 0.0
  # "ward_selective": the weight beta of an L1 penalty on the steps, beta * mean_{j,h} Delta_j per
  # layer (summed over layers into the aux loss): with a step threshold, a lasso that drives the
  # steps the task does not need to exactly 0, so a layer skips those tokens rather than slowly
  # forgetting across them. 0 = no penalty
  c.bk_step_penalty = 0.0
  # keyed "green*" and "ward_selective" mixers: "chunkwise" (the state once per chunk, by matmuls; ops/chunkwise.py,
  # DESIGN §2.11) | "recurrent" (the state at every token, by the resolvent method's value scan:
  # the reference form) | "auto" (chunkwise)
  c.bk_mix_method = "auto"
  c.selective_shift = False  # per-position z_i from the input (DESIGN §2.9)
  c.selective_coupling = False  # per-position hopping t_i from the input (DESIGN §2.9)
  c.bk_conv = False  # width-4 causal depthwise conv (+ SiLU) on the block input, as Mamba's
  c.bk_gate = False  # mixer output times SiLU(W_gate u)
  # per-head Im z and potentials at init (bk_mixers.initial_eta): "short_memory" (the default:
  # eta 0.1..1 rising with the energy and random potentials: every head forgets within ~8
  # tokens) | "long_memory" (eta falls from 1 to 2 eta_min as the energy enters the band:
  # memories from ~2 to ~0.66/eta_min tokens, as Mamba's dt init spans; potentials near zero) |
  # "mimetic" (long_memory and, with bk_key_dim, W_q = W_k at init, as Trockman et al. 2024
  # initialise Mamba like linear attention)
  c.bk_init = "short_memory"
  # --- MoE (moe.py) ---
  c.use_moe = False  # True: the FFN of every BK block becomes an MoE routed by `router`
  c.num_experts = 4
  c.router = "scattering"  # "scattering" (parameter-free, DESIGN §2.6) | "learned" (top-k)
  c.top_k = 2  # learned router only
  c.aux_loss_weight = 0.01  # weight of the learned router's load-balancing loss
  # --- stack (lm.py) ---
  c.remat = "none"  # "none" | "full" | "dots"
  # training only: drop probability of the embedding and of every block's residual branch
  # (lm.py); 0 for the tasks of this project's defaults, ~0.1-0.2 where a small corpus is seen
  # many times over
  c.dropout = 0.0
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
  # Mamba-2 (SSD; mamba2.py), the reference's Mamba2 defaults
  c.mamba2 = ml_collections.ConfigDict()
  c.mamba2.d_state = 128  # S: state per head and value (B_t, C_t have S entries per group)
  c.mamba2.d_conv = 4
  c.mamba2.expand = 2  # d_inner = expand * d_model
  c.mamba2.headdim = 64  # P: values per head; H = d_inner / P heads (P must divide d_inner)
  c.mamba2.ngroups = 1  # groups of heads sharing B_t and C_t (must divide H)
  # tokens per matmul chunk of the SSD kernel (ops/chunkwise.py); 0: mamba2.SSD_CHUNK (64, the
  # fastest at this state size on the CPU and on accelerators)
  c.mamba2.chunk = 0
  c.transformer = ml_collections.ConfigDict()
  c.transformer.n_heads = 4
  # training-path attention: "auto" (cuDNN flash on GPU where it applies, else XLA's fused
  # attention while its N x N scores are affordable, else blockwise) | "xla" | "cudnn" | "blockwise"
  c.transformer.attention = "auto"
  c.transformer.block_size = 512  # query/key block of the blockwise attention
  c.transformer.cache_window = 4096  # KV ring-buffer length for streaming
  return c


# the keyed Green block and the selective step (keys 8, conv, gate): the named blocks build on
# them; _LASSO is the step's dead zone and its lasso
_GREEN_KEYED = dict(bk_mixer="green", bk_key_dim=8, bk_conv=True, bk_gate=True,
                    selective_shift=True, selective_coupling=True, eta_min=1e-3)
_SELECTIVE = dict(bk_mixer="ward_selective", bk_key_dim=8, bk_conv=True, bk_gate=True,
                  eta_min=1e-3)
_LASSO = dict(bk_step_threshold=1e-3, bk_step_penalty=0.03)

#: Named ResNet-BK blocks: the block options of `default_model_config` that make each, applied
#: by `use_bk_block` (configs/selective_*.py) and trained by the report rows "resnet_bk:NAME".
#: The default block (the seed's, features eta * g) needs no name: no options.
BK_BLOCKS = {
    # the keyed Green's-function mixer (DESIGN §2.10): the lowest loss per token on text of every
    # BK block, ahead of Mamba at equal tokens; does not learn induction heads at 256
    "green_keyed": _GREEN_KEYED,
    # the selective step on the resolvent (DESIGN §2.12): write apart from decay, the BK block
    # that learns induction heads at 256 (2 seeds of 3); behind green_keyed and Mamba on text
    "selective": _SELECTIVE,
    # the selective block whose steps are exactly 0 where the task does not need them (a dead
    # zone and its lasso, DESIGN §2.12): trained at 256 it holds induction heads to 2^16 on
    # every seed tried; 0.01 nats/char behind `selective` on text
    "selective_lasso": {**_SELECTIVE, **_LASSO},
    # heads of both kinds (DESIGN §2.13): the keyed Green block whose last 4 of its 16 heads run
    # selective_lasso's step: trained at 256 it holds induction heads to 2^16 on every seed tried
    # (2 selective heads: 3 seeds of 5); on text level with the keyed Green block at 4M tokens
    # and ahead of Mamba
    "green_selective": {**_GREEN_KEYED, "bk_selective_heads": 4, **_LASSO},
}


def use_bk_block(model: ml_collections.ConfigDict, name: str) -> ml_collections.ConfigDict:
  """Sets the options of the named block of `BK_BLOCKS` on a model config (in place).

  Args:
    model: a model ConfigDict (`default_model_config` and overrides); its kind becomes resnet_bk.
    name: a key of `BK_BLOCKS`.

  Returns:
    `model`, for chaining.

  Raises:
    ValueError: an unknown name.
  """
  if name not in BK_BLOCKS:
    raise ValueError(f"unknown ResNet-BK block {name!r}; expected one of {', '.join(BK_BLOCKS)}")
  model.kind = "resnet_bk"
  model.update(BK_BLOCKS[name])
  return model


def resolve_mix_method(method: str) -> str:
  """The keyed mixer's concrete form: "auto" is "chunkwise" (faster and smaller on the CPU at
  every measured shape, scripts/benchmark.py; the accelerator form by construction)."""
  return "chunkwise" if method == "auto" else method

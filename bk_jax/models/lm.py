"""Language model shell shared by every kind: embedding -> blocks -> RMSNorm -> head.

No position table: ResNet-BK and Mamba carry position through their recurrences, the
Transformer through RoPE on absolute positions; the optional prime-bump bias (ResNet-BK) is a
function of the absolute position. Nothing is sized by the sequence length.

Blocks share one interface (`bk_jax.models.kinds.Block`): ``block(x, carry, pos, bias) -> (x,
carry, aux)`` and ``block.init_carry(batch) -> carry``; the kind's registration
(`bk_jax.models.kinds`) builds them. With `scan_layers` the block parameters are stacked along a
leading layer axis (logical name None) and the stack runs under `nnx.scan`; otherwise blocks are
a Python list. The streaming cache has the same layout either way:

    ModelCache(layers=per-layer carries stacked on a leading (n_layers,) axis, pos=int32 scalar)

`forward` returns one type, ``ModelOutput(logits, cache, aux)``; ``model(tokens[, cache])`` is the
public form of DESIGN §4 on top of it (logits, or (logits, cache) when streaming).

`remat` wraps each block call: "none", "full" (save nothing), "dots" (save matmul outputs
without batch dimensions, `jax.checkpoint_policies.dots_with_no_batch_dims_saveable`).

`dropout` (training only: `forward(..., dropout_key=key)`) drops entries of the embedding and
of every block's residual branch with probability p and scales the rest by 1 / (1 - p)
(inverted dropout). The branch is taken as ``block(x) - x``, so one rule holds for every kind
whatever its blocks compute inside (a Transformer block's attention and MLP branches are dropped
as their sum, where GPT-2 drops each); without a key (evaluation, streaming, generation) nothing
is dropped and the model is the deterministic one.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from bk_jax.models.bk import prime_bump_potential
from bk_jax.models.kinds import get_kind, reduce_aux
from bk_jax.models.layers import RMSNorm, dense, embedding, to_dtype
from bk_jax.sharding import constrain


class ModelCache(NamedTuple):
  """Streaming state of a whole model (a pytree; its shapes never change as tokens are consumed).

  Attributes:
    layers: the kind's per-layer carry (`Block.init_carry`), stacked on a leading (n_layers,) axis.
    pos: int32 scalar, the absolute position of the next token.
  """
  layers: Any
  pos: jax.Array


class ModelOutput(NamedTuple):
  """What `LanguageModel.forward` returns (one type whatever the arguments).

  Attributes:
    logits: float32 (B, N, vocab).
    cache: the new `ModelCache` when the call was given one, else None (the training path).
    aux: {"aux_loss": scalar (already weighted)} plus the kind's statistics, reduced over layers
      with the reductions the kind declares (`ModelKind.aux_reduce`): with the MoE
      "moe/expert_load" (E,), "moe/routing_entropy"; with the monitors "bk/schatten_s1",
      "bk/schatten_s2", "bk/condition_number", "bk/precision_flags", "bk/precision_upgrades".
  """
  logits: jax.Array
  cache: ModelCache | None
  aux: dict[str, jax.Array]

# logical axes of the residual stream and of the logits (bk_jax.sharding rules "activation_*")
_BLD = ("activation_batch", "activation_length", "activation_embed")
_BLV = ("activation_batch", "activation_length", "activation_vocab")

_REMAT_POLICIES = {
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


def _make_block(cfg: Any, rngs: nnx.Rngs) -> nnx.Module:
  return get_kind(cfg.kind).make_block(cfg, rngs, to_dtype(cfg.dtype), to_dtype(cfg.param_dtype))


class LanguageModel(nnx.Module):
  """Causal LM over int tokens for every model kind (see the module docstring).

  Args (constructor):
    cfg: a validated model ConfigDict.
    rngs: parameter RNG streams.
  """

  def __init__(self, cfg: Any, *, rngs: nnx.Rngs):
    dt, pdt = to_dtype(cfg.dtype), to_dtype(cfg.param_dtype)
    self.kind, self.n_layers, self.scan_layers = cfg.kind, cfg.n_layers, cfg.scan_layers
    self.prime_bump_scale = cfg.prime_bump_scale if cfg.prime_bump else None
    self.remat_policy = _REMAT_POLICIES.get(cfg.remat)  # None for "none"
    self.dropout = float(cfg.dropout)
    self.embed = embedding(cfg.vocab_size, cfg.d_model, rngs=rngs, dtype=dt, param_dtype=pdt)
    if cfg.scan_layers:
      @nnx.split_rngs(splits=cfg.n_layers)
      @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata={nnx.PARTITION_NAME: None})
      def make_stack(r):
        return _make_block(cfg, r)
      self.blocks = make_stack(rngs)
    else:
      self.blocks = nnx.List([_make_block(cfg, rngs) for _ in range(cfg.n_layers)])
    self.final_norm = RMSNorm(cfg.d_model, param_dtype=pdt)
    # small head: logits ~ N(0, 0.01) at init, so the initial loss is ~log(vocab). The head
    # computes in float32 whatever `dtype` is: bf16 logits would carry ~0.4% relative error
    # straight into the loss (mixed precision: features in bf16, logits and loss in float32).
    self.logits_dtype = jnp.promote_types(dt, jnp.float32)
    self.head = dense(cfg.d_model, cfg.vocab_size, ("embed", "vocab"), scale=0.01, rngs=rngs,
                      dtype=self.logits_dtype, param_dtype=pdt)

  def _first_block(self) -> nnx.Module:
    # init_carry only reads static attributes, which a stacked module shares across layers
    return self.blocks if self.scan_layers else self.blocks[0]

  def init_cache(self, batch_size: int) -> ModelCache:
    """Streaming state for a fresh sequence.

    Args:
      batch_size: B.

    Returns:
      ModelCache(layers=carries with a leading (n_layers,) axis, pos=int32 scalar 0); the shapes
      never change as tokens are consumed.
    """
    one = self._first_block().init_carry(batch_size)
    layers = jax.tree.map(lambda a: jnp.broadcast_to(a, (self.n_layers,) + a.shape), one)
    return ModelCache(layers=layers, pos=jnp.zeros((), jnp.int32))

  def _drop(self, x: jax.Array, key: jax.Array) -> jax.Array:
    """Inverted dropout of x with probability `self.dropout`."""
    keep = jax.random.bernoulli(key, 1.0 - self.dropout, x.shape)
    return jnp.where(keep, x / (1.0 - self.dropout), 0).astype(x.dtype)

  def _run_blocks(self, x, carries, pos, bias, keys):
    """Runs every block; returns (x, stacked new carries, stacked per-layer aux).

    keys: (n_layers,) dropout keys, or None (nothing dropped)."""

    def call(block, x, carry, key):
      y, carry, aux = block(x, carry, pos, bias)
      if key is not None:  # residual dropout of the branch the block added
        y = x + self._drop(y - x, key)
      return constrain(y, _BLD), carry, aux  # block boundary: keep batch/length sharded

    if self.remat_policy is not None:
      call = nnx.remat(call, policy=self.remat_policy)
    if self.scan_layers:
      @nnx.scan(in_axes=(0, nnx.Carry, 0, 0), out_axes=(nnx.Carry, 0, 0))
      def scan_fn(block, x, carry, key):
        return call(block, x, carry, key)
      return scan_fn(self.blocks, x, carries, keys)
    new_carries, auxes = [], []
    for i, block in enumerate(self.blocks):
      carry = None if carries is None else jax.tree.map(lambda a: a[i], carries)
      x, carry, aux = call(block, x, carry, None if keys is None else keys[i])
      new_carries.append(carry)
      auxes.append(aux)
    stack = lambda *xs: jnp.stack(xs)
    return x, jax.tree.map(stack, *new_carries), jax.tree.map(stack, *auxes)

  def __call__(self, tokens: jax.Array, cache: ModelCache | None = None):
    """The public call of DESIGN §4: logits, or (logits, new cache) when streaming.

    Args:
      tokens: int32 (B, N).
      cache: streaming state from `init_cache` or a previous call; None for a fresh sequence
        without returning state (the training path).

    Returns:
      logits float32 (B, N, vocab) without `cache`; (logits, new ModelCache) with it. `forward`
      returns everything (logits, cache and the aux figures) as one `ModelOutput`.
    """
    out = self.forward(tokens, cache)
    return out.logits if cache is None else (out.logits, out.cache)

  def position_bias(self, pos: jax.Array, n: int) -> jax.Array | None:
    """The (N,) prime-bump potential bias of positions pos ... pos + n - 1, or None without it."""
    if self.prime_bump_scale is None:
      return None
    return prime_bump_potential(pos + jnp.arange(n, dtype=jnp.int32), self.prime_bump_scale)

  def logits(self, x: jax.Array) -> jax.Array:
    """float32 (B, N, vocab) next-token logits of the last block's output x (B, N, d_model)."""
    return constrain(self.head(self.final_norm(x).astype(self.logits_dtype)).astype(jnp.float32),
                     _BLV)

  def forward(self, tokens: jax.Array, cache: ModelCache | None = None, *,
              dropout_key: jax.Array | None = None) -> ModelOutput:
    """Next-token logits, the new streaming state and the aux figures, as one `ModelOutput`.

    Args:
      tokens: int32 (B, N).
      cache: streaming state from `init_cache` or a previous call; None for a fresh sequence
        without returning state (the training path).
      dropout_key: a PRNG key: drop with the configured `dropout` rate (the train step passes
        one per step); None: deterministic (every other caller).

    Returns:
      ModelOutput(logits float32 (B, N, vocab), the new ModelCache or None when `cache` is None,
      aux dict); under jit, outputs a caller does not use cost nothing.
    """
    if tokens.ndim != 2:
      raise ValueError(f"tokens must be (batch, length); got shape {tokens.shape}")
    n = tokens.shape[1]
    pos = jnp.zeros((), jnp.int32) if cache is None else cache.pos
    keys = None
    if dropout_key is not None and self.dropout > 0:
      keys = jax.random.split(dropout_key, self.n_layers + 1)
    x = self.embed(tokens)
    if keys is not None:
      x = self._drop(x, keys[-1])
    x = constrain(x, _BLD)
    carries = None if cache is None else cache.layers
    x, new_carries, aux = self._run_blocks(x, carries, pos, self.position_bias(pos, n),
                                           None if keys is None else keys[:-1])
    logits = self.logits(x)
    new_cache = None if cache is None else ModelCache(layers=new_carries, pos=pos + n)
    return ModelOutput(logits, new_cache, reduce_aux(self.kind, aux))

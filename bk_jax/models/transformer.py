"""Causal Transformer block (attention baseline): RoPE, fused/blockwise attention, KV ring cache.

Training path (no cache): full causal attention over the chunk through `causal_attention`, whose
implementation `model.transformer.attention` selects (see `resolve_attention`):

* "cudnn": `jax.nn.dot_product_attention(..., implementation="cudnn")`, cuDNN flash attention
  (GPU, bf16/fp16, head dim a multiple of 8 and <= 128): no N x N matrix, causal tiles skipped.
* "xla": `jax.nn.dot_product_attention(..., implementation="xla")`: one fused softmax(QK^T)V
  that materialises the (B, h, N, N) float32 scores (softmax always in float32).
* "blockwise": the `lax.scan` flash-style attention below (`blockwise_attention`).
* "auto" (default): cudnn where it applies on a GPU; otherwise xla up to the length where its
  N x N scores stop paying off (CPU: measured, see `XLA_MAX_LEN`), blockwise beyond.

`blockwise_attention`: queries in blocks of `block_size`, and for each query block a `lax.scan`
over key blocks with an online softmax (running max m, normaliser l, accumulator o). Key blocks
that the mask removes entirely are skipped with `lax.cond` (half of the work for causal
attention). Both scan bodies are `jax.checkpoint`-ed, so neither the forward nor the backward
pass ever holds more than one (block x block) score tile per head: 32k tokens run on the CPU
without an N x N matrix.

Streaming: the cache is a ring buffer of the last `cache_window` = W keys/values (after RoPE)
with their absolute positions (-1 = empty slot). In streaming mode every query attends to the
W most recent positions including itself (sliding-window attention of width W, always computed
by `blockwise_attention`, which handles the ring's arbitrary slot positions); positions that
fell out of the ring are dropped. The result is independent of how the stream is chunked, and
equals full causal attention while the total length is <= W.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from bk_jax.models.layers import FFN, RMSNorm, dense

class KVCache(NamedTuple):
  """Streaming state of one Transformer block: a KV ring buffer of W slots."""
  k: jax.Array  # (B, W, heads, head_dim)
  v: jax.Array  # (B, W, heads, head_dim)
  positions: jax.Array  # (W,) int32 absolute position held by each slot; -1 = empty
_MASKED = -1e30  # finite "minus infinity": keeps fully-masked tiles NaN-free (see _attend_block)


def rope(x: jax.Array, positions: jax.Array, theta: float = 10000.0) -> jax.Array:
  """Rotary position embedding.

  Args:
    x: (B, N, h, dh) with dh even.
    positions: (N,) absolute int positions.

  Returns:
    (B, N, h, dh) rotated (pairs (x[2i], x[2i+1]) rotated by positions * theta^(-2i/dh)).
  """
  dh = x.shape[-1]
  freq = theta ** (-jnp.arange(0, dh, 2, dtype=jnp.float32) / dh)
  ang = positions.astype(jnp.float32)[:, None] * freq  # (N, dh/2)
  cos, sin = jnp.cos(ang)[:, None, :], jnp.sin(ang)[:, None, :]
  x1, x2 = x[..., 0::2].astype(jnp.float32), x[..., 1::2].astype(jnp.float32)
  out = jnp.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], axis=-1)
  return out.reshape(x.shape).astype(x.dtype)


def _pad_to(x: jax.Array, axis: int, multiple: int, value=0) -> jax.Array:
  pad = -x.shape[axis] % multiple
  if not pad:
    return x
  widths = [(0, 0)] * x.ndim
  widths[axis] = (0, pad)
  return jnp.pad(x, widths, constant_values=value)


def blockwise_attention(q, k, v, q_pos, k_pos, *, window: int | None, block: int) -> jax.Array:
  """Masked softmax attention without materialising the (Nq, Nk) score matrix.

  Key j is visible to query i iff k_pos[j] >= 0, k_pos[j] <= q_pos[i] and, when `window` is set,
  q_pos[i] - k_pos[j] < window. Every query must see at least one key (itself, in this model).

  Args:
    q: (B, Nq, h, dh); k, v: (B, Nk, h, dh).
    q_pos: (Nq,) int32; k_pos: (Nk,) int32 (-1 marks an empty key slot).
    window: sliding-window width, or None for unlimited causal attention.
    block: query and key tile length.

  Returns:
    (B, Nq, h, dh) attention output in q.dtype.
  """
  b, nq, h, dh = q.shape
  scale = dh ** -0.5
  qb = _pad_to(q, 1, block)
  qp = _pad_to(q_pos, 0, block, value=-1)  # padded queries see nothing; sliced off below
  kb, vb = _pad_to(k, 1, block), _pad_to(v, 1, block)
  kp = _pad_to(k_pos, 0, block, value=-1)
  n_qb, n_kb = qb.shape[1] // block, kb.shape[1] // block
  # tiles, block index first: q (n_qb, B, h, bq, dh), k/v (n_kb, B, h, bk, dh)
  tile = lambda t, n: jnp.moveaxis(t.reshape(b, n, block, h, dh), (1, 3), (0, 2))
  q_t, k_t, v_t = tile(qb, n_qb), tile(kb, n_kb), tile(vb, n_kb)
  qp_t, kp_t = qp.reshape(n_qb, block), kp.reshape(n_kb, block)

  @jax.checkpoint
  def one_query_block(_, xs):
    q_i, qp_i = xs

    @jax.checkpoint
    def key_step(carry, ys):
      k_j, v_j, kp_j = ys
      visible = (kp_j[None, :] >= 0) & (kp_j[None, :] <= qp_i[:, None])
      if window is not None:
        visible &= qp_i[:, None] - kp_j[None, :] < window
      skip = ~jnp.any(visible)

      def attend(carry):
        o, m, l = carry
        # Matmuls in the input dtype (bf16 under mixed precision) with float32 accumulation;
        # the softmax statistics m, l and the accumulator o stay float32.
        s = jnp.einsum("bhqd,bhkd->bhqk", q_i, k_j, preferred_element_type=jnp.float32) * scale
        s = jnp.where(visible, s, _MASKED)
        m_new = jnp.maximum(m, s.max(-1))
        # Rows with nothing visible yet accumulate exp(0) terms; the first visible key makes
        # m jump by ~1e30 and corr = 0 erases them, so the result is exact.
        p = jnp.exp(s - m_new[..., None])
        corr = jnp.exp(m - m_new)
        pv = jnp.einsum("bhqk,bhkd->bhqd", p.astype(v_j.dtype), v_j,
                        preferred_element_type=jnp.float32)
        return o * corr[..., None] + pv, m_new, l * corr + p.sum(-1)

      return jax.lax.cond(skip, lambda c: c, attend, carry), None

    init = (jnp.zeros((b, h, block, dh), jnp.float32),
            jnp.full((b, h, block), _MASKED, jnp.float32), jnp.zeros((b, h, block), jnp.float32))
    (o, _, l), _ = jax.lax.scan(key_step, init, (k_t, v_t, kp_t))
    return None, o / l[..., None]

  _, out = jax.lax.scan(one_query_block, None, (q_t, qp_t))  # (n_qb, B, h, bq, dh)
  out = jnp.moveaxis(out, (0, 2), (1, 3)).reshape(b, n_qb * block, h, dh)
  return out[:, :nq].astype(q.dtype)


ATTENTION_IMPLEMENTATIONS = ("xla", "cudnn", "blockwise")  # what `resolve_attention` returns

# "auto" off cuDNN: XLA's fused attention while its float32 score tensor (B, h, N, N) stays
# within XLA_SCORE_BYTES[platform] bytes, blockwise beyond. On the CPU blockwise was faster at
# every size measured, so the CPU limit is 0 (always blockwise). `python scripts/bench_attention.py`
# (fwd+bwd of the attention alone, batch 1, head dim 32, float32, jax 0.10.2; 2-core CPU shared
# with other jobs, so absolute figures are noisy), tokens/s xla / blockwise:
#   d_model 128 ( 4 heads): N 512  1,544 / 25,922; N 2k 859 / 5,422; N 8k 85 / 590
#   d_model 256 ( 8 heads): N 512    962 /  1,507; N 2k 168 /   698; N 8k  - / 219
#   d_model 512 (16 heads): N 512    732 /    811; N 2k 107 /   546; N 8k  - / 108
# Rerun (d_model 128 / 512 only, load average 27): N 512 2,568 / 4,903 and 548 / 626;
# N 2k 397 / 1,401 and 105 / 368. Blockwise: 1.1-17x at N 512 (noisy), 3.5-7x at N 2k-8k.
# XLA's compiled fwd+bwd memory at 8k: 4.0 / 8.1 / 16.1 GB (4, 8, 16 heads; not run above
# 8 GB) against 0.07 / 0.14 / 0.28 GB blockwise. Accelerators without cuDNN (f32 on a GPU,
# TPU) keep XLA's single fused kernel up to 2 GiB of scores (not measured here: no GPU).
XLA_SCORE_BYTES = {"cpu": 0}
XLA_SCORE_BYTES_DEFAULT = 2 * 2**30


def cudnn_supported(dtype, head_dim: int) -> bool:
  """Whether cuDNN flash attention takes these inputs: bf16/fp16, head dim % 8 == 0, <= 128."""
  return jnp.dtype(dtype) in (jnp.bfloat16, jnp.float16) and head_dim % 8 == 0 and head_dim <= 128


def resolve_attention(requested: str, *, dtype, batch: int, heads: int, head_dim: int,
                      seq_len: int, platform: str | None = None) -> str:
  """The attention implementation that runs for `requested` on `platform`.

  Args:
    requested: model.transformer.attention: "auto", "xla", "cudnn" or "blockwise".
    dtype: q/k/v dtype (the model's activation dtype).
    batch, heads, head_dim, seq_len: the attention's shape (B, N, h, dh).
    platform: "cpu", "gpu", "tpu"; default `jax.default_backend()`.

  Returns:
    One of ATTENTION_IMPLEMENTATIONS. "auto" -> "cudnn" on a GPU where `cudnn_supported`;
    otherwise "xla" while B * h * N^2 float32 scores fit in `XLA_SCORE_BYTES[platform]`,
    else "blockwise".

  Raises:
    ValueError: unknown name, or "cudnn" off a GPU or for unsupported dtype/head dim.
  """
  platform = platform or jax.default_backend()
  if requested == "auto":
    if platform == "gpu" and cudnn_supported(dtype, head_dim):
      return "cudnn"
    score_bytes = 4 * batch * heads * seq_len * seq_len
    limit = XLA_SCORE_BYTES.get(platform, XLA_SCORE_BYTES_DEFAULT)
    return "xla" if score_bytes <= limit else "blockwise"
  if requested == "cudnn":
    if platform != "gpu":
      raise ValueError(f"attention 'cudnn' needs a GPU; this process runs on {platform!r}")
    if not cudnn_supported(dtype, head_dim):
      raise ValueError(f"attention 'cudnn' needs bfloat16/float16 and a head dim that is a "
                       f"multiple of 8 and <= 128; got {jnp.dtype(dtype).name}, {head_dim}")
  if requested not in ATTENTION_IMPLEMENTATIONS:
    raise ValueError(f"unknown attention {requested!r}; expected 'auto' or one of "
                     f"{ATTENTION_IMPLEMENTATIONS}")
  return requested


def attention_implementation(model_cfg, *, batch: int, seq_len: int,
                             platform: str | None = None) -> str | None:
  """What the Transformer's training path runs for a model config (banner, benchmarks).

  Args:
    model_cfg: a model ConfigDict.
    batch, seq_len: sequences per step and their length (the "auto" choice depends on them).
    platform: default `jax.default_backend()`.

  Returns:
    One of ATTENTION_IMPLEMENTATIONS, or None when model_cfg.kind is not "transformer".
  """
  if model_cfg.kind != "transformer":
    return None
  t = model_cfg.transformer
  return resolve_attention(t.attention, dtype=jnp.dtype(model_cfg.dtype), batch=batch,
                           heads=t.n_heads, head_dim=model_cfg.d_model // t.n_heads,
                           seq_len=seq_len, platform=platform)


def causal_attention(q, k, v, *, implementation: str, block: int) -> jax.Array:
  """Full causal self-attention over one chunk (the training path).

  Args:
    q, k, v: (B, N, h, dh) after RoPE.
    implementation: one of ATTENTION_IMPLEMENTATIONS (already resolved).
    block: tile length of the blockwise implementation.

  Returns:
    (B, N, h, dh) in q.dtype; softmax in float32 in every implementation.
  """
  if implementation == "blockwise":
    positions = jnp.arange(q.shape[1], dtype=jnp.int32)
    return blockwise_attention(q, k, v, positions, positions, window=None, block=block)
  return jax.nn.dot_product_attention(q, k, v, is_causal=True, implementation=implementation)


class TransformerBlock(nnx.Module):
  """Pre-norm causal self-attention + GELU FFN.

  Args (constructor):
    d_model, n_heads, d_ff: sizes; block_size: blockwise attention tile; cache_window: KV ring
    length W; attention: training-path implementation ("auto" or one of
    ATTENTION_IMPLEMENTATIONS, resolved at trace time by `resolve_attention`).
  """

  def __init__(self, d_model: int, n_heads: int, d_ff: int, *, block_size: int, cache_window: int,
               n_layers: int, rngs: nnx.Rngs, attention: str = "auto", dtype=jnp.float32,
               param_dtype=jnp.float32):
    kw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype)
    out_scale = 1.0 / (2 * n_layers)
    self.n_heads, self.d_head, self.attention = n_heads, d_model // n_heads, attention
    self.block_size, self.cache_window, self.dtype = block_size, cache_window, dtype
    self.norm1 = RMSNorm(d_model, param_dtype=param_dtype)
    self.qkv = dense(d_model, 3 * d_model, ("embed", "heads"), **kw)
    self.out = dense(d_model, d_model, ("heads", "embed"), scale=out_scale, **kw)
    self.norm2 = RMSNorm(d_model, param_dtype=param_dtype)
    self.ffn = FFN(d_model, d_ff, out_scale=out_scale, **kw)

  def init_carry(self, batch_size: int) -> KVCache:
    """Empty KV ring buffer (all positions -1)."""
    shape = (batch_size, self.cache_window, self.n_heads, self.d_head)
    return KVCache(k=jnp.zeros(shape, self.dtype), v=jnp.zeros(shape, self.dtype),
                   positions=jnp.full((self.cache_window,), -1, jnp.int32))

  def _push(self, cache: KVCache, k, v, positions) -> KVCache:
    """Writes the last min(N, W) keys/values into their ring slots (position mod W)."""
    ck, cv, cpos = cache
    m = min(k.shape[1], self.cache_window)  # static; m consecutive positions -> distinct slots
    pos = positions[-m:]
    slots = pos % self.cache_window
    return KVCache(k=ck.at[:, slots].set(k[:, -m:].astype(ck.dtype)),
                   v=cv.at[:, slots].set(v[:, -m:].astype(cv.dtype)),
                   positions=cpos.at[slots].set(pos))

  def __call__(self, x: jax.Array, carry: KVCache | None, pos: jax.Array,
               bias: jax.Array | None) -> tuple[jax.Array, KVCache, dict[str, jax.Array]]:
    """One block over a chunk.

    Args:
      x: (B, N, d_model) residual stream.
      carry: KV ring from earlier chunks (streaming: sliding-window attention of width W), or
        None (training: full causal attention within the chunk).
      pos: int32 absolute position of x[:, 0] (RoPE and the mask use absolute positions).
      bias: unused (the prime-bump bias is a ResNet-BK feature).

    Returns:
      (x + block(x), updated KV ring, {"aux_loss": 0}).
    """
    del bias
    b, n, _ = x.shape
    positions = pos + jnp.arange(n, dtype=jnp.int32)
    q, k, v = jnp.split(self.qkv(self.norm1(x)), 3, axis=-1)
    heads = lambda t: t.reshape(b, n, self.n_heads, self.d_head)
    q, k, v = rope(heads(q), positions), rope(heads(k), positions), heads(v)
    if carry is None:
      impl = resolve_attention(self.attention, dtype=q.dtype, batch=b, heads=self.n_heads,
                               head_dim=self.d_head, seq_len=n)
      att = causal_attention(q, k, v, implementation=impl, block=self.block_size)
      carry = self.init_carry(b)
    else:
      ck, cv, cpos = carry
      att = blockwise_attention(
          q, jnp.concatenate([ck.astype(k.dtype), k], 1), jnp.concatenate([cv.astype(v.dtype), v], 1),
          positions, jnp.concatenate([cpos, positions]), window=self.cache_window,
          block=self.block_size)
    x = x + self.out(att.reshape(b, n, -1))
    x = x + self.ffn(self.norm2(x))
    return x, self._push(carry, k, v, positions), {"aux_loss": jnp.zeros((), jnp.float32)}

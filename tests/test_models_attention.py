"""Transformer attention implementations: dense references, gradients, causality, selection."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from bk_jax.models import build_model, default_model_config
from bk_jax.models.transformer import (attention_implementation, causal_attention,
                                       resolve_attention)

CPU_IMPLS = ("xla", "blockwise")  # "cudnn" needs a GPU (its refusal is tested below)


@pytest.fixture(autouse=True)
def _float32_matmuls():
  """float32 checks against float64 references compute in true float32: on NVIDIA GPUs XLA's
  default precision runs float32 matmuls in TF32 (10-bit mantissa), which put these tests off by
  ~1e-4 relative on an H200. The bf16 cuDNN test states its own (bf16) accuracy."""
  with jax.default_matmul_precision("highest"):
    yield


def _numpy_causal_attention(q, k, v):
  """float64 numpy reference: softmax(q k^T / sqrt(dh) + causal mask) v, per batch and head."""
  q, k, v = (np.asarray(t, np.float64) for t in (q, k, v))
  s = np.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(q.shape[-1])
  n = q.shape[1]
  s = np.where(np.tril(np.ones((n, n), bool)), s, -np.inf)
  p = np.exp(s - s.max(-1, keepdims=True))
  p /= p.sum(-1, keepdims=True)
  return np.einsum("bhqk,bkhd->bqhd", p, v)


def _jnp_causal_attention(q, k, v):
  """The same dense reference in jnp (differentiable), for gradients."""
  s = jnp.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(q.shape[-1])
  n = q.shape[1]
  s = jnp.where(jnp.tril(jnp.ones((n, n), bool)), s, -jnp.inf)
  return jnp.einsum("bhqk,bkhd->bqhd", jax.nn.softmax(s, -1), v)


def _qkvw(n=19, b=2, h=3, dh=8, seed=0):
  ks = jax.random.split(jax.random.key(seed), 4)
  return tuple(jax.random.normal(kk, (b, n, h, dh), jnp.float32) for kk in ks)


@pytest.mark.parametrize("impl", CPU_IMPLS)
def test_attention_values_match_dense_numpy(impl):
  q, k, v, _ = _qkvw()  # N = 19 is not a multiple of the block: padding is exercised
  out = causal_attention(q, k, v, implementation=impl, block=4)
  assert out.shape == q.shape and out.dtype == jnp.float32
  np.testing.assert_allclose(out, _numpy_causal_attention(q, k, v), atol=2e-6, rtol=0)


@pytest.mark.parametrize("impl", CPU_IMPLS)
def test_attention_gradients_match_dense(impl):
  q, k, v, w = _qkvw()
  loss = lambda f: lambda q, k, v: jnp.sum(f(q, k, v) * w)
  got = jax.grad(loss(lambda *a: causal_attention(*a, implementation=impl, block=4)),
                 argnums=(0, 1, 2))(q, k, v)
  ref = jax.grad(loss(_jnp_causal_attention), argnums=(0, 1, 2))(q, k, v)
  for g, r, name in zip(got, ref, "qkv"):
    assert float(jnp.abs(r).max()) > 0.1, name  # the reference gradient is not trivially 0
    np.testing.assert_allclose(g, r, atol=2e-5, rtol=0, err_msg=f"d/d{name}")


def test_attention_implementations_agree():
  q, k, v, w = _qkvw(n=37, h=2, dh=16, seed=3)
  outs = {i: causal_attention(q, k, v, implementation=i, block=8) for i in CPU_IMPLS}
  grads = {i: jax.grad(lambda q: jnp.sum(causal_attention(q, k, v, implementation=i, block=8)
                                         * w))(q) for i in CPU_IMPLS}
  np.testing.assert_allclose(outs["xla"], outs["blockwise"], atol=2e-6, rtol=0)
  np.testing.assert_allclose(grads["xla"], grads["blockwise"], atol=2e-5, rtol=0)


@pytest.mark.parametrize("impl", CPU_IMPLS)
def test_attention_bf16_close_to_f32(impl):
  """bf16 q/k/v: output bf16, float32 softmax; error at bf16 resolution of the f32 result."""
  q, k, v, _ = _qkvw(n=32)
  ref = causal_attention(q, k, v, implementation=impl, block=8)
  bf = lambda t: t.astype(jnp.bfloat16)
  out = causal_attention(bf(q), bf(k), bf(v), implementation=impl, block=8)
  assert out.dtype == jnp.bfloat16
  # inputs rounded to 2^-9 relative, probabilities rounded to bf16, output rounded: a few 1e-2
  err = np.abs(np.asarray(out, np.float32) - np.asarray(ref)).max()
  assert err < 0.03, err


def _transformer_config(attention):
  c = default_model_config()
  c.kind, c.vocab_size, c.d_model, c.n_layers, c.d_ff = "transformer", 61, 32, 2, 64
  c.transformer.n_heads, c.transformer.block_size = 4, 8
  c.transformer.attention = attention
  return c


@pytest.mark.parametrize("impl", CPU_IMPLS)
def test_model_causal_under_each_implementation(impl):
  model = build_model(_transformer_config(impl))
  t = jax.random.randint(jax.random.key(0), (2, 30), 0, 61, jnp.int32)
  j = 17
  t2 = t.at[:, j].set((t[:, j] + 5) % 61)
  fwd = nnx.jit(lambda m, x: m(x))
  a, b = np.asarray(fwd(model, t)), np.asarray(fwd(model, t2))
  assert np.abs(a[:, :j] - b[:, :j]).max() == 0.0  # logits before j never see token j
  assert np.abs(a[:, j:] - b[:, j:]).max() > 1e-4


def test_models_with_each_implementation_agree():
  t = jax.random.randint(jax.random.key(1), (2, 29), 0, 61, jnp.int32)
  logits = {i: build_model(_transformer_config(i))(t) for i in ("auto", *CPU_IMPLS)}
  np.testing.assert_allclose(logits["xla"], logits["blockwise"], atol=1e-5, rtol=0)
  np.testing.assert_allclose(logits["auto"], logits["blockwise"], atol=1e-5, rtol=0)


def test_resolve_attention_rules():
  kw = dict(batch=1, heads=4, head_dim=64, seq_len=8192)
  assert resolve_attention("auto", dtype=jnp.bfloat16, platform="gpu", **kw) == "cudnn"
  # cuDNN takes bf16/fp16 only, head dim a multiple of 8 and <= 128
  assert resolve_attention("auto", dtype=jnp.float32, platform="gpu", **kw) != "cudnn"
  assert resolve_attention("auto", dtype=jnp.bfloat16, platform="gpu",
                           **dict(kw, head_dim=12)) != "cudnn"
  # off cuDNN, long N switches to blockwise (XLA's N x N scores would not fit)
  big = dict(kw, seq_len=131072)
  for platform in ("cpu", "gpu", "tpu"):
    assert resolve_attention("auto", dtype=jnp.float32, platform=platform, **big) == "blockwise"
  for impl in CPU_IMPLS:  # explicit choices are honoured
    assert resolve_attention(impl, dtype=jnp.float32, platform="cpu", **big) == impl
  with pytest.raises(ValueError, match="needs a GPU"):
    resolve_attention("cudnn", dtype=jnp.bfloat16, platform="cpu", **kw)
  with pytest.raises(ValueError, match="bfloat16/float16"):
    resolve_attention("cudnn", dtype=jnp.float32, platform="gpu", **kw)


def test_attention_implementation_for_configs():
  c = _transformer_config("blockwise")
  assert attention_implementation(c, batch=2, seq_len=4096, platform="cpu") == "blockwise"
  c.transformer.attention, c.dtype = "auto", "bfloat16"
  assert attention_implementation(c, batch=2, seq_len=4096, platform="gpu") == "cudnn"
  c.kind = "resnet_bk"
  assert attention_implementation(c, batch=2, seq_len=4096) is None


def test_bad_attention_config_raises():
  with pytest.raises(ValueError, match="transformer.attention"):
    build_model(_transformer_config("flash"))


@pytest.mark.skipif(jax.default_backend() != "gpu", reason="cuDNN attention needs an NVIDIA GPU")
def test_cudnn_attention_matches_dense_numpy_on_gpu():
  """The GPU default ("auto" -> cuDNN flash attention in bf16): values and q/k/v gradients
  against the float64 reference on the same bf16-rounded inputs, at bf16 accuracy."""
  q, k, v, w = (t.astype(jnp.bfloat16) for t in _qkvw(n=300, h=4, dh=64))
  out = causal_attention(q, k, v, implementation="cudnn", block=128)
  ref = _numpy_causal_attention(q, k, v)
  assert out.dtype == jnp.bfloat16
  np.testing.assert_allclose(np.asarray(out, np.float64), ref, atol=2e-2 * np.abs(ref).max(), rtol=0)
  loss = lambda f: lambda q, k, v: jnp.sum(f(q, k, v).astype(jnp.float32) * w.astype(jnp.float32))
  got = jax.grad(loss(lambda *a: causal_attention(*a, implementation="cudnn", block=128)),
                 argnums=(0, 1, 2))(q, k, v)
  f32 = lambda t: t.astype(jnp.float32)
  want = jax.grad(loss(lambda *a: _jnp_causal_attention(*map(f32, a))), argnums=(0, 1, 2))(q, k, v)
  for g, r, name in zip(got, want, "qkv"):
    scale = float(jnp.abs(r).max())
    assert scale > 0.1, name
    np.testing.assert_allclose(np.asarray(g, np.float64), np.asarray(r, np.float64),
                               atol=3e-2 * scale, rtol=0, err_msg=f"d/d{name}")

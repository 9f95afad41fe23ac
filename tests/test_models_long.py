"""Forward + backward at N = 131,072 tokens on the CPU (slow; run with `pytest -m slow`)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from bk_jax.models import build_model, default_model_config

N = 131_072


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["resnet_bk", "mamba", "mamba2"])
def test_forward_backward_131k_finite(kind):
  c = default_model_config()
  c.kind, c.vocab_size, c.d_model, c.n_layers, c.n_heads, c.d_ff = kind, 259, 32, 2, 8, 64
  c.remat = "full"
  model = build_model(c)
  t = jax.random.randint(jax.random.key(0), (1, N + 1), 0, 259, dtype=jnp.int32)

  def loss_fn(m, t):
    logits, _, aux = m.forward(t[:, :-1])
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, t[:, 1:]).mean()
    return ce + aux["aux_loss"]

  loss, grads = nnx.jit(nnx.value_and_grad(loss_fn))(model, t)
  assert np.isfinite(float(loss))
  for path, g in nnx.to_flat_state(grads):
    assert np.all(np.isfinite(g[...])), path

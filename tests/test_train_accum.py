"""Gradient accumulation (train.grad_accum_steps): k microbatches == the whole batch at once."""

import jax
import numpy as np
import pytest
from flax import nnx

from bk_jax.models import build_model
from bk_jax.sharding import batch_sharding, make_mesh
from bk_jax.train.cli import DEFAULT_CONFIG, load_config
from bk_jax.train.config_validation import ConfigError, validate_config
from bk_jax.train.schedule import learning_rate_schedule
from bk_jax.train.state import create_train_state
from bk_jax.train.step import jit_train_step, make_optimizer, make_train_step


def _run(accum, kind, batches):
  c = load_config(DEFAULT_CONFIG)
  c.model.kind = kind
  c.model.d_model, c.model.n_layers, c.model.n_heads, c.model.d_ff = 32, 2, 4, 64
  c.model.transformer.n_heads = 4
  c.model.vocab_size = 64
  c.train.warmup_steps, c.train.lr = 1, 3e-3
  c.train.grad_accum_steps = accum
  # Adam's first update is lr * g / (|g| + eps). With the default eps = 1e-8 a gradient entry of
  # ~1e-8 (a sum that nearly cancels) turns float32 rounding of the summation order (~1e-10
  # absolute) into a ~1% difference of that entry's update (seen: 1.8e-5 on one of 3k weights
  # of the transformer, with mu/nu equal to 5e-6 relative). eps = 1e-6 keeps the update a smooth
  # function of the gradient, so the comparison measures the accumulation, not that rounding.
  c.train.adam_eps = 1e-6
  mesh = make_mesh(c.mesh)
  tx = make_optimizer(c.train)
  graphdef, state = create_train_state(build_model(c.model, rngs=nnx.Rngs(0)), tx)
  step = jit_train_step(make_train_step(graphdef, tx, learning_rate_schedule(c.train, 10), c),
                        state, mesh)
  metrics = []
  for b in batches:
    state, m = step(state, jax.device_put(b, batch_sharding(mesh)))
    metrics.append(jax.device_get(m))
  return state, metrics


def _batches(n=2, b=8, seq=24, vocab=64):
  rng = np.random.default_rng(0)
  out = []
  for _ in range(n):
    x = rng.integers(0, vocab, size=(b, seq + 1)).astype(np.int32)
    mask = (rng.random((b, seq)) < 0.7).astype(np.float32)  # uneven tokens per microbatch
    mask[3] = 0.0  # one row contributes nothing
    out.append(dict(inputs=x[:, :-1], targets=x[:, 1:], mask=mask))
  return out


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["resnet_bk", "transformer"])
def test_accum_4_equals_accum_1(kind):
  batches = _batches()
  s1, m1 = _run(1, kind, batches)
  s4, m4 = _run(4, kind, batches)
  for a, b in zip(m1, m4):
    assert abs(float(a["loss"]) - float(b["loss"])) <= 1e-5, (a, b)
    assert float(b["gradient_norm"]) == pytest.approx(float(a["gradient_norm"]), rel=1e-5)
    assert bool(b["control/finite"])
  diff = max(float(np.max(np.abs(np.asarray(x) - np.asarray(y))))
             for x, y in zip(jax.tree.leaves(s1.params), jax.tree.leaves(s4.params)))
  assert diff <= 1e-5, diff
  mon1, mon4 = jax.device_get(s1.monitors), jax.device_get(s4.monitors)
  assert int(mon4.length.grad_norm.count) == int(mon1.length.grad_norm.count) == len(batches)
  # the parameters moved: the comparison is not between two untouched states
  s0, _ = _run(1, kind, [])
  assert max(float(np.max(np.abs(np.asarray(x) - np.asarray(y))))
             for x, y in zip(jax.tree.leaves(s0.params), jax.tree.leaves(s1.params))) > 1e-4


def test_accum_config_errors():
  c = load_config(DEFAULT_CONFIG)
  c.train.batch_size, c.train.grad_accum_steps = 8, 3
  with pytest.raises(ConfigError, match="not divisible by train.grad_accum_steps=3"):
    validate_config(c)
  c.train.grad_accum_steps = 0
  with pytest.raises(ConfigError, match="grad_accum_steps must be >= 1"):
    validate_config(c)

"""The jitted train step on a tiny model: one step, and a skipped non-finite update."""

import jax
import numpy as np
import pytest
from flax import nnx

from bk_jax.models import build_model
from bk_jax.train.cli import DEFAULT_CONFIG, load_config
from bk_jax.train.schedule import learning_rate_schedule
from bk_jax.sharding import batch_sharding, make_mesh
from bk_jax.train.state import create_train_state
from bk_jax.train.step import jit_train_step, make_optimizer, make_train_step


def _setup(bad_steps=()):
  c = load_config(DEFAULT_CONFIG)
  c.model.d_model, c.model.n_layers, c.model.n_heads, c.model.d_ff = 32, 1, 4, 64
  c.train.warmup_steps = 1
  c.debug.nonfinite_grad_steps = tuple(bad_steps)
  mesh = make_mesh(c.mesh)
  tx = make_optimizer(c.train)
  graphdef, state = create_train_state(build_model(c.model, rngs=nnx.Rngs(0)), tx)
  step = jit_train_step(make_train_step(graphdef, tx, learning_rate_schedule(c.train, 10), c), state, mesh)
  rng = np.random.default_rng(0)
  x = rng.integers(0, 200, size=(2, 17)).astype(np.int32)
  batch = dict(inputs=x[:, :-1], targets=x[:, 1:], mask=np.ones((2, 16), np.float32))
  return step, state, jax.device_put(batch, batch_sharding(mesh))


def _leaves(tree):
  return [np.asarray(x) for x in jax.tree.leaves(tree)]


def test_one_tiny_step():
  step, state, batch = _setup()
  before = _leaves(state.params)
  state, m = step(state, batch)
  m = jax.device_get(m)
  assert int(state.step) == 1
  assert np.isfinite(m["loss"]) and abs(float(m["loss"]) - np.log(259)) < 1.0
  assert float(m["perplexity"]) == pytest.approx(np.exp(float(m["loss"])), rel=1e-5)
  assert float(m["gradient_norm"]) > 0 and float(m["learning_rate"]) > 0
  assert bool(m["control/finite"]) and not bool(m["is_spike"])
  after = _leaves(state.params)
  assert any(not np.array_equal(a, b) for a, b in zip(before, after))
  assert int(state.monitors.length.grad_norm.count) == 1


def test_injected_non_finite_gradient_is_skipped_and_counted():
  step, state, batch = _setup(bad_steps=(1,))
  state, _ = step(state, batch)  # step 0: applied
  p1, o1 = _leaves(state.params), _leaves(state.opt_state)
  state, m = step(state, batch)  # step 1: NaN gradient, not applied
  m = jax.device_get(m)
  assert bool(m["is_nan"]) and not bool(m["control/finite"])
  assert all(np.array_equal(a, b) for a, b in zip(p1, _leaves(state.params)))
  assert all(np.array_equal(a, b) for a, b in zip(o1, _leaves(state.opt_state)))
  mon = jax.device_get(state.monitors)
  assert int(mon.length.skipped) == 1 and int(mon.length.grad_norm.count) == 1
  state, m = step(state, batch)  # step 2: applied again
  assert bool(m["control/finite"]) and int(state.step) == 3
  assert any(not np.array_equal(a, b) for a, b in zip(p1, _leaves(state.params)))
  assert all(np.isfinite(x).all() for x in _leaves(state.params))

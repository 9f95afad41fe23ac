"""Training dropout (model.dropout): the model against a hand-written forward with the same
masks, deterministic without a key, causal with one, and the train step's masks a function of
the step alone."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from bk_jax.models import build_model, default_model_config
from bk_jax.runtime.errors import ConfigError
from bk_jax.train.cli import DEFAULT_CONFIG, load_config
from bk_jax.train.schedule import learning_rate_schedule
from bk_jax.train.state import create_train_state
from bk_jax.train.step import make_optimizer, make_train_step

V, P = 40, 0.25
TOKS = jax.random.randint(jax.random.key(0), (2, 24), 0, V, dtype=jnp.int32)


def config(**kw):
  c = default_model_config()
  c.vocab_size, c.d_model, c.n_layers, c.n_heads, c.d_ff = V, 16, 2, 2, 32
  c.dropout = P
  for k, v in kw.items():
    c[k] = v
  return c


def hand_forward(model, tokens, key):
  """Embedding -> blocks -> head with the masks drawn by hand: keys split n_layers + 1 ways,
  the last for the embedding, key i for layer i's branch block(x) - x; kept entries / (1 - p)."""
  keys = jax.random.split(key, model.n_layers + 1)
  drop = lambda x, k: jnp.where(jax.random.bernoulli(k, 1 - P, x.shape), x / (1 - P), 0.0)
  x = drop(model.embed(tokens), keys[-1])
  for i in range(model.n_layers):
    block = (nnx.merge(*nnx.split(model.blocks)[:1],
                       jax.tree.map(lambda a: a[i], nnx.state(model.blocks)))
             if model.scan_layers else model.blocks[i])
    y, _, _ = block(x, None, jnp.zeros((), jnp.int32), None)
    x = x + drop(y - x, keys[i])
  return model.logits(x)


@pytest.mark.parametrize("kind,scan_layers", [("resnet_bk", False), ("resnet_bk", True),
                                              ("transformer", False)])
def test_dropout_matches_a_hand_written_forward(kind, scan_layers):
  model = build_model(config(kind=kind, scan_layers=scan_layers))
  key = jax.random.key(7)
  got = model.forward(TOKS, dropout_key=key).logits
  np.testing.assert_allclose(got, hand_forward(model, TOKS, key), rtol=1e-5, atol=1e-6)
  # and the masks are really applied: another key, other logits
  assert float(jnp.max(jnp.abs(got - model.forward(TOKS, dropout_key=jax.random.key(8)).logits))) > 1e-3


@pytest.mark.parametrize("kind", ["resnet_bk", "mamba", "mamba2", "transformer"])
def test_without_a_key_the_model_is_the_deterministic_one(kind):
  """The rate does not change the parameters, and without a key nothing is dropped."""
  plain, dropped = config(kind=kind, dropout=0.0), config(kind=kind)
  plain.mamba2.headdim = dropped.mamba2.headdim = 16  # d_inner = 32
  plain, dropped = build_model(plain), build_model(dropped)
  for a, b in zip(jax.tree.leaves(nnx.state(plain, nnx.Param)),
                  jax.tree.leaves(nnx.state(dropped, nnx.Param))):
    np.testing.assert_array_equal(a, b)
  np.testing.assert_array_equal(plain(TOKS), dropped(TOKS))


def test_dropout_keeps_causality():
  """Masks are drawn per position: a later token changes no earlier logit (same key)."""
  model = build_model(config(kind="resnet_bk"))
  key = jax.random.key(3)
  a = model.forward(TOKS, dropout_key=key).logits
  b = model.forward(TOKS.at[:, 15].set((TOKS[:, 15] + 1) % V), dropout_key=key).logits
  np.testing.assert_array_equal(a[:, :15], b[:, :15])
  assert float(jnp.max(jnp.abs(a[:, 15:] - b[:, 15:]))) > 0


def test_drop_rate_and_scale():
  """A share p of the entries is zero (within 5 binomial standard deviations); the rest are
  scaled by 1 / (1 - p), so the mean is kept."""
  model = build_model(config(kind="resnet_bk"))
  x = jnp.ones((400, 500), jnp.float32)
  y = np.asarray(model._drop(x, jax.random.key(0)))
  n = y.size
  assert abs(np.mean(y == 0) - P) < 5 * np.sqrt(P * (1 - P) / n)
  np.testing.assert_allclose(y[y != 0], 1 / (1 - P), rtol=1e-7)


def test_bad_rate_is_a_config_error():
  with pytest.raises(ConfigError, match=r"dropout must be in \[0, 1\)"):
    build_model(config(dropout=1.0))


@pytest.mark.parametrize("accum", [1, 2])
def test_train_step_masks_are_a_function_of_the_step(accum):
  """From one state the step gives the same loss twice (a resumed run draws the masks of one
  that never stopped), another loss than without dropout, and another at the next step number."""
  c = load_config(DEFAULT_CONFIG)
  c.model.d_model, c.model.n_layers, c.model.n_heads, c.model.d_ff = 32, 1, 4, 64
  c.model.vocab_size = 259
  c.train.warmup_steps, c.train.grad_accum_steps = 1, accum
  rng = np.random.default_rng(0)
  x = rng.integers(0, 200, size=(4, 17)).astype(np.int32)
  batch = dict(inputs=x[:, :-1], targets=x[:, 1:], mask=np.ones((4, 16), np.float32))

  def loss_at(dropout, step_number):
    c.model.dropout = dropout
    tx = make_optimizer(c.train)
    graphdef, state = create_train_state(build_model(c.model, rngs=nnx.Rngs(0)), tx)
    step = jax.jit(make_train_step(graphdef, tx, learning_rate_schedule(c.train, 10), c))
    _, m = step(state.replace(step=jnp.asarray(step_number, state.step.dtype)), batch)
    return float(m["loss"])

  first = loss_at(0.3, 0)
  assert np.isfinite(first) and loss_at(0.3, 0) == first
  assert loss_at(0.3, 1) != first
  assert loss_at(0.0, 0) != first

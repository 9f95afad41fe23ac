"""The layer loop of lm.py under remat and scan_layers: rematerialisation changes memory, never
values or gradients, and the model runs under jax.jit, nnx.jit and inside a lax.scan body."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from bk_jax.models import build_model, default_model_config

V = 40


def config(**kw):
  c = default_model_config()
  c.vocab_size, c.d_model, c.n_layers, c.n_heads, c.d_ff = V, 16, 2, 2, 32
  for k, v in kw.items():
    c[k] = v
  return c


def loss_and_grads(model, toks):
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)

  def loss(p):
    logits = nnx.merge(graphdef, p, rest)(toks[:, :-1])
    return optax.softmax_cross_entropy_with_integer_labels(logits, toks[:, 1:]).mean()

  return jax.jit(jax.value_and_grad(loss))(params), (graphdef, params, rest, loss)


# how each policy prints inside the jaxpr's remat equation
POLICY_TEXT = {"full": "nothing_saveable", "dots": "DotsSaveable(only_if_no_batch_dims=True)"}
TOKS = jax.random.randint(jax.random.key(0), (2, 33), 0, V, dtype=jnp.int32)


# the layer-list path is also exercised (through streaming) by test_configs_streaming's default run
@pytest.mark.parametrize("scan_layers", [pytest.param(False, marks=pytest.mark.slow), True])
def test_remat_changes_nothing_but_memory(scan_layers):
  """Same init (same seed), remat none / full / dots: equal loss and gradients; the full and dots
  gradient programs really contain a rematerialisation (checkpoint) region."""
  ref, _ = loss_and_grads(build_model(config(scan_layers=scan_layers)), TOKS)
  for remat in ("full", "dots"):
    (val, grads), (_, params, _, loss) = loss_and_grads(
        build_model(config(scan_layers=scan_layers, remat=remat)), TOKS)
    assert abs(float(val) - float(ref[0])) <= 1e-6 * abs(float(ref[0]))
    for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(ref[1])):
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    program = str(jax.make_jaxpr(jax.grad(loss))(params))
    assert "remat" in program and POLICY_TEXT[remat] in program, remat


@pytest.mark.parametrize("kw", [dict(remat="full"), dict(scan_layers=True, remat="dots")])
def test_model_under_jit_and_inside_scan_body(kw):
  """nnx.jit, jax.jit over split state, and a lax.scan whose body merges the model (as streaming
  does) all give the eager forward."""
  model = build_model(config(**kw))
  toks = TOKS[:, :32]
  eager = model(toks)
  np.testing.assert_allclose(nnx.jit(lambda m, t: m(t))(model, toks), eager, rtol=1e-5, atol=1e-6)
  graphdef, state = nnx.split(model)
  jitted = jax.jit(lambda s, t: nnx.merge(graphdef, s)(t))(state, toks)
  np.testing.assert_allclose(jitted, eager, rtol=1e-5, atol=1e-6)

  @jax.jit
  def scanned(state, toks):
    def body(cache, t):  # 4 pieces of 8 tokens, state carried
      logits, cache = nnx.merge(graphdef, state, copy=True)(t, cache=cache)
      return cache, logits
    pieces = jnp.swapaxes(toks.reshape(2, 4, 8), 0, 1)
    _, out = jax.lax.scan(body, nnx.merge(graphdef, state, copy=True).init_cache(2), pieces)
    return jnp.swapaxes(out, 0, 1).reshape(2, 32, V)

  np.testing.assert_allclose(scanned(state, toks), eager, rtol=1e-5, atol=1e-5)

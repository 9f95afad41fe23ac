"""bk_jax.ops.linear_scan and ops.scan.checkpointed_chunks against numpy loops and finite
differences."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bk_jax.ops import linear_scan as ls
from bk_jax.ops import scan as scan_ops

METHODS = ls.METHODS
# jit: eager op-by-op dispatch of associative_scan compiles dozens of tiny programs
linear_scan = jax.jit(ls.linear_scan, static_argnames=("method", "chunk"))


def numpy_loop(a, b, h0):
  a, b = np.broadcast_arrays(np.asarray(a, np.complex128), np.asarray(b, np.complex128))
  h = np.broadcast_to(np.asarray(h0, np.complex128), a.shape[1:]).copy()
  out = np.empty(a.shape, np.complex128)
  for t in range(a.shape[0]):
    h = a[t] * h + b[t]
    out[t] = h
  return out


def problem(rng, shape, complex_=False):
  # |a| < 1 like a stable decay (exp(dt A), the resolvent's continued-fraction factors)
  a = rng.uniform(0.5, 0.99, shape)
  b = rng.normal(size=shape)
  h0 = rng.normal(size=shape[1:])
  if complex_:
    a = a * np.exp(1j * rng.uniform(-np.pi, np.pi, shape))
    b = b + 1j * rng.normal(size=shape)
    h0 = h0 + 1j * rng.normal(size=shape[1:])
  return a, b, h0


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("complex_", [False, True])
@pytest.mark.parametrize("shape", [(1,), (33, 3), (16, 2, 5)])
def test_values_equal_numpy_loop(method, complex_, shape):
  rng = np.random.default_rng(len(shape) * 100 + shape[0] + 7 * complex_)
  a, b, h0 = problem(rng, shape, complex_)
  dt = np.complex64 if complex_ else np.float32
  h, h_last = linear_scan(a.astype(dt), b.astype(dt), h0.astype(dt), method=method)
  assert h.shape == shape and h_last.shape == shape[1:] and h.dtype == dt
  expected = numpy_loop(a.astype(dt), b.astype(dt), h0.astype(dt))
  np.testing.assert_allclose(np.asarray(h), expected, rtol=2e-5, atol=2e-5)
  np.testing.assert_array_equal(np.asarray(h_last), np.asarray(h)[-1])


@pytest.mark.parametrize("method", METHODS)
def test_mixed_dtypes_and_broadcasting(method):
  """Real a with complex b (the resolvent's case); a shared over a trailing batch axis."""
  rng = np.random.default_rng(3)
  a = rng.uniform(0.5, 0.99, (9, 1, 4)).astype(np.float32)
  b = (rng.normal(size=(9, 2, 4)) + 1j * rng.normal(size=(9, 2, 4))).astype(np.complex64)
  h0 = np.float32(0.5)
  h, h_last = linear_scan(a, b, h0, method=method)
  assert h.shape == (9, 2, 4) and h.dtype == jnp.complex64 and h_last.shape == (2, 4)
  np.testing.assert_allclose(np.asarray(h), numpy_loop(a, b, h0), rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("t,chunk", [(37, 8), (40, 8), (5, 1), (6, 100)])
def test_chunked_equals_unchunked(method, t, chunk):
  rng = np.random.default_rng(t * chunk)
  a, b, h0 = (x.astype(np.complex64) for x in problem(rng, (t, 3), complex_=True))
  h, h_last = linear_scan(a, b, h0, method=method)
  hc, hc_last = linear_scan(a, b, h0, method=method, chunk=chunk)
  np.testing.assert_allclose(np.asarray(hc), np.asarray(h), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(np.asarray(hc_last), np.asarray(h_last), rtol=1e-5, atol=1e-6)


def loss_fn(method, chunk, weights):
  def loss(a, b, h0):
    h, h_last = linear_scan(a, b, h0, method=method, chunk=chunk)
    # a loss touching every state and h_last, real-valued from complex states
    return jnp.sum(jnp.real(h * weights)) + jnp.sum(jnp.abs(h_last) ** 2)
  return loss


@pytest.mark.parametrize("chunk", [None, 4])
def test_gradients_equal_between_methods_and_finite_differences(chunk):
  with jax.enable_x64(True):
    rng = np.random.default_rng(11)
    a, b, h0 = problem(rng, (13, 2, 3), complex_=True)
    a = a.real  # real a, complex b and h0
    weights = rng.normal(size=(13, 2, 3)) + 1j * rng.normal(size=(13, 2, 3))
    args = (jnp.asarray(a), jnp.asarray(b), jnp.asarray(h0))
    grads = {m: jax.jit(jax.grad(loss_fn(m, chunk, weights), argnums=(0, 1, 2)))(*args) for m in METHODS}
    for ga, gb in zip(grads["sequential"], grads["associative"]):
      np.testing.assert_allclose(np.asarray(ga), np.asarray(gb), rtol=1e-10, atol=1e-12)
    # central finite differences along one random direction per argument
    f = jax.jit(loss_fn("associative", chunk, weights))
    eps = 1e-6
    for i, g in enumerate(grads["associative"]):
      d = rng.normal(size=args[i].shape)
      if jnp.iscomplexobj(args[i]):
        d = d + 1j * rng.normal(size=args[i].shape)
      shifted = lambda s: f(*[x + s * d if j == i else x for j, x in enumerate(args)])
      fd = (shifted(eps) - shifted(-eps)) / (2 * eps)
      # jax's grad of a real loss w.r.t. complex x is dL/dx_re - i dL/dx_im, so the
      # directional derivative along d is Re(g d)
      analytic = np.sum(np.real(np.asarray(g) * d))
      np.testing.assert_allclose(fd, analytic, rtol=1e-7)


def test_gradients_chunked_equal_unchunked():
  rng = np.random.default_rng(5)
  a, b, h0 = (x.astype(np.float32) for x in problem(rng, (29, 4)))
  weights = rng.normal(size=(29, 4))
  g_full = jax.jit(jax.grad(loss_fn("sequential", None, weights), argnums=(0, 1, 2)))(a, b, h0)
  for method in METHODS:
    g_chunk = jax.jit(jax.grad(loss_fn(method, 8, weights), argnums=(0, 1, 2)))(a, b, h0)
    for x, y in zip(g_chunk, g_full):
      np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-4, atol=1e-5)


def test_auto_and_errors():
  assert ls.resolve_scan_method("auto", "cpu") == "sequential"
  assert ls.resolve_scan_method("auto", "gpu") == "associative"
  assert ls.resolve_scan_method("auto", "tpu") == "associative"
  assert ls.resolve_scan_method("sequential", "gpu") == "sequential"
  h, _ = ls.linear_scan(np.ones((3, 2)), np.ones((3, 2)), np.zeros(2), method="auto")
  np.testing.assert_allclose(np.asarray(h), [[1, 1], [2, 2], [3, 3]])
  with pytest.raises(ValueError, match="unknown linear scan method"):
    ls.linear_scan(np.ones(3), np.ones(3), 0.0, method="parallel")
  with pytest.raises(ValueError, match="do not broadcast"):
    ls.linear_scan(np.ones((3, 2)), np.ones((3, 2)), np.zeros(3), method="sequential")
  with pytest.raises(ValueError, match="T >= 1"):
    ls.linear_scan(np.ones((0, 2)), np.ones((0, 2)), np.zeros(2), method="sequential")


def test_checkpointed_chunks_tail_and_pytrees():
  """A chunk function that sees whole chunks (cumulative sum + running max): chunked == one
  call, including a tail shorter than the chunk, and pytree carries/outputs."""
  def chunk_fn(carry, xs):
    s, m = carry
    x, y = xs
    cs = s + jnp.cumsum(x, axis=0)
    cm = jnp.maximum(m, jax.lax.cummax(y, axis=0))
    return (cs[-1], cm[-1]), {"sum": cs, "max": cm}

  rng = np.random.default_rng(0)
  x = rng.normal(size=(23, 3)).astype(np.float32)
  y = rng.normal(size=(23,)).astype(np.float32)
  init = (jnp.zeros(3), jnp.float32(-jnp.inf))
  full_c, full_y = chunk_fn(init, (x, y))
  for chunk in (1, 5, 23, 64):
    c, ys = scan_ops.checkpointed_chunks(chunk_fn, init, (x, y), chunk=chunk)
    for p, q in zip(jax.tree.leaves((c, ys)), jax.tree.leaves((full_c, full_y))):
      np.testing.assert_allclose(np.asarray(p), np.asarray(q), rtol=1e-5, atol=1e-5)
  with pytest.raises(ValueError, match="non-empty"):
    scan_ops.checkpointed_chunks(chunk_fn, init, (x[:0], y[:0]), chunk=4)


def test_prefers_parallel():
  assert not scan_ops.prefers_parallel("cpu")
  assert scan_ops.prefers_parallel("gpu") and scan_ops.prefers_parallel("tpu")
  assert scan_ops.prefers_parallel() == (jax.default_backend() != "cpu")

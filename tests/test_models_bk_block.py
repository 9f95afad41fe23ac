"""The default ResNet-BK block against a stored reference: outputs, streaming carries, gradients.

`tests/data/bk_block_reference.npz` holds, for four configurations of the default ("diag") block,
its parameters at init, outputs over two streamed chunks, final carry, aux figures and the
gradients of a fixed functional with respect to every parameter and the input, as `_run` below
computes them. It was written by the block's first implementation (one class per mixer family at
the time). Parameters at init must match bit for bit. Everything computed from them must match to
float32 rounding: XLA's CPU backend picks its instructions (vector width, fused multiply-adds) for
the host processor, so the same program gives results that differ in the last bits from one
processor model to another (up to ~15 eps of an array's largest entry between the machine that
wrote the file and another x86-64 host). A change to what the block computes moves them by
orders of magnitude more. Regenerate the file only for an intended change of those numerics.
"""

from __future__ import annotations

import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from bk_jax.models import bk
from bk_jax.models.config import default_model_config

REFERENCE = pathlib.Path(__file__).parent / "data" / "bk_block_reference.npz"
#: Tolerance of the computed arrays, relative to each array's largest entry: 64 float32 eps.
ROUNDING = 64 * float(np.finfo(np.float32).eps)
CASES = {
    "default": {},
    "semiseparable": {"use_semiseparable": True, "semiseparable_rank": 2},
    "moe_scattering": {"use_moe": True, "num_experts": 4},
    "monitors_prime_bump": {"use_birman_schwinger": True, "bs_window": 8, "prime_bump": True},
}


def _run(name: str, overrides: dict) -> dict[str, np.ndarray]:
  cfg = default_model_config()
  cfg.update(dict(d_model=32, n_heads=4, d_ff=64, n_layers=2), **overrides)
  with nnx.use_eager_sharding(False):
    block = bk.BKBlock(cfg, rngs=nnx.Rngs(0))
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((2, 16, 32)), jnp.float32)
  w = jnp.asarray(rng.standard_normal((2, 16, 32)), jnp.float32)
  bias = bk.prime_bump_potential(jnp.arange(16), 0.1) if cfg.prime_bump else None
  graphdef, params, rest = nnx.split(block, nnx.Param, ...)

  def loss(params, x):
    b = nnx.merge(graphdef, params, rest)
    half = lambda a, s: None if a is None else a[s]
    y1, c1, a1 = b(x[:, :8], None, jnp.int32(0), half(bias, slice(0, 8)))
    y2, c2, a2 = b(x[:, 8:], c1, jnp.int32(8), half(bias, slice(8, None)))
    y = jnp.concatenate([y1, y2], 1)
    return jnp.sum(y * w) + a1["aux_loss"] + a2["aux_loss"], (y, c2, a2)

  step = jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))
  (_, (y, carry, aux)), (gp, gx) = step(params, x)
  out = {"x": x, "w": w, "y": y, "grad_x": gx}
  out.update({f"carry{i}": leaf for i, leaf in enumerate(jax.tree.leaves(carry))})
  out.update({f"aux/{k}": v for k, v in aux.items()})
  for prefix, tree in (("param", params), ("grad", gp)):
    for path, v in jax.tree_util.tree_flatten_with_path(nnx.to_pure_dict(tree))[0]:
      out[prefix + "/" + "/".join(str(p.key) for p in path)] = v
  return {f"{name}:{k}": np.asarray(v) for k, v in out.items()}


@pytest.mark.parametrize("case", list(CASES))
def test_default_block_matches_its_reference(case):
  ref = np.load(REFERENCE)
  want = {k: ref[k] for k in ref.files if k.startswith(case + ":")}
  got = _run(case, CASES[case])
  assert sorted(got) == sorted(want)  # the same parameters, carries and aux figures
  for k, v in want.items():
    if ":param/" in k or k.split(":")[1] in ("x", "w"):
      np.testing.assert_array_equal(got[k], v, err_msg=k)  # init and inputs: bit for bit
    else:  # computed: float32 rounding of the host's instruction choice (module docstring)
      np.testing.assert_allclose(got[k], v, rtol=0, atol=ROUNDING * np.max(np.abs(v)), err_msg=k)

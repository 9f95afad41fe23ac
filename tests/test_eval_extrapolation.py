"""Length extrapolation machinery on the synthetic tasks (untrained tiny model: the accuracy and
loss must equal a full-sequence forward restricted to the task's mask)."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from bk_jax.data import default_synthetic_config, make_synthetic_batch
from bk_jax.data.synthetic import synthetic_seed
from bk_jax.eval.extrapolation import extrapolation_table, format_table, samples_at
from bk_jax.eval.plots import plot_extrapolation
from bk_jax.models import build_model, default_model_config


def _model(vocab):
  c = default_model_config()
  c.vocab_size, c.d_model, c.n_layers, c.n_heads, c.d_ff = vocab, 32, 1, 4, 64
  return build_model(c, rngs=nnx.Rngs(3))


@pytest.mark.parametrize("task", ["induction_heads", "mqar"])
def test_accuracy_equals_full_forward(task, tmp_path):
  tc = default_synthetic_config()
  tc.task = task
  if task == "mqar":
    tc.vocab_size, tc.num_kv_pairs = 32, 4
  model = _model(int(tc.vocab_size))
  lengths, bs = (64, 200, 700), 2
  rows = extrapolation_table(model, tc, lengths, samples=4, token_budget=0, batch_size=bs,
                             chunk_size=128, sub_chunk=64, progress=False, log=None)
  for row, n in zip(rows, lengths):
    hit = cnt = nll = 0.0
    for i in range(2):
      b = make_synthetic_batch(tc, n, bs, seed=synthetic_seed(tc, "test"), index=i)
      logits = model(jnp.asarray(b["inputs"]))
      m = b["mask"]
      hit += float(np.sum((np.asarray(jnp.argmax(logits, -1)) == b["targets"]) * m))
      tl = jnp.take_along_axis(logits, jnp.asarray(b["targets"])[..., None], -1)[..., 0]
      nll += float(np.sum(np.asarray(jax.nn.logsumexp(logits, -1) - tl) * m))
      cnt += float(m.sum())
    assert row["samples"] == 4 and row["scored"] == int(cnt)
    assert row["accuracy"] == pytest.approx(hit / cnt, abs=1e-12)
    assert row["loss"] == pytest.approx(nll / cnt, abs=1e-5)
  table = format_table(rows, train_len=64, task=task)
  assert "2^6" in table and f"{task} trained at 64" in table
  png = plot_extrapolation(str(tmp_path / "x.png"), rows, train_len=64)
  assert os.path.getsize(png) > 1000


def test_samples_budget():
  assert samples_at(64, 64, 4 << 20, 4) == 64
  assert samples_at(1 << 20, 64, 4 << 20, 4) == 4  # budget binds: 4 sequences of 2^20
  assert samples_at(1 << 20, 64, 1 << 20, 4) == 4  # at least one batch
  assert samples_at(100, 10, 0, 4) == 12  # whole batches

"""Synthetic long-range tasks: brute-force answer checks, determinism, speed, pipeline."""

from __future__ import annotations

import time

import numpy as np
import pytest

from bk_jax.data import (SYNTHETIC_TASKS, DataError, check_sample, default_data_config,
                         default_synthetic_config, make_iterator, make_synthetic_batch,
                         make_train_dataset, steps_per_epoch, vocab_size)


def _tc(task, **kw):
  tc = default_synthetic_config()
  tc.task = task
  tc.update(kw)
  return tc


@pytest.mark.parametrize("task", SYNTHETIC_TASKS)
@pytest.mark.parametrize("n", [64, 256, 1000])
def test_brute_force_checker_confirms_answers(task, n):
  tc = _tc(task)
  b = make_synthetic_batch(tc, n, 32, seed=3, index=11)
  assert b["inputs"].shape == b["targets"].shape == b["mask"].shape == (32, n)
  assert b["inputs"].dtype == np.int32 and b["mask"].dtype == np.float32
  assert np.array_equal(b["targets"][:, :-1], b["inputs"][:, 1:])
  for i in range(32):
    assert check_sample(tc, b["inputs"][i], b["targets"][i], b["mask"][i])
  expected = {"induction_heads": 1, "mqar": tc.num_kv_pairs, "selective_copying": tc.num_memorize}
  assert (b["mask"].sum(1) == expected[task]).all()
  # The checker is not vacuous: a wrong answer at a scored position is caught.
  t = b["targets"][0].copy()
  j = int(np.flatnonzero(b["mask"][0])[0])
  t[j] = (t[j] + 1) % tc.vocab_size
  assert not check_sample(tc, b["inputs"][0], t, b["mask"][0])


def test_mqar_large_vocab_and_gap_law():
  tc = _tc("mqar", vocab_size=8192, num_kv_pairs=32)
  b = make_synthetic_batch(tc, 1024, 16, seed=0, index=0)
  assert all(check_sample(tc, *(b[k][i] for k in ("inputs", "targets", "mask")))
             for i in range(16))
  # Power law with a=0.01: queries crowd close to the key-value prefix.
  q = np.flatnonzero(b["mask"].sum(0))
  assert np.median(np.flatnonzero(b["mask"].ravel()) % 1024) < 1024 / 2 and q.min() >= 64


@pytest.mark.parametrize("task", SYNTHETIC_TASKS)
def test_deterministic_and_fast_at_2_pow_20(task):
  tc = _tc(task)
  n = 1 << 20
  t0 = time.perf_counter()
  a = make_synthetic_batch(tc, n, 1, seed=5, index=9)
  dt = time.perf_counter() - t0
  assert dt < 0.5, f"{task}: {dt:.3f}s for 2^20 tokens"
  b = make_synthetic_batch(tc, n, 1, seed=5, index=9)
  c = make_synthetic_batch(tc, n, 1, seed=5, index=10)
  assert all(np.array_equal(a[k], b[k]) for k in a)
  assert not np.array_equal(a["inputs"], c["inputs"])
  scored = np.flatnonzero(a["mask"][0])
  # Check the long sample's answers directly (the Python-loop checker would take seconds).
  x, y, v = a["inputs"][0], a["targets"][0], tc.vocab_size
  if task == "induction_heads":
    first = int(np.flatnonzero(x == v - 1)[0])
    assert scored.tolist() == [n - 1] and y[n - 1] == x[first + 1]
  elif task == "mqar":
    d = tc.num_kv_pairs
    table = dict(zip(x[0:2 * d:2].tolist(), x[1:2 * d:2].tolist()))
    assert len(scored) == d and all(y[q] == table[x[q]] for q in scored)
  else:
    marker = int(np.flatnonzero(x == v - 1)[0])
    ctx = x[:marker]
    assert np.array_equal(ctx[ctx != v - 2], y[scored]) and scored[0] == marker


def test_synthetic_pipeline_and_vocab():
  cfg = default_data_config()
  cfg.dataset = "synthetic"
  cfg.synthetic.task = "selective_copying"
  cfg.synthetic.num_samples = 64
  assert vocab_size(cfg) == 16
  assert steps_per_epoch(cfg, 128, 8) == 8
  rows = lambda seed: [r.tobytes() for bt in make_iterator(
      make_train_dataset(cfg, 128, 8, seed=seed, num_epochs=1), cfg) for r in bt["inputs"]]
  a, b, c = rows(0), rows(0), rows(1)
  assert a == b and a != c and sorted(a) == sorted(c) and len(a) == 64
  valid = next(make_iterator(make_train_dataset(cfg, 128, 8, seed=0, split="valid"), cfg))
  assert not {r.tobytes() for r in valid["inputs"]} & set(a)  # splits use other content seeds
  for i in range(8):
    assert check_sample(cfg.synthetic, valid["inputs"][i], valid["targets"][i],
                        valid["mask"][i])


def test_synthetic_bad_config():
  with pytest.raises(DataError, match="valid: induction_heads, mqar, selective_copying"):
    make_synthetic_batch(_tc("copying"), 64, 1, seed=0, index=0)
  with pytest.raises(DataError, match="needs vocab_size >= 34"):
    make_synthetic_batch(_tc("mqar", num_kv_pairs=16), 256, 1, seed=0, index=0)
  with pytest.raises(DataError, match="needs seq_len >= 32"):
    make_synthetic_batch(_tc("selective_copying"), 20, 1, seed=0, index=0)

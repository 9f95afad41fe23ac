"""grain pipelines: window correctness, seeding, sharding, lengths, orbax iterator restore."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from bk_jax.data import (DataError, batch_size_for, default_data_config, load_corpus,
                         make_iterator, make_train_dataset, steps_per_epoch)

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def cfg(tmp_path_factory):
  """A ~300 kB text corpus whose byte stream has no short period."""
  d = tmp_path_factory.mktemp("corpus")
  rng = np.random.default_rng(0)
  (d / "big.txt").write_bytes(rng.integers(32, 127, size=300_000, dtype=np.uint8).tobytes())
  c = default_data_config()
  c.update(dataset="text", path=str(d / "big.txt"), cache_dir=str(d / "cache"),
           prefetch_batches=0)
  return c


def _windows(cfg, split="train"):
  return np.asarray(load_corpus(cfg).splits[split], dtype=np.int32)


def _rows(batches):
  return [tuple(r) for b in batches for r in np.asarray(b["inputs"])]


def test_targets_are_next_inputs_and_windows_in_split(cfg):
  n, b = 128, 4
  tokens = _windows(cfg)
  ds = make_train_dataset(cfg, n, b, seed=0, num_epochs=1)
  assert len(ds) == steps_per_epoch(cfg, n, b) == ((len(tokens) - 1) // n) // b
  starts = set()
  for batch in make_iterator(ds, cfg):
    assert batch["inputs"].shape == (b, n) and batch["inputs"].dtype == np.int32
    assert batch["targets"].dtype == np.int32 and batch["mask"].dtype == np.float32
    assert (batch["mask"] == 1).all()
    for x, y in zip(batch["inputs"], batch["targets"]):
      assert np.array_equal(y[:-1], x[1:])  # targets[i] == inputs[i+1]
      win = np.append(x, y[-1])
      # The window is tokens[w*n : w*n+n+1] of the train split for some w.
      matches = [s for s in range(0, len(tokens) - n, n)
                 if tokens[s] == x[0] and np.array_equal(tokens[s:s + n + 1], win)]
      assert len(matches) == 1
      starts.add(matches[0])
  assert len(starts) == len(ds) * b  # an epoch visits distinct windows


def test_seeds_epochs_and_sharding(cfg):
  n, b = 256, 8
  first = lambda seed, **kw: _rows(list(make_iterator(
      make_train_dataset(cfg, n, b, seed=seed, num_epochs=1, **kw), cfg)))
  a, a2, other = first(1), first(1), first(2)
  dropped = ((len(_windows(cfg)) - 1) // n) % b  # remainder windows left out of an epoch
  assert a == a2 and a != other and len(set(a)) == len(a)
  assert len(set(a) ^ set(other)) <= 2 * dropped
  # Two epochs: each a permutation of the same windows, in a different order.
  two = _rows(list(make_iterator(make_train_dataset(cfg, n, b, seed=1, num_epochs=2), cfg)))
  e1, e2 = two[: len(a)], two[len(a):]
  assert e1 == a and e2 != e1 and len(set(e2)) == len(e2)
  assert len(set(e1) ^ set(e2)) <= 2 * dropped
  # Two processes: equal, disjoint shards.
  p0, p1 = first(1, process_index=0, process_count=2), first(1, process_index=1, process_count=2)
  assert len(p0) == len(p1) and not set(p0) & set(p1)
  assert steps_per_epoch(cfg, n, b, process_count=2) * b == len(p0)


def test_batch_size_for():
  assert batch_size_for(2048, 7, 0) == 7
  assert batch_size_for(2048, 7, 65536) == 32
  assert batch_size_for(131072, 7, 65536) == 1


def test_every_length_128_to_131072(cfg):
  n_train = len(load_corpus(cfg).splits["train"])
  for k in range(7, 18):
    n = 1 << k
    b = batch_size_for(n, 0, 1 << 17)
    if (n_train - 1) // n < b:
      b = 1
    batch = next(make_iterator(make_train_dataset(cfg, n, b, seed=0), cfg))
    assert batch["inputs"].shape == (b, n)
    assert np.array_equal(batch["targets"][:, :-1], batch["inputs"][:, 1:])
  with pytest.raises(DataError, match=r"needs at least 524289 tokens") as e:
    make_train_dataset(cfg, 131072, 4, seed=0)
  assert "\n" not in str(e.value)
  with pytest.raises(DataError, match=r"needs at least 131073 tokens"):
    make_train_dataset(cfg, 131072, 1, seed=0, split="valid")


_RESTORE = textwrap.dedent("""
    import sys, numpy as np, orbax.checkpoint as ocp, grain
    from bk_jax.data import default_data_config, make_train_dataset, make_iterator
    ckpt, out, path, cache = sys.argv[1:5]
    cfg = default_data_config()
    cfg.update(dataset="text", path=path, cache_dir=cache)
    syn = default_data_config()
    syn.update(dataset="synthetic")
    syn.synthetic.task = "mqar"
    its = {"text": make_iterator(make_train_dataset(cfg, 128, 4, seed=7), cfg),
           "syn": make_iterator(make_train_dataset(syn, 64, 4, seed=7), syn)}
    mngr = ocp.CheckpointManager(ckpt)
    mngr.restore(mngr.latest_step(), args=ocp.args.Composite(
        **{k: grain.checkpoint.CheckpointRestore(it) for k, it in its.items()}))
    np.savez(out, **{f"{k}{i}_{f}": v for k, it in its.items()
                     for i in range(3) for f, v in next(it).items()})
""")


def test_iterator_state_restores_in_fresh_process(cfg, tmp_path):
  import grain
  import orbax.checkpoint as ocp

  syn = default_data_config()
  syn.update(dataset="synthetic")
  syn.synthetic.task = "mqar"
  its = {"text": make_iterator(make_train_dataset(cfg, 128, 4, seed=7), cfg),
         "syn": make_iterator(make_train_dataset(syn, 64, 4, seed=7), syn)}
  for it in its.values():
    for _ in range(5):
      next(it)
  mngr = ocp.CheckpointManager(tmp_path / "ckpt")
  mngr.save(5, args=ocp.args.Composite(
      **{k: grain.checkpoint.CheckpointSave(it) for k, it in its.items()}))
  mngr.wait_until_finished()
  mngr.close()
  expected = {f"{k}{i}_{f}": v for k, it in its.items()
              for i in range(3) for f, v in next(it).items()}
  env = {**os.environ, "PYTHONPATH": str(REPO), "JAX_PLATFORMS": "cpu"}
  p = subprocess.run([sys.executable, "-c", _RESTORE, str(tmp_path / "ckpt"),
                      str(tmp_path / "out.npz"), cfg.path, cfg.cache_dir],
                     capture_output=True, text=True, env=env, timeout=300)
  assert p.returncode == 0, p.stderr[-3000:]
  got = np.load(tmp_path / "out.npz")
  assert sorted(got.files) == sorted(expected)
  for k, v in expected.items():
    assert np.array_equal(got[k], v), k

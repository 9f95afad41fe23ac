"""A corrupt token-cache entry (truncated token file, garbage or missing meta.json, missing split
file) is detected on load, reported in one line and rebuilt to the same tokens."""

from __future__ import annotations

import json

import numpy as np
import pytest

from bk_jax.data import default_data_config, load_corpus
from bk_jax.data.cache import entry_problem
from bk_jax.data.config import SPLITS
from tiny_configs import write_pattern_corpus


@pytest.fixture
def cfg(tmp_path):
  c = default_data_config()
  c.dataset, c.path = "text", write_pattern_corpus(str(tmp_path / "p.txt"), n_chars=20_000)
  c.cache_dir = str(tmp_path / "cache")
  return c


def _tokens(corpus):
  return {s: np.array(corpus.splits[s]) for s in SPLITS}


def _truncate(entry):
  f = entry / "train.bin"
  with open(f, "r+b") as fh:
    fh.truncate(f.stat().st_size // 2 + 1)  # odd byte count: not even whole uint16 tokens


def _garbage_meta(entry):
  (entry / "meta.json").write_text("{ this is not json")


def _meta_without_lengths(entry):
  meta = json.loads((entry / "meta.json").read_text())
  del meta["lengths"]
  (entry / "meta.json").write_text(json.dumps(meta))


def _missing_split(entry):
  (entry / "valid.bin").unlink()


@pytest.mark.parametrize("damage,reason", [
    (_truncate, "train.bin has"), (_garbage_meta, "meta.json is unreadable"),
    (_meta_without_lengths, "meta.json lacks or garbles a field"), (_missing_split, "valid.bin is missing")])
def test_corrupt_cache_entry_is_rebuilt(cfg, capsys, damage, reason):
  first = load_corpus(cfg)
  want = _tokens(first)
  entry = first.path
  del first
  assert entry_problem(entry, SPLITS) is None
  damage(entry)
  assert reason in entry_problem(entry, SPLITS)
  capsys.readouterr()
  again = load_corpus(cfg)
  err = [l for l in capsys.readouterr().err.splitlines() if "token cache" in l]
  assert len(err) == 1 and err[0].startswith(f"token cache entry {entry} is corrupt (")
  assert reason in err[0] and err[0].endswith("); rebuilding it")
  assert again.path == entry and entry_problem(entry, SPLITS) is None
  for s in SPLITS:
    np.testing.assert_array_equal(np.array(again.splits[s]), want[s])
  assert not [p for p in entry.parent.iterdir() if p.name.startswith(".")]  # no leftovers


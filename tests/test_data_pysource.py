"""The `pysource` dataset (every .py file of a Python installation) and document lengths.

Real files: source trees written under tmp_path, and the running interpreter's own library.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import platform
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bk_jax.data import ByteTokenizer, DataError, default_data_config, load_corpus
from bk_jax.data.config import SPLITS
from bk_jax.data.documents import document_lengths, length_summary, long_documents
from bk_jax.data.identity import corpus_identity

REPO = Path(__file__).resolve().parents[1]
EOS = ByteTokenizer.eos_id


def _write_tree(root: Path, ids, lines: int = 3) -> None:
  """Module `m{i}` in package `p{i % 7}`: a unique marker line plus `lines` (i-dependent) lines."""
  for i in ids:
    f = root / f"p{i % 7}" / f"m{i}.py"
    f.parent.mkdir(parents=True, exist_ok=True)
    body = "".join(f"def f{i}_{k}(x):\n    return x * {k}\n" for k in range(lines + i % 5))
    f.write_text(f"MARK = {i}\n{body}")


def _cfg(tmp_path: Path, path: str, **kw):
  cfg = default_data_config()
  cfg.update(dataset="pysource", path=path, cache_dir=str(tmp_path / "cache"), **kw)
  return cfg


def _owners(cfg) -> dict[int, str]:
  """file id -> split, read back from the decoded token splits (one EOS-terminated doc per file)."""
  c = load_corpus(cfg)
  out = {}
  for split in SPLITS:
    toks = np.asarray(c.splits[split])
    for doc in np.split(toks, np.flatnonzero(toks == EOS) + 1):
      m = re.match(r"MARK = (\d+)\n", c.tokenizer.decode(doc))
      if m:
        assert int(m.group(1)) not in out  # every file lands in exactly one split
        out[int(m.group(1))] = split
  return out


def test_split_is_stable_when_files_are_added(tmp_path):
  tree = tmp_path / "tree"
  _write_tree(tree, range(120))
  cfg = _cfg(tmp_path, str(tree), split_fractions=(0.6, 0.2, 0.2))
  before = _owners(cfg)
  assert sorted(before) == list(range(120))
  assert set(before.values()) == set(SPLITS)  # every split is used
  _write_tree(tree, range(120, 200))  # new files, new packages' modules among the old ones
  after = _owners(cfg)
  assert sorted(after) == list(range(200))
  assert {i: after[i] for i in before} == before


def test_tree_identity_and_document_lengths(tmp_path):
  tree = tmp_path / "tree"
  _write_tree(tree, range(40))
  (tree / "p0" / "tests").mkdir()
  (tree / "p0" / "tests" / "t.py").write_bytes(b"\xff not utf-8 in a test directory\n")
  (tree / "p1" / "notes.txt").write_text("not python\n")
  (tree / "pkg-1.0.dist-info").mkdir()
  (tree / "pkg-1.0.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: pkg\n"
                                                       "Version: 1.0\n")
  cfg = _cfg(tmp_path, str(tree))
  files = sorted(tree.rglob("m*.py"))
  ident = corpus_identity(cfg)
  assert ident["dataset"] == "pysource" and ident["source_files"] == 40
  assert ident["source_bytes"] == sum(f.stat().st_size for f in files)
  assert ident["packages"] == ["pkg==1.0"] and ident["roots"] == {"tree": str(tree.resolve())}
  assert "python_version" not in ident  # another tree: not the running interpreter's library
  # sha256 over every split's text in the builder's order (files sorted by key inside a split)
  owner = _owners(cfg)
  h = hashlib.sha256()
  for split in SPLITS:
    h.update(f"\0split:{split}\0".encode())
    for f in sorted(files, key=lambda f: f.relative_to(tree).as_posix()):
      if owner[int(f.stem[1:])] == split:
        h.update(f.read_bytes())
  assert ident["sha256"] == h.hexdigest()
  # byte level: a document is its file's bytes plus one EOS; the lengths add up to the split
  lengths = document_lengths(cfg)
  c = load_corpus(cfg)
  for split in SPLITS:
    want = sorted(f.stat().st_size + 1 for f in files if owner[int(f.stem[1:])] == split)
    assert sorted(lengths[split].tolist()) == want
    assert lengths[split].sum() == len(c.splits[split])
  s = length_summary(lengths["train"])
  assert s["documents"] == len(lengths["train"]) and s["tokens"] == len(c.splits["train"])
  assert sum(b["documents"] for b in s["histogram"]) == s["documents"]
  longest = long_documents(cfg, "train", min_tokens=int(lengths["train"].max()))
  assert len(longest) >= 1 and longest[0][-1] == EOS and len(longest[0]) == lengths["train"].max()


def test_bpe_document_lengths_and_data_limit(tmp_path):
  tree = tmp_path / "tree"
  _write_tree(tree, range(60), lines=20)
  cfg = _cfg(tmp_path, str(tree), tokenizer="bpe", vocab_size=300)
  c = load_corpus(cfg)
  lengths = document_lengths(cfg)
  for split in SPLITS:  # BPE ends every line with EOS: boundaries come from the recount
    assert lengths[split].sum() == len(c.splits[split]) and len(lengths[split]) > 0
  assert c.tokenizer.decode(long_documents(cfg, "train", 1)[0]).startswith("MARK = ")
  cut = _cfg(tmp_path, str(tree), data_limit=1000)
  cut_lengths = document_lengths(cut)["train"]
  assert cut_lengths.sum() == 1000 == len(load_corpus(cut).splits["train"])
  full = document_lengths(_cfg(tmp_path, str(tree)))["train"]
  assert np.array_equal(cut_lengths[:-1], full[:len(cut_lengths) - 1])
  assert 0 < cut_lengths[-1] <= full[len(cut_lengths) - 1]


def test_running_interpreter_identity_names_python_and_packages(tmp_path):
  cfg = _cfg(tmp_path, "", data_limit=50_000)
  ident = corpus_identity(cfg)
  assert ident["python_version"] == platform.python_version()
  assert f"numpy=={importlib.metadata.version('numpy')}" in ident["packages"]
  assert f"jax=={importlib.metadata.version('jax')}" in ident["packages"]
  assert set(ident["roots"]) >= {"stdlib", "site-packages"}
  # the standard library and the site-packages both feed it (more files than either alone)
  c = load_corpus(cfg)
  assert ident["source_files"] > 1000 and all(len(a) == 50_000 for a in c.splits.values())


@pytest.mark.parametrize("make", ["missing", "file", "no_python"])
def test_bad_prefix_is_one_line_and_writes_nothing(tmp_path, make):
  target = tmp_path / "prefix"
  if make == "file":
    target.write_text("x = 1\n")
  elif make == "no_python":
    (target / "lib").mkdir(parents=True)
    (target / "lib" / "README").write_text("no modules here\n")
  cfg = _cfg(tmp_path, str(target))
  with pytest.raises(DataError) as e:
    load_corpus(cfg)
  msg = str(e.value)
  assert "\n" not in msg and str(target) in msg and "pysource" in msg
  assert not (tmp_path / "cache").exists()


def test_cli_bad_prefix_exits_2_with_one_line(tmp_path):
  env = {**os.environ, "PYTHONPATH": str(REPO)}
  p = subprocess.run([sys.executable, "-m", "bk_jax.data", "--dataset", "pysource", "--path",
                      str(tmp_path / "nope"), "--cache_dir", str(tmp_path / "cache")],
                     capture_output=True, text=True, env=env, timeout=120)
  assert p.returncode == 2
  lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
  assert len(lines) == 1 and lines[0].startswith("bk_jax.data: error: data.path"), p.stderr

"""Sources, tokenizers, the token cache and bad-input handling (real files in tmp_path)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bk_jax.data import (ByteTokenizer, DataError, check_data_config, default_data_config,
                         load_corpus, stream_tokens, vocab_size)
from bk_jax.data.sources import stable_split

REPO = Path(__file__).resolve().parents[1]


def _text(n_lines: int = 400, seed: int = 0) -> str:
  rng = np.random.default_rng(seed)
  words = ["the", "king", "queen", "of", "and", "to", "a", "ROMEO:", "Juliet", "thou",
           "é", "漢"]
  return "".join(" ".join(rng.choice(words, size=rng.integers(1, 9))) + "\n"
                 for _ in range(n_lines))


def text_cfg(tmp_path: Path, text: str | bytes | None = None, **kw):
  cfg = default_data_config()
  cfg.dataset = "text"
  cfg.cache_dir = str(tmp_path / "cache")
  if text is not None:
    f = tmp_path / "corpus.txt"
    f.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8"))
    cfg.path = str(f)
  cfg.update(kw)
  return cfg


def test_byte_tokenizer_round_trip():
  tok = ByteTokenizer()
  s = "def f(x):\n    return 'é漢🙂' * x\n"
  ids = tok.encode(s)
  assert ids.dtype == np.int32 and ids.max() < 256 and len(ids) == len(s.encode())
  assert tok.decode(ids) == s
  assert tok.decode(np.append(ids, [tok.eos_id, tok.pad_id])) == s  # specials are dropped
  assert tok.vocab_size == 259 and {tok.bos_id, tok.eos_id, tok.pad_id} == {256, 257, 258}


def test_text_corpus_splits_and_cache(tmp_path):
  text = _text()
  cfg = text_cfg(tmp_path, text)
  c = load_corpus(cfg)
  assert c.vocab_size == 259 and c.tokenizer.name == "byte"
  assert all(isinstance(a, np.memmap) for a in c.splits.values())
  # Contiguous 90/5/5 cut with one EOS after each split's part of the file.
  joined = b"".join(bytes(c.splits[s][:-1].astype(np.uint8)) for s in ("train", "valid", "test"))
  assert joined == text.encode()
  assert all(c.splits[s][-1] == ByteTokenizer.eos_id for s in c.splits)
  assert abs(len(c.splits["train"]) / len(text.encode()) - 0.9) < 0.01
  assert c.bytes_per_token("train") == pytest.approx(1.0, abs=1e-3)
  entry = c.path
  # Second load: same entry, no rebuild.
  mtime = (entry / "meta.json").stat().st_mtime_ns
  c2 = load_corpus(cfg)
  assert c2.path == entry and (entry / "meta.json").stat().st_mtime_ns == mtime
  # No temporary directories left behind.
  assert [p.name for p in entry.parent.iterdir()] == [entry.name]
  # The key changes with the content, the tokenizer and data_limit.
  Path(cfg.path).write_text(text + "more\n")
  assert load_corpus(cfg).path != entry
  cfg.data_limit = 100
  lim = load_corpus(cfg)
  assert {len(a) for a in lim.splits.values()} == {100}
  cfg.tokenizer = "word"
  assert load_corpus(cfg).path not in (entry, lim.path)


def test_word_tokenizer_cap_and_decode(tmp_path):
  cfg = text_cfg(tmp_path, _text(), tokenizer="word", vocab_size=10)
  c = load_corpus(cfg)
  assert c.vocab_size == 10 == vocab_size(cfg)
  ids = np.asarray(c.splits["train"])
  assert ids.max() < 10 and (ids == c.tokenizer.unk_id).any()
  assert (c.path / "word_vocab.json").exists()
  cfg.vocab_size = 30000
  c = load_corpus(cfg)
  line = "the king and queen of ROMEO:"
  assert c.tokenizer.decode(c.tokenizer.encode(line)) == line + "\n"


def test_bpe_trained_and_cached(tmp_path):
  text = _text(600)
  cfg = text_cfg(tmp_path, text, tokenizer="bpe", vocab_size=120)
  c = load_corpus(cfg)
  assert (c.path / "bpe.model").exists()  # cached next to the token files
  assert 10 < c.vocab_size <= 120 and int(np.max(c.splits["train"])) < c.vocab_size
  assert c.bytes_per_token("train") > 1.5  # BPE merges bytes
  first = "\n".join(text.splitlines()[:5]) + "\n"
  assert c.tokenizer.decode(c.tokenizer.encode(first)) == first


def test_pystdlib_default(tmp_path):
  cfg = default_data_config()
  cfg.cache_dir = str(tmp_path / "cache")
  cfg.data_limit = 200_000
  c = load_corpus(cfg)
  assert c.name == "pystdlib" and c.vocab_size == 259 == vocab_size(cfg)
  assert len(c.splits["train"]) == 200_000 and all(len(a) > 0 for a in c.splits.values())
  assert "import" in c.tokenizer.decode(np.asarray(c.splits["train"][:20_000]))
  # The split rule is a stable hash of the relative path.
  assert stable_split("json/decoder.py", (0.9, 0.05, 0.05)) == stable_split(
      "json/decoder.py", [0.9, 0.05, 0.05])


def test_wikitext_layout(tmp_path):
  d = tmp_path / "wt" / "wikitext-2"
  d.mkdir(parents=True)
  for s in ("train", "valid", "test"):
    (d / f"wiki.{s}.tokens").write_text(f" = {s} = \n\n the cat sat on the mat . \n")
  cfg = default_data_config()
  cfg.update(dataset="wikitext2", path=str(tmp_path / "wt"), cache_dir=str(tmp_path / "c"),
             tokenizer="word")
  c = load_corpus(cfg)
  # The vocabulary comes from the train split only: "valid" is out of vocabulary there.
  assert c.tokenizer.decode(c.splits["valid"]) == "= <unk> =\n\nthe cat sat on the mat .\n"


def test_stream_tokens_reads_sequentially(tmp_path):
  cfg = text_cfg(tmp_path, _text())
  split = np.asarray(load_corpus(cfg).splits["train"], dtype=np.int32)
  chunks = list(stream_tokens(cfg, "train", 0, 1000))
  assert all(ch.dtype == np.int32 and len(ch) == 1001 for ch in chunks[:-1])
  assert 2 <= len(chunks[-1]) <= 1001
  for a, b in zip(chunks, chunks[1:]):
    assert a[-1] == b[0]  # overlap by one token
  assert np.array_equal(np.concatenate([chunks[0]] + [c[1:] for c in chunks[1:]]), split)
  capped = list(stream_tokens(cfg, "train", 2500, 1000))
  assert [len(c) - 1 for c in capped] == [1000, 1000, 500]


BAD_CASES = {
    "missing path": (dict(path="{tmp}/nope.txt"), "does not exist"),
    "empty corpus": (dict(path="{tmp}/empty.txt"), "empty corpus"),
    "undecodable": (dict(path="{tmp}/bad.txt"), "byte offset 600"),
    "unknown dataset": (dict(dataset="imagenet"), "valid: pystdlib, text"),
    "unknown tokenizer": (dict(path="{tmp}/ok.txt", tokenizer="gpt2"), "valid: byte, word, bpe"),
    "wikitext missing": (dict(dataset="wikitext103", path="{tmp}"), "wiki.{train,valid,test}"),
}


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_bad_input_one_clear_error_nothing_written(tmp_path, case):
  (tmp_path / "empty.txt").write_bytes(b"")
  (tmp_path / "bad.txt").write_bytes(b"hello\n" * 100 + b"\xff\xfe tail\n")
  (tmp_path / "ok.txt").write_text("fine\n")
  overrides, needle = BAD_CASES[case]
  cfg = text_cfg(tmp_path, **{k: v.format(tmp=tmp_path) for k, v in overrides.items()})
  with pytest.raises(DataError) as e:
    load_corpus(cfg)
  msg = str(e.value)
  assert needle in msg and "\n" not in msg
  assert not (tmp_path / "cache").exists()


def test_cli_prints_one_line_and_exits_2(tmp_path):
  (tmp_path / "bad.txt").write_bytes(b"ok\n" + b"\xc3\x28" + b"more\n")
  env = {**os.environ, "PYTHONPATH": str(REPO)}
  for args in (["--dataset", "text", "--path", str(tmp_path / "bad.txt")],
               ["--tokenizer", "nope"]):
    p = subprocess.run([sys.executable, "-m", "bk_jax.data", *args,
                        "--cache_dir", str(tmp_path / "cache")],
                       capture_output=True, text=True, env=env, timeout=120)
    assert p.returncode == 2, p.stderr
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("bk_jax.data: error:"), p.stderr
    assert "Traceback" not in p.stderr
  assert not (tmp_path / "cache").exists()


def test_dataset_registry_one_function_one_registration(tmp_path, monkeypatch):
  """A new dataset is one resolver plus one registration: its name passes the config check and
  its corpus loads, tokenized from exactly the resolver's pieces; unknown names list the known."""
  from bk_jax.data import sources

  monkeypatch.setattr(sources, "_REGISTRY", dict(sources._REGISTRY))  # undone after the test
  lines = {s: f"{s} line one\n{s} line two\n" for s in ("train", "valid", "test")}

  def resolve_fixed(cfg, fractions):
    fp = [["fixed", sorted(lines.items())], ["split", fractions]]
    pieces = lambda split: iter([sources.Piece(lines[split], len(lines[split]), True)])
    return sources.Source(cfg.dataset, fp, sum(len(t) for t in lines.values()), pieces)

  sources.register_dataset("fixed", resolve_fixed, reads_path=False)
  cfg = text_cfg(tmp_path, dataset="fixed", path="")
  check_data_config(cfg)
  c = load_corpus(cfg)
  assert c.name == "fixed" and vocab_size(cfg) == 259
  for s, t in lines.items():
    assert c.tokenizer.decode(np.asarray(c.splits[s])) == t
  with pytest.raises(ValueError, match="already registered"):
    sources.register_dataset("fixed", resolve_fixed, reads_path=False)
  cfg.path = "somewhere.txt"
  with pytest.raises(DataError, match="data.path='somewhere.txt' is ignored by "
                                      "data.dataset='fixed'.*dataset=text \\(or wikitext2 / "
                                      "wikitext103 / pysource\\)"):
    check_data_config(cfg)
  cfg.dataset = "imagenet"
  with pytest.raises(DataError, match="unknown dataset 'imagenet'; valid: pystdlib, text, "
                                      "wikitext2, wikitext103, pysource, synthetic, fixed$"):
    check_data_config(cfg)
  assert sources.DATASETS == ("pystdlib", "text", "wikitext2", "wikitext103", "pysource",
                             "synthetic")

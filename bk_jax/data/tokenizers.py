"""Tokenizers: byte-level (default), capped word-level, and sentencepiece BPE.

All tokenizers map ``str -> 1-D int32 array`` and back. Word and BPE tokenizers are *trained*
on the train split (:func:`train_tokenizer`) and saved next to the token cache, from where
:func:`load_tokenizer` restores them.

Id conventions:
  * byte: ids 0..255 are the raw UTF-8 bytes; 256 = BOS, 257 = EOS, 258 = PAD; vocab 259.
  * word: 0 = <pad>, 1 = <unk>, 2 = <bos>, 3 = <eos>, then words by descending train frequency
    (ties broken alphabetically), capped at ``vocab_size`` ids in total.
  * bpe: 0 = <pad>, 1 = <unk>, 2 = <s>, 3 = </s> (EOS), then the learned pieces.
Word and BPE tokenizers work line by line and end every line with EOS, so EOS doubles as the
newline; byte-level keeps newlines as bytes and uses EOS only between documents.
"""

from __future__ import annotations

import collections
import io
import json
from pathlib import Path
from typing import Iterable, Protocol, runtime_checkable

import numpy as np

from bk_jax.data.config import TOKENIZERS
from bk_jax.data.errors import DataError


@runtime_checkable
class Tokenizer(Protocol):
  """What the rest of bk_jax may rely on."""

  name: str
  vocab_size: int
  bos_id: int
  eos_id: int
  pad_id: int

  def encode(self, text: str) -> np.ndarray:
    """Text -> int32 ids of shape (T,)."""
    ...

  def decode(self, ids: np.ndarray) -> str:
    """Ids of shape (T,) -> text."""
    ...


class ByteTokenizer:
  """UTF-8 bytes 0..255 plus BOS=256, EOS=257, PAD=258. ``decode(encode(s)) == s``."""

  name = "byte"
  vocab_size = 259
  bos_id, eos_id, pad_id = 256, 257, 258

  def encode(self, text: str) -> np.ndarray:
    """Args: text. Returns: int32 (len(text.encode()),) byte ids; no specials added."""
    return np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.int32)

  def decode(self, ids: np.ndarray) -> str:
    """Args: ids (T,). Returns: text; specials are dropped, broken UTF-8 becomes U+FFFD."""
    ids = np.asarray(ids)
    return ids[ids < 256].astype(np.uint8).tobytes().decode("utf-8", errors="replace")


class WordTokenizer:
  """Whitespace word vocabulary with a cap (the reference's 30,000-word scheme).

  Args:
    words: the non-special vocabulary, most frequent first.
  """

  name = "word"
  specials = ("<pad>", "<unk>", "<bos>", "<eos>")
  pad_id, unk_id, bos_id, eos_id = 0, 1, 2, 3

  def __init__(self, words: list[str]):
    self.itos = list(self.specials) + list(words)
    self.stoi = {w: i for i, w in enumerate(self.itos)}
    self.vocab_size = len(self.itos)

  @classmethod
  def train(cls, lines: Iterable[str], vocab_size: int) -> "WordTokenizer":
    """Counts whitespace words and keeps the ``vocab_size - 4`` most frequent.

    Args:
      lines: training text, line by line.
      vocab_size: cap on the total vocabulary, specials included.
    Returns:
      The tokenizer.
    """
    counts: collections.Counter[str] = collections.Counter()
    for line in lines:
      counts.update(line.split())
    # Sort by (-count, word) so the vocabulary does not depend on dict insertion order.
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    return cls([w for w, _ in ranked[: max(0, vocab_size - len(cls.specials))]])

  def encode(self, text: str) -> np.ndarray:
    """Args: text. Returns: int32 ids, every line's words followed by EOS."""
    get, unk, out = self.stoi.get, self.unk_id, []
    for line in text.splitlines():
      out.extend(get(w, unk) for w in line.split())
      out.append(self.eos_id)
    return np.asarray(out, dtype=np.int32)

  def decode(self, ids: np.ndarray) -> str:
    """Args: ids (T,). Returns: words joined by spaces, EOS rendered as a newline."""
    lines, cur = [], []
    for i in np.asarray(ids).tolist():
      if i == self.eos_id:
        lines.append(" ".join(cur))
        cur = []
      elif i not in (self.pad_id, self.bos_id):
        cur.append(self.itos[i])
    return "".join(ln + "\n" for ln in lines) + " ".join(cur)

  def save(self, directory: Path) -> None:
    (directory / "word_vocab.json").write_text(json.dumps(self.itos[len(self.specials):]))

  @classmethod
  def load(cls, directory: Path) -> "WordTokenizer":
    return cls(json.loads((directory / "word_vocab.json").read_text()))


class BPETokenizer:
  """Sentencepiece BPE trained offline on the train split, line by line.

  Args:
    model_proto: serialized sentencepiece model.
  """

  name = "bpe"
  pad_id, unk_id, bos_id, eos_id = 0, 1, 2, 3
  #: Lines sampled for training (sentencepiece's ``input_sentence_size``): bounds training time.
  max_train_lines = 1_000_000

  def __init__(self, model_proto: bytes):
    import sentencepiece as spm

    self.model_proto = model_proto
    self.sp = spm.SentencePieceProcessor(model_proto=model_proto)
    self.vocab_size = int(self.sp.get_piece_size())

  @classmethod
  def train(cls, lines: Iterable[str], vocab_size: int) -> "BPETokenizer":
    """Trains BPE with identity normalisation (code keeps its indentation).

    Args:
      lines: training text, line by line (empty lines are skipped).
      vocab_size: cap on the vocabulary (soft: a small corpus yields fewer pieces).
    Returns:
      The tokenizer.
    Raises:
      DataError: if sentencepiece rejects the corpus / size.
    """
    import sentencepiece as spm

    buf = io.BytesIO()
    try:
      spm.SentencePieceTrainer.train(
          sentence_iterator=(ln for ln in lines if ln.strip()),
          model_writer=buf,
          vocab_size=int(vocab_size),
          model_type="bpe",
          character_coverage=1.0,
          # A cap, not an exact size: tiny test corpora must not fail.
          hard_vocab_limit=False,
          normalization_rule_name="identity",
          remove_extra_whitespaces=False,
          allow_whitespace_only_pieces=True,
          # Byte fallback makes encoding lossless but costs 256 ids; only for real vocabs.
          byte_fallback=vocab_size >= 1024,
          pad_id=cls.pad_id, unk_id=cls.unk_id, bos_id=cls.bos_id, eos_id=cls.eos_id,
          input_sentence_size=cls.max_train_lines,
          shuffle_input_sentence=True,
          num_threads=2,
          minloglevel=2,
      )
    except RuntimeError as e:
      raise DataError(f"sentencepiece BPE training failed (vocab_size={vocab_size}): {e}")
    return cls(buf.getvalue())

  def encode(self, text: str) -> np.ndarray:
    """Args: text. Returns: int32 ids, every line's pieces followed by EOS."""
    lines = text.splitlines()
    if not lines:
      return np.zeros((0,), np.int32)
    pieces = self.sp.encode(lines)
    lens = np.fromiter((len(p) + 1 for p in pieces), dtype=np.int64, count=len(pieces))
    out = np.full((int(lens.sum()),), self.eos_id, dtype=np.int32)
    starts = np.concatenate([[0], np.cumsum(lens)[:-1]])
    for s, p in zip(starts.tolist(), pieces):
      out[s : s + len(p)] = p
    return out

  def decode(self, ids: np.ndarray) -> str:
    """Args: ids (T,). Returns: text, EOS rendered as a newline."""
    lines, cur = [], []
    for i in np.asarray(ids).tolist():
      if i == self.eos_id:
        lines.append(cur)
        cur = []
      elif i not in (self.pad_id, self.bos_id):
        cur.append(i)
    text = "".join(ln + "\n" for ln in self.sp.decode(lines)) if lines else ""
    return text + (self.sp.decode(cur) if cur else "")

  def save(self, directory: Path) -> None:
    (directory / "bpe.model").write_bytes(self.model_proto)

  @classmethod
  def load(cls, directory: Path) -> "BPETokenizer":
    return cls((directory / "bpe.model").read_bytes())


def check_tokenizer_name(name: str) -> None:
  """Raises DataError listing the valid names when ``name`` is not a tokenizer."""
  if name not in TOKENIZERS:
    raise DataError(f"unknown tokenizer {name!r}; valid: {', '.join(TOKENIZERS)}")


def needs_training(name: str) -> bool:
  """Whether the tokenizer is learned from the train split (word, bpe)."""
  check_tokenizer_name(name)
  return name != "byte"


def train_tokenizer(name: str, lines: Iterable[str], vocab_size: int) -> Tokenizer:
  """Trains a word or BPE tokenizer; returns the byte tokenizer for "byte".

  Args:
    name: tokenizer name.
    lines: train-split text, line by line.
    vocab_size: cap on the vocabulary.
  Returns:
    The tokenizer.
  """
  check_tokenizer_name(name)
  if name != "byte" and vocab_size < 8:
    raise DataError(f"data.vocab_size={vocab_size} is too small for tokenizer {name!r}")
  if name == "word":
    return WordTokenizer.train(lines, vocab_size)
  if name == "bpe":
    return BPETokenizer.train(lines, vocab_size)
  return ByteTokenizer()


def save_tokenizer(tok: Tokenizer, directory: Path) -> None:
  """Writes the tokenizer's learned state (if any) into ``directory``."""
  if hasattr(tok, "save"):
    tok.save(directory)


def load_tokenizer(name: str, directory: Path | None = None) -> Tokenizer:
  """Restores a tokenizer saved by :func:`save_tokenizer` (byte needs no directory)."""
  check_tokenizer_name(name)
  if name == "byte":
    return ByteTokenizer()
  assert directory is not None
  return WordTokenizer.load(directory) if name == "word" else BPETokenizer.load(directory)

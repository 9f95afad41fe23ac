"""Default configuration of the data layer (``config.data``)."""

from __future__ import annotations

import ml_collections

#: Names accepted by ``config.data.tokenizer``.
TOKENIZERS = ("byte", "word", "bpe")
#: Names accepted by ``config.data.synthetic.task``.
SYNTHETIC_TASKS = ("induction_heads", "mqar", "selective_copying")
#: Split names, in order.
SPLITS = ("train", "valid", "test")


def default_synthetic_config() -> ml_collections.ConfigDict:
  """Parameters of the generated long-range tasks (``config.data.synthetic``).

  Returns:
    A ConfigDict with fields:
      task: one of :data:`SYNTHETIC_TASKS`.
      vocab_size: total vocabulary including the task's special tokens (16 in the Mamba paper).
      num_kv_pairs: key/value pairs (and queries) per MQAR sample.
      power_a: MQAR power-law exponent of the query gaps (Zoology's ``power_a``).
      num_memorize: tokens to copy in selective copying (16 in the Mamba paper).
      seed: content seed of the generated samples (the training seed only shuffles them).
      num_samples: samples per split and epoch (defines ``steps_per_epoch``).
  """
  return ml_collections.ConfigDict(
      dict(
          task="induction_heads",
          vocab_size=16,
          num_kv_pairs=4,
          power_a=0.01,
          num_memorize=16,
          seed=0,
          num_samples=1 << 16,
      )
  )


def default_data_config() -> ml_collections.ConfigDict:
  """Default ``config.data``.

  Returns:
    A ConfigDict with fields:
      dataset: a name registered in ``bk_jax.data.sources`` (see its ``DATASETS``;
        "pystdlib" is embedded and needs no files).
      path: file / directory / glob for "text"; the directory holding the release files for
        "wikitext2"/"wikitext103"; unused by "pystdlib" and "synthetic" (must stay "").
      tokenizer: one of :data:`TOKENIZERS` ("byte" = 256 bytes + BOS/EOS/PAD).
      vocab_size: vocabulary cap for "word" and "bpe" (specials included); ignored by "byte".
      data_limit: 0 = no cap; otherwise every split is truncated to its first ``data_limit``
        tokens (applied while tokenizing, so it is part of the cache key; word/BPE
        vocabularies are still learned from the whole train split).
      cache_dir: token cache root; "" means ``$BK_JAX_CACHE`` or ``~/.cache/bk_jax``.
      split_fractions: (train, valid, test) fractions for "pystdlib" (per file, by a stable
        hash of its path) and "text" (contiguous cut of every file); wikitext has fixed splits.
      read_threads: threads of the grain iterator made by ``make_iterator``.
      prefetch_batches: batches the grain iterator reads ahead (0 = no background thread).
      synthetic: see :func:`default_synthetic_config`.
  """
  return ml_collections.ConfigDict(
      dict(
          dataset="pystdlib",
          path="",
          tokenizer="byte",
          vocab_size=30000,
          data_limit=0,
          cache_dir="",
          split_fractions=(0.9, 0.05, 0.05),
          read_threads=1,
          prefetch_batches=4,
          synthetic=default_synthetic_config(),
      )
  )

"""bk_jax data layer: corpora, tokenizers, synthetic tasks and grain pipelines.

See docs/guides/data.md for datasets, cache layout and token ids.
"""

import os as _os

from bk_jax.data.config import (SPLITS, SYNTHETIC_TASKS, TOKENIZERS, default_data_config,
                                default_synthetic_config)
from bk_jax.data.corpus import Corpus, load_corpus, vocab_size
from bk_jax.data.errors import DataError, cli_errors
from bk_jax.data.pipeline import (batch_size_for, make_iterator, make_train_dataset,
                                  steps_per_epoch, stream_tokens, too_short_hint)
from bk_jax.data.sources import DATASETS, check_data_config, register_dataset
from bk_jax.data.synthetic import check_sample, make_synthetic_batch
from bk_jax.data.tokenizers import (BPETokenizer, ByteTokenizer, Tokenizer, WordTokenizer,
                                    load_tokenizer)

#: The bundled Tiny Shakespeare text (public domain; see bk_jax/data/assets/README.md).
TINY_SHAKESPEARE = _os.path.join(_os.path.dirname(__file__), "assets", "tinyshakespeare.txt")

__all__ = [
    "TINY_SHAKESPEARE", "BPETokenizer", "ByteTokenizer", "Corpus", "DATASETS", "DataError", "SPLITS",
    "SYNTHETIC_TASKS", "TOKENIZERS", "Tokenizer", "WordTokenizer", "batch_size_for",
    "check_data_config", "check_sample", "cli_errors", "default_data_config",
    "default_synthetic_config", "load_corpus", "load_tokenizer", "make_iterator",
    "make_synthetic_batch", "make_train_dataset", "register_dataset", "steps_per_epoch",
    "stream_tokens", "too_short_hint", "vocab_size",
]

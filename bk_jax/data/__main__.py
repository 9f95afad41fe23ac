"""``python -m bk_jax.data``: tokenize a dataset into the cache and print its statistics.

Example::

    python -m bk_jax.data --dataset text --path bk_jax/data/assets/tinyshakespeare.txt
    python -m bk_jax.data --dataset pysource --documents   # + document lengths in tokens
"""

from __future__ import annotations

import argparse
import json

from bk_jax.data.config import default_data_config
from bk_jax.data.corpus import load_corpus
from bk_jax.data.documents import document_lengths, length_summary
from bk_jax.data.errors import cli_errors


def main(argv: list[str] | None = None) -> None:
  cfg = default_data_config()
  ap = argparse.ArgumentParser(prog="python -m bk_jax.data", description=__doc__.split("\n")[0])
  for field in ("dataset", "path", "tokenizer", "vocab_size", "data_limit", "cache_dir"):
    ap.add_argument(f"--{field}", type=type(cfg[field]), default=cfg[field])
  ap.add_argument("--documents", action="store_true",
                  help="also print the distribution of document lengths in tokens per split")
  args = vars(ap.parse_args(argv))
  documents = args.pop("documents")
  cfg.update(args)
  with cli_errors("bk_jax.data"):
    corpus = load_corpus(cfg)
    report = dict(
        dataset=corpus.name, tokenizer=corpus.tokenizer.name, vocab_size=corpus.vocab_size,
        cache=str(corpus.path), tokens={s: len(a) for s, a in corpus.splits.items()},
        bytes_per_token={s: round(corpus.bytes_per_token(s), 4) for s in corpus.splits})
    if documents:
      report["documents"] = {s: length_summary(a) for s, a in document_lengths(cfg).items()}
  print(json.dumps(report))


if __name__ == "__main__":
  main()

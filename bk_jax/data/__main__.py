"""``python -m bk_jax.data``: tokenize a dataset into the cache and print its statistics.

Example::

    python -m bk_jax.data --dataset text --path bk_jax/data/assets/tinyshakespeare.txt
"""

from __future__ import annotations

import argparse
import json

from bk_jax.data.config import default_data_config
from bk_jax.data.corpus import load_corpus
from bk_jax.data.errors import cli_errors


def main(argv: list[str] | None = None) -> None:
  cfg = default_data_config()
  ap = argparse.ArgumentParser(prog="python -m bk_jax.data", description=__doc__.split("\n")[0])
  for field in ("dataset", "path", "tokenizer", "vocab_size", "data_limit", "cache_dir"):
    ap.add_argument(f"--{field}", type=type(cfg[field]), default=cfg[field])
  args = ap.parse_args(argv)
  cfg.update({k: v for k, v in vars(args).items()})
  with cli_errors("bk_jax.data"):
    corpus = load_corpus(cfg)
  print(json.dumps(dict(
      dataset=corpus.name, tokenizer=corpus.tokenizer.name, vocab_size=corpus.vocab_size,
      cache=str(corpus.path), tokens={s: len(a) for s, a in corpus.splits.items()},
      bytes_per_token={s: round(corpus.bytes_per_token(s), 4) for s in corpus.splits})))


if __name__ == "__main__":
  main()

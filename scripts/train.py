#!/usr/bin/env python
"""Train a bk-jax language model.

    python scripts/train.py --config configs/seq32k.py [--config.train.lr=1e-4 ...]

Reruns resume from the latest checkpoint in save_dir; SIGTERM saves and exits.
"""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from bk_jax.train.cli import one_line_errors, parse_config_args  # noqa: E402


def main(argv=None) -> int:
  argv = sys.argv[1:] if argv is None else argv
  with one_line_errors("train.py"):
    config, rest = parse_config_args(argv)
    if rest:
      from bk_jax.train.config_validation import ConfigError
      raise ConfigError(f"unrecognised arguments: {' '.join(rest)}")
    from bk_jax.train.loop import run
    run(config)
  return 0


if __name__ == "__main__":
  sys.exit(main())

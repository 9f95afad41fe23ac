#!/usr/bin/env python
"""Train a bk-jax language model.

usage: train.py --config FILE [--config.a.b=value ...]

    python scripts/train.py --config configs/seq32k.py [--config.train.lr=1e-4 ...]

--config FILE        a config file with get_config() (configs/*.py; they derive from configs/base.py)
--config.a.b=VALUE   override one field of it (also `--config.a.b VALUE`); unknown fields are errors

Reruns resume from the newest intact checkpoint in save_dir (a damaged one is moved to
save_dir/damaged/); SIGTERM or Ctrl-C (SIGINT) saves a checkpoint and exits.
Exit status: 0 done, 2 bad input (one line `train.py: error: ...`), 3 interrupted (checkpoint
saved; rerun to resume), 4 save_dir in use by another trainer.
"""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from bk_jax.train.cli import one_line_errors, parse_config_args  # noqa: E402


def main(argv=None) -> int:
  argv = sys.argv[1:] if argv is None else argv
  if any(a in ("-h", "--help") for a in argv):
    print(__doc__.split("\n", 2)[2].strip())
    return 0
  with one_line_errors("train.py"):
    config, rest = parse_config_args(argv)
    if rest:
      from bk_jax.train.config_validation import ConfigError
      raise ConfigError(f"unrecognised arguments: {' '.join(rest)} (see train.py --help)")
    from bk_jax.train.loop import run
    from bk_jax.train.rundir import EXIT_INTERRUPTED
    res = run(config)
  return EXIT_INTERRUPTED if res.get("interrupted") else 0


if __name__ == "__main__":
  sys.exit(main())

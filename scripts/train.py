#!/usr/bin/env python
"""Train a bk-jax language model.

usage: train.py --config FILE [--config.a.b=value ...]

    python scripts/train.py --config configs/seq32k.py [--config.train.lr=1e-4 ...]

--config FILE        a config file with get_config() (configs/*.py; they derive from configs/base.py)
--config.a.b=VALUE   override one field of it (also `--config.a.b VALUE`); unknown fields are errors

Reruns resume from the newest intact checkpoint in save_dir (a damaged one is moved to
save_dir/damaged/); SIGTERM or Ctrl-C (SIGINT) saves a checkpoint and exits.
Exit status: 0 done, 2 bad input (one line `train.py: error: ...`), 3 interrupted (what there
was to save is saved; rerun to resume), 4 save_dir in use by another trainer, 5 the storage
refused a write (disk full, read-only; the last intact checkpoint is kept). Details:
docs/guides/faults.md.
"""

import sys

# standard library only: the signal handlers are in place before anything heavy is imported
from bk_jax.runtime.errors import EXIT_INTERRUPTED, one_line_errors
from bk_jax.runtime.interrupts import raise_on_signals


def main(argv=None) -> int:
  argv = sys.argv[1:] if argv is None else argv
  if any(a in ("-h", "--help") for a in argv):
    print(__doc__.split("\n", 2)[2].strip())
    return 0
  # from here on a SIGTERM or SIGINT ends in one line and exit status 3
  with one_line_errors("train.py"), raise_on_signals():
    from bk_jax.train.cli import parse_config_args

    config, rest = parse_config_args(argv)
    if rest:
      from bk_jax.train.config_validation import ConfigError
      raise ConfigError(f"unrecognised arguments: {' '.join(rest)} (see train.py --help)")
    from bk_jax.entry import run
    res = run(config)
  return EXIT_INTERRUPTED if res.get("interrupted") else 0


if __name__ == "__main__":
  sys.exit(main())

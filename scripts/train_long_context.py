#!/usr/bin/env python
"""The reference `train_long_context.py` command line on top of bk_jax.train.

    python scripts/train_long_context.py --seq_len 8192 --epochs 5
    python scripts/train_long_context.py --multi_length --epochs 3
    python scripts/train_long_context.py --eval_only --seq_len 1048576 --streaming

Every reference flag maps onto a config field (docs/guides/training.md, "The reference CLI"); `--config FILE` and
`--config.a.b=value` work here too. `--sequence_lengths` needs `--multi_length`.
Exit status as scripts/train.py: 0 done, 2 bad input, 3 interrupted (resumable), 4 save_dir busy,
5 the storage refused a write (docs/guides/faults.md).
"""

import sys

# standard library only: the signal handlers are in place before anything heavy is imported
from bk_jax.runtime.errors import EXIT_INTERRUPTED, one_line_errors
from bk_jax.runtime.interrupts import raise_on_signals


def main(argv=None) -> int:
  argv = sys.argv[1:] if argv is None else argv
  # from here on a SIGTERM or SIGINT ends in one line and exit status 3
  with one_line_errors("train_long_context.py"), raise_on_signals():
    from bk_jax.train.cli import reference_config

    config = reference_config(argv)
    from bk_jax.entry import run
    res = run(config)
  return EXIT_INTERRUPTED if res.get("interrupted") else 0


if __name__ == "__main__":
  sys.exit(main())

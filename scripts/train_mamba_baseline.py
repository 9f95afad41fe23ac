#!/usr/bin/env python
"""The reference `train_long_context.py` command line with the Mamba baseline (model.kind "mamba").

    python scripts/train_mamba_baseline.py --seq_len 8192 --epochs 5
    python scripts/train_mamba_baseline.py --multi_length --epochs 3 --save_dir checkpoints/mamba

The same flags as scripts/train_long_context.py; the model is bk_jax's Mamba (selective scan,
configured by configs/base.py's model.mamba section and the shared width flags). The results
file and TensorBoard carry the same names as a ResNet-BK run's, so the two compare directly.
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
  with one_line_errors("train_mamba_baseline.py"), raise_on_signals():
    from bk_jax.train.cli import reference_config

    config = reference_config(argv, model_kind="mamba")
    from bk_jax.entry import run
    res = run(config)
  return EXIT_INTERRUPTED if res.get("interrupted") else 0


if __name__ == "__main__":
  sys.exit(main())

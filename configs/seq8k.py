"""Single-length training at N = 8192 (resolvent method "auto" from base: associative on
accelerators, scan on the CPU)."""
from configs import base


def get_config():
  c = base.get_config()
  c.save_dir = "runs/seq8k"
  c.train.seq_len = 8192
  c.train.batch_size = 4
  return c

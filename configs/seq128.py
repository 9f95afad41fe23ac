"""Single-length training at N = 128."""
from configs import base


def get_config():
  c = base.get_config()
  c.save_dir = "runs/seq128"
  c.train.seq_len = 128
  c.train.batch_size = 32
  return c

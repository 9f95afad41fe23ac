"""Single-length training at N = 2048."""
from configs import base


def get_config():
  c = base.get_config()
  c.save_dir = "runs/seq2k"
  c.train.seq_len = 2048
  c.train.batch_size = 8
  return c

"""Single-length training at N = 512."""
from configs import base


def get_config():
  c = base.get_config()
  c.save_dir = "runs/seq512"
  c.train.seq_len = 512
  c.train.batch_size = 16
  return c

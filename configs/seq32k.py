"""Single-length training at N = 32768 with rematerialised blocks."""
from configs import base


def get_config():
  c = base.get_config()
  c.save_dir = "runs/seq32k"
  c.train.seq_len = 32768
  c.train.batch_size = 2
  c.model.remat = "full"
  return c

"""Single-length training at N = 131072 (batch 1, rematerialised blocks)."""
from configs import base


def get_config():
  c = base.get_config()
  c.save_dir = "runs/seq131k"
  c.train.seq_len = 131072
  c.train.batch_size = 1
  c.train.log_interval = 1
  c.checkpoint.every_steps = 50
  c.model.remat = "full"
  return c

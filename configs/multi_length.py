"""Multi-length schedule: every length in order, a constant token budget per batch."""
from configs import base


def get_config():
  c = base.get_config()
  c.save_dir = "runs/multi_length"
  c.train.multi_length = True
  c.train.sequence_lengths = (128, 512, 2048, 8192, 32768, 131072)
  c.train.tokens_per_batch = 131072  # 1024 x 128 ... 1 x 131072
  c.train.steps_per_length = 500
  c.model.remat = "full"
  return c

"""Single-length training at N = 8192 (chunked resolvent scan keeps activations bounded)."""
from configs import base


def get_config():
  c = base.get_config()
  c.save_dir = "runs/seq8k"
  c.train.seq_len = 8192
  c.train.batch_size = 4
  c.model.resolvent_method = "chunked"
  return c

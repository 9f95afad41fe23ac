"""Transformer baseline with the parameter count of configs/bk_7b.py (same width, depth,
vocabulary, data, precision, mesh and lengths; attention 4 x d_model^2 per block, so the FFN is
narrower; checked by tests/test_scale_configs.py)."""
from configs import bk_7b

D_FF = 17408


def get_config():
  c = bk_7b.get_config()
  c.save_dir = "runs/transformer_7b"
  c.model.kind = "transformer"
  c.model.d_ff = D_FF
  return c

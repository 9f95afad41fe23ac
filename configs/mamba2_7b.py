"""Mamba-2 baseline with the parameter count of configs/bk_7b.py (same width, vocabulary, data,
precision, mesh and lengths; depth chosen to match, checked by tests/test_scale_configs.py).

The block is the reference's Mamba2 at its defaults (d_state 128, headdim 64: 128 heads at
d_inner 8192, one group of B/C, conv width 4). 7,019,650,304 parameters (bk_7b: 7,030,882,304).
"""
from configs import bk_7b

N_LAYERS = 66  # Mamba-2 block: in/out projections ~3 x expand x d_model^2 (+ B, C, dt columns)


def get_config():
  c = bk_7b.get_config()
  c.save_dir = "runs/mamba2_7b"
  c.model.kind = "mamba2"
  c.model.n_layers = N_LAYERS
  return c

"""Mamba-2 baseline with the parameter count of configs/bk_1b.py (same width, vocabulary, data,
precision, mesh and lengths; depth chosen to match, checked by tests/test_scale_configs.py).

The block is the reference's Mamba2 at its defaults: d_state 128, headdim 64 (64 heads at
d_inner 4096), one group of B/C, conv width 4; the SSD kernel's chunk is "auto" (64 on a GPU).
1,142,341,696 parameters (bk_1b: 1,150,687,744).
"""
from configs import bk_1b

N_LAYERS = 39  # Mamba-2 block: in/out projections ~3 x expand x d_model^2 (+ B, C, dt columns)


def get_config():
  c = bk_1b.get_config()
  c.save_dir = "runs/mamba2_1b"
  c.model.kind = "mamba2"
  c.model.n_layers = N_LAYERS
  return c

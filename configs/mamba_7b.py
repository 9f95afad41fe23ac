"""Mamba baseline with the parameter count of configs/bk_7b.py (same width, vocabulary, data,
precision, mesh and lengths; depth chosen to match, checked by tests/test_scale_configs.py).

  python scripts/train.py --config configs/mamba_7b.py --config.data.path=/data/wikitext-103

Cost: not measured (CPU: not runnable at this size; GPU: not run, and no memory plan made; the
mesh and lengths are those of configs/bk_7b.py: 4 nodes, docs/guides/scaling.md).
"""
from configs import bk_7b

N_LAYERS = 64  # Mamba block: in/out projections 3 x expand x d_model^2


def get_config():
  c = bk_7b.get_config()
  c.save_dir = "runs/mamba_7b"
  c.model.kind = "mamba"
  c.model.n_layers = N_LAYERS
  return c

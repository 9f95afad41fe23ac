"""Transformer baseline with the parameter count of configs/bk_7b.py (same width, depth,
vocabulary, data, precision, mesh and lengths; attention 4 x d_model^2 per block, so the FFN is
narrower; checked by tests/test_scale_configs.py).

  python scripts/train.py --config configs/transformer_7b.py --config.data.path=/data/wikitext-103

Cost: not measured (CPU: not runnable at this size; GPU: not run, and no memory plan made; the
mesh and lengths are those of configs/bk_7b.py: 4 nodes, docs/guides/scaling.md).
"""
from configs import bk_7b

D_FF = 17408


def get_config():
  c = bk_7b.get_config()
  c.save_dir = "runs/transformer_7b"
  c.model.kind = "transformer"
  c.model.d_ff = D_FF
  return c

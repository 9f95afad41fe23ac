"""Single-length training at N = 2048 of ResNet-BK with the selective block whose
steps are exactly 0 where not needed (`BK_BLOCKS["selective_lasso"]`: the selective step on the
resolvent with a dead zone and its lasso, keys 8, conv, gate; DESIGN §2.12), the
BK block that learns induction heads: configs/seq2k.py's model (d_model 128, 4 layers, 16 heads)
with that block, 941,312 parameters, on the default corpus, batch 8, 3 epochs = 1,992 steps.

  python scripts/train.py --config configs/selective_2k.py

Cost of the same model with the softplus step (`selective`; the lasso adds one mean per layer),
measured through the trainer for 6 steps on an idle 2-core CPU, 2026-12-04:
  CPU: first step (with compilation) 8.5 s, then ~1.5 s per step (11,000 tokens/s), so ~50
       minutes for the 1,992 steps; peak RSS 2.0 GB.
  GPU: not measured.
"""
from configs import seq2k

from bk_jax.models.config import use_bk_block


def get_config():
  c = seq2k.get_config()
  c.save_dir = "runs/selective_2k"
  use_bk_block(c.model, "selective_lasso")
  return c

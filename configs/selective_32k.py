"""Single-length training at N = 32768 of ResNet-BK with the selective block whose
steps are exactly 0 where not needed (`BK_BLOCKS["selective_lasso"]`: the selective step on the
resolvent with a dead zone and its lasso, keys 8, conv, gate; DESIGN §2.12), blocks
rematerialised: configs/seq32k.py's model (d_model 128, 4 layers, 16 heads) with that block,
941,312 parameters, on the default corpus, batch 2, 3 epochs = 498 steps.

  python scripts/train.py --config configs/selective_32k.py

Cost of the same model with the softplus step (`selective`; the lasso adds one mean per layer),
measured through the trainer for 4 steps on an idle 2-core CPU, 2026-12-04:
  CPU: first step (with compilation) 12 s, then ~5.7 s per step (11,600 tokens/s), so ~47
       minutes for the 498 steps; peak RSS 5.7 GB.
  GPU: not measured.
"""
from configs import seq32k

from bk_jax.models.config import use_bk_block


def get_config():
  c = seq32k.get_config()
  c.save_dir = "runs/selective_32k"
  use_bk_block(c.model, "selective_lasso")
  return c

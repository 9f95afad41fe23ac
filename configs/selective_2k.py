"""Single-length training at N = 2048 of ResNet-BK with the selective block (`BK_BLOCKS
["selective"]`: the selective step on the resolvent, keys 8, conv, gate; DESIGN §2.12), the
BK block that learns induction heads: configs/seq2k.py's model (d_model 128, 4 layers, 16 heads)
with that block, 941,312 parameters, on the default corpus, batch 8, 3 epochs = 1,992 steps.

  python scripts/train.py --config configs/selective_2k.py

Cost: not measured yet.
"""
from configs import seq2k

from bk_jax.models.config import use_bk_block


def get_config():
  c = seq2k.get_config()
  c.save_dir = "runs/selective_2k"
  use_bk_block(c.model, "selective")
  return c

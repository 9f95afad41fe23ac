"""Single-length training at N = 2048 of ResNet-BK with heads of both kinds
(`BK_BLOCKS["green_selective"]`: the keyed Green block whose last 4 of 16 heads run the selective
step with a dead zone and its lasso; DESIGN §2.13), the BK block that holds induction heads to 2^16
on every seed run and models text as well as the keyed Green block at 4M tokens, ahead of Mamba:
configs/seq2k.py's model (d_model 128, 4 layers, 16 heads) with that block, 1,008,752 parameters,
on the default corpus, batch 8, 3 epochs = 1,992 steps.

  python scripts/train.py --config configs/green_selective_2k.py

Cost: not measured at this size; at d_model 64 its step is 4.8-5.4x the default block's on an idle
CPU (docs/results.md "The default block").
"""
from configs import seq2k

from bk_jax.models.config import use_bk_block


def get_config():
  c = seq2k.get_config()
  c.save_dir = "runs/green_selective_2k"
  use_bk_block(c.model, "green_selective")
  return c

"""Single-length training at N = 2048 of ResNet-BK with heads of both kinds
(`BK_BLOCKS["green_selective"]`: the keyed Green block whose last 2 of 16 heads run the selective
step with a dead zone and its lasso; DESIGN §2.13), the BK block that holds induction heads and
models text between the keyed Green block and Mamba: configs/seq2k.py's model (d_model 128,
4 layers, 16 heads) with that block, 1,015,896 parameters, on the default corpus, batch 8,
3 epochs = 1,992 steps.

  python scripts/train.py --config configs/green_selective_2k.py

Cost: not measured (the keyed Green block's step is 3.5-4.6x the default block's on the CPU,
docs/results.md "The chunkwise kernel").
"""
from configs import seq2k

from bk_jax.models.config import use_bk_block


def get_config():
  c = seq2k.get_config()
  c.save_dir = "runs/green_selective_2k"
  use_bk_block(c.model, "green_selective")
  return c

"""Single-length training at N = 131072 (batch 1, rematerialised blocks): the default model
(ResNet-BK, d_model 128, 4 layers, 16 heads, 619,072 parameters) on the default corpus,
3 epochs = 249 steps.

  python scripts/train.py --config configs/seq131k.py

Cost, measured through the trainer for 3 steps on the 2-core CPU shared with other jobs (load
average ~6), 2026-12-03 (an idle CPU is faster):
  CPU: 9-19 s per step (the first includes compilation), so up to ~1.3 hours for the 249 steps;
       peak RSS 5.27 GB.
  GPU: not measured.
"""
from configs import base


def get_config():
  c = base.get_config()
  c.save_dir = "runs/seq131k"
  c.train.seq_len = 131072
  c.train.batch_size = 1
  c.train.log_interval = 1
  c.checkpoint.every_steps = 50
  c.model.remat = "full"
  return c

"""Single-length training at N = 512: the default model (ResNet-BK, d_model 128, 4 layers,
16 heads, 619,072 parameters) on the default corpus, batch 16, 3 epochs = 3,987 steps.

  python scripts/train.py --config configs/seq512.py

Cost, measured through the trainer for 6 steps on the 2-core CPU shared with other jobs (load
average ~6), 2026-12-03 (an idle CPU is faster):
  CPU: first step (with compilation) 15 s, then 1.2-1.7 s per step, so up to ~2 hours for the
       3,987 steps; peak RSS 0.92 GB.
  GPU: not measured.
"""
from configs import base


def get_config():
  c = base.get_config()
  c.save_dir = "runs/seq512"
  c.train.seq_len = 512
  c.train.batch_size = 16
  return c

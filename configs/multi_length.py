"""Multi-length schedule: every length from 128 to 131072 in order, a constant 131,072 tokens per
batch (1024 x 128 ... 1 x 131072), 500 steps per length = 3,000 steps; the default model
(ResNet-BK, d_model 128, 4 layers, 16 heads, 619,072 parameters), blocks rematerialised.

  python scripts/train.py --config configs/multi_length.py

Cost, measured through the trainer for 2 steps per length on the 2-core CPU shared with other
jobs (load average ~6), 2026-12-03 (an idle CPU is faster):
  CPU: 20-38 s per step (131,072 tokens) at every length, each length compiling once, so up
       to ~30 hours for the 3,000 steps; peak RSS 5.36 GB.
  GPU: not measured.
"""
from configs import base


def get_config():
  c = base.get_config()
  c.save_dir = "runs/multi_length"
  c.train.multi_length = True
  c.train.sequence_lengths = (128, 512, 2048, 8192, 32768, 131072)
  c.train.tokens_per_batch = 131072  # 1024 x 128 ... 1 x 131072
  c.train.steps_per_length = 500
  c.model.remat = "full"
  return c

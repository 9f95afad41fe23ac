"""Single-length training at N = 128: the default model (ResNet-BK, d_model 128, 4 layers,
16 heads, 619,072 parameters) on the default corpus, batch 32, 3 epochs = 7,977 steps.

  python scripts/train.py --config configs/seq128.py

Cost, measured through the trainer for 6 steps on the 2-core CPU shared with other jobs (load
average ~6), 2026-12-03 (an idle CPU is faster):
  CPU: first step (with compilation) 22 s, then 0.8-2.3 s per step, so up to ~4 hours for the
       7,977 steps; peak RSS 0.77 GB.
  GPU: not measured.
"""
from configs import base


def get_config():
  c = base.get_config()
  c.save_dir = "runs/seq128"
  c.train.seq_len = 128
  c.train.batch_size = 32
  return c

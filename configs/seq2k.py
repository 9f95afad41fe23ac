"""Single-length training at N = 2048: the default model (ResNet-BK, d_model 128, 4 layers,
16 heads, 619,072 parameters) on the default corpus, batch 8, 3 epochs = 1,992 steps. This is
also what configs/base.py alone trains.

  python scripts/train.py --config configs/seq2k.py

Cost, measured through the trainer for 6 steps on the 2-core CPU shared with other jobs (load
average ~6), 2026-12-03 (an idle CPU is faster):
  CPU: first step (with compilation) 13 s, then 3.3-4.4 s per step, so up to ~2.5 hours for the
       1,992 steps; peak RSS 1.21 GB.
  GPU: not measured.
"""
from configs import base


def get_config():
  c = base.get_config()
  c.save_dir = "runs/seq2k"
  c.train.seq_len = 2048
  c.train.batch_size = 8
  return c

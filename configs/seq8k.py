"""Single-length training at N = 8192: the default model (ResNet-BK, d_model 128, 4 layers,
16 heads, 619,072 parameters) on the default corpus, batch 4, 3 epochs = 996 steps; resolvent
method "auto" from base (associative on accelerators, scan on the CPU).

  python scripts/train.py --config configs/seq8k.py

Cost, measured through the trainer for 5 steps on the 2-core CPU shared with other jobs (load
average ~6), 2026-12-03 (an idle CPU is faster):
  CPU: first step (with compilation) 14 s, then 4.8-6.2 s per step, so up to ~1.5 hours for the
       996 steps; peak RSS 1.81 GB.
  GPU: not measured.
"""
from configs import base


def get_config():
  c = base.get_config()
  c.save_dir = "runs/seq8k"
  c.train.seq_len = 8192
  c.train.batch_size = 4
  return c

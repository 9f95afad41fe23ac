"""Single-length training at N = 32768 with rematerialised blocks: the default model (ResNet-BK,
d_model 128, 4 layers, 16 heads, 619,072 parameters) on the default corpus, batch 2, 3 epochs =
498 steps.

  python scripts/train.py --config configs/seq32k.py

Cost:
  CPU: 18-27 s per step (the first, with compilation, 19 s), so up to ~3.5 hours for the 498
       steps; peak RSS 2.94 GB (measured through the trainer for 4 steps on the 2-core CPU
       shared with other jobs, load average ~6, 2026-12-03; an idle CPU is faster).
  GPU: one NVIDIA H200, float32, resolvent "associative": 8.96M tokens/s after compilation (7.3
       ms per step), 40 steps in 39.7 s including the compile, so well under a minute for the
       498 steps (GPU suite, 2026-11-27, results/speed_gpu/h200_suite/); memory not recorded.
"""
from configs import base


def get_config():
  c = base.get_config()
  c.save_dir = "runs/seq32k"
  c.train.seq_len = 32768
  c.train.batch_size = 2
  c.model.remat = "full"
  return c

"""Small byte-level ResNet-BK on the embedded Python-stdlib corpus (time: README, top).

About 220 CPU-seconds: roughly 2 to 4 minutes of wall time on an idle 2-core CPU.
"""
from configs import base


def get_config():
  c = base.get_config()
  c.save_dir = "runs/quickstart"
  c.model.d_model = 128
  c.model.n_layers = 4
  c.model.n_heads = 16
  c.model.d_ff = 512
  c.data.dataset = "pystdlib"
  c.data.data_limit = 2_000_000
  c.train.seq_len = 256
  c.train.batch_size = 16
  c.train.steps_per_length = 600
  c.train.lr = 3e-3
  c.train.warmup_steps = 40
  c.train.log_interval = 25
  c.checkpoint.every_steps = 300
  c.checkpoint.keep_best = True  # runs/quickstart/checkpoint_seq256_best
  c.eval.every_steps = 150  # validation curve: 4 points (150, 300, 450, 600)
  c.eval.batches = 8  # 8 x 16 x 256 = 32,768 valid tokens per point
  c.eval.samples = 2
  return c

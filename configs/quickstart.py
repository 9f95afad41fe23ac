"""Small byte-level ResNet-BK on the embedded Python-stdlib corpus: d_model 128, 4 layers,
16 heads (619,072 parameters), N = 256, batch 16, 600 steps, validation every 150 steps, the
best checkpoint kept. README's first command.

  python scripts/train.py --config configs/quickstart.py

Cost:
  CPU: about 220 CPU-seconds (user 168 s + system 50 s by /usr/bin/time -v, token cache already
       built, 2026-11-27), i.e. roughly 2 to 4 minutes of wall time on an idle 2-core CPU
       (13 minutes on the same CPU shared with other jobs, load average ~6, 2026-12-03); peak
       RSS 0.84 GB.
  GPU: not measured.
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

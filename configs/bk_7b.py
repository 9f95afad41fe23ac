"""ResNet-BK at ~7B parameters, at 32k and 131k tokens, for 80 GB GPUs (several nodes).

Model: d_model 4096, 32 blocks, 128 BK heads, GELU FFN 25600 (6.25 x d_model), BPE vocabulary
32768: 7,030,882,304 parameters. Precision as configs/bk_1b.py: float32 parameters, gradients
and AdamW moments, bfloat16 matmuls/activations, float32 resolvent (complex64), norms, logits
and loss.

Mesh: data=-1 (the devices left over), fsdp=16, sequence=2: 32 GPUs (4 nodes of 8), the smallest
mesh on which the 131k step fits in 80 GB per device according to
`python scripts/plan_memory.py --config configs/bk_7b.py --find_min_mesh` (8 and 16 devices do
not fit). f32 parameters + gradients + two AdamW moments are 16 bytes x 7B = 112 GB before
activations; fsdp=16 leaves 7 GB of that per device, and the sequence axis halves
the activations of the one 131k sequence each fsdp group holds (16 sequences per step).

Lengths: 32768 then 131072 tokens per sequence at 2,097,152 tokens per optimizer step
(64 x 32k, then 16 x 131k sequences).

  python scripts/train.py --config configs/bk_7b.py --config.data.path=/data/wikitext-103

on each of the 4 nodes, with JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and JAX_PROCESS_ID set
(docs/guides/scaling.md, "Several processes").

Cost:
  CPU: not runnable.
  GPU: not run. Memory planned by XLA (2026-11-27, results/scaling/memory_plan/): 66.13 GiB per
       device on 32 GPUs (fsdp 16 x sequence 2), 122.86 GiB on 16 and 245.70 GiB on 8; MFU upper
       bound 85.7% on H100s. Time per step not measured.
"""
from configs import bk_1b


def get_config():
  c = bk_1b.get_config()
  c.save_dir = "runs/bk_7b"
  m = c.model
  m.d_model, m.n_layers, m.n_heads, m.d_ff = 4096, 32, 128, 25600
  m.transformer.n_heads = 32  # head dim 128 in the transformer_7b config
  c.train.tokens_per_batch = 1 << 21
  c.train.lr = 1.5e-4
  c.mesh.data, c.mesh.fsdp, c.mesh.tensor, c.mesh.sequence = -1, 16, 1, 2
  return c

"""ResNet-BK at ~1.1B parameters for one node of 8 x 80 GB GPUs, at 32k and 131k tokens.

Model: d_model 2048, 24 blocks, 64 BK heads (potential, hopping and shift per head: the
resolvent core is only 3 x 64 x 2048 weights per block), GELU FFN 10240 (5 x d_model: the FFN
carries the parameters, as in a Transformer without attention), BPE vocabulary of 32768
(sentencepiece, `bk_jax.data` tokenizer "bpe"; the trainer resets model.vocab_size from the
trained tokenizer, which is at most data.vocab_size). Parameter count (eval_shape, nothing
allocated, `bk_jax.models.count_params`): 1,150,687,744 (tests/test_scale_configs.py).

Precision (mixed, docs/guides/scaling.md): parameters, gradients and AdamW moments in float32
(model.param_dtype); matmuls and activations in bfloat16 (model.dtype); potentials, the
resolvent recurrence (complex64), RMSNorm statistics, logits and the loss in float32.

Mesh: data=1, fsdp=8, tensor=1, sequence=1 (ZeRO-3 over the 8 GPUs of a node; one 131k
sequence per GPU). Several nodes: raise mesh.data (or let data=-1 take them).

Lengths: two stages in one run (train.multi_length), 32768 then 131072 tokens per sequence, at
a constant 1,048,576 tokens per optimizer step (32 x 32k, then 8 x 131k sequences); select one
length with --config.train.multi_length=False --config.train.seq_len=131072.

  python scripts/train.py --config configs/bk_1b.py --config.data.path=/data/wikitext-103

Cost:
  CPU: not runnable (1.15B parameters at 131k tokens per sequence need the 8-GPU mesh).
  GPU: not run. Memory planned by XLA for this mesh (`python scripts/plan_memory.py --config
       configs/bk_1b.py --mesh data=1,fsdp=8,tensor=1,sequence=1 --device_memory_gb 80`,
       2026-11-27): 62.91 GiB per device at 131k, fits 80 GB (74.51 GiB); MFU upper bound 62.7%
       on H100s (results/scaling/memory_plan/). Time per step not measured.
"""
from configs import base

VOCAB = 32768


def get_config():
  c = base.get_config()
  c.save_dir = "runs/bk_1b"
  m = c.model
  m.d_model, m.n_layers, m.n_heads, m.d_ff = 2048, 24, 64, 10240
  m.vocab_size = VOCAB  # replaced by the trained tokenizer's size at train time
  m.dtype, m.param_dtype = "bfloat16", "float32"
  m.remat = "full"  # keep only the block inputs; recompute each block in the backward pass
  m.scan_layers = True  # one compiled block for all layers (compile time independent of depth)
  m.resolvent_method = "auto"  # associative scan on GPU/TPU (log depth), sequential scan on CPU
  m.transformer.n_heads = 16  # used by the transformer_* configs derived from this file
  c.data.dataset = "wikitext103"
  c.data.path = "data/wikitext-103"  # directory with the wikitext-103 release files
  c.data.tokenizer = "bpe"
  c.data.vocab_size = VOCAB
  t = c.train
  t.multi_length = True
  t.sequence_lengths = (32768, 131072)
  t.tokens_per_batch = 1 << 20  # 32 x 32768, then 8 x 131072
  t.steps_per_length = 5000
  t.lr = 3e-4
  t.warmup_steps = 500
  t.log_interval = 10
  c.checkpoint.every_steps = 250
  c.mesh.data, c.mesh.fsdp, c.mesh.tensor, c.mesh.sequence = 1, 8, 1, 1
  return c

"""Base training configuration: every default lives here; the other files override it.

Every field is read by code (see the comments for where). Alone it trains what configs/seq2k.py
trains (the default model at N = 2048, batch 8, 3 epochs = 1,992 steps; cost: see that file):

  python scripts/train.py --config configs/base.py
  python scripts/train.py --config configs/seq32k.py --config.train.lr=1e-4   # a file + overrides
"""

from __future__ import annotations

import ml_collections

from bk_jax.data.config import default_data_config
from bk_jax.models.config import default_model_config
from bk_jax.sharding import default_rules_config


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 42  # the run seed: model init (copied into model.seed) and data order
  c.save_dir = "runs/default"  # checkpoints, results JSON, TensorBoard events
  c.device = "auto"  # "auto" | "cpu" | "gpu" | "cuda" | "tpu": JAX platform (bk_jax.train.loop)

  c.model = default_model_config()  # bk_jax.models (vocab_size is set from the data)
  c.data = default_data_config()  # bk_jax.data

  t = c.train = ml_collections.ConfigDict()
  t.seq_len = 2048  # single-length training
  t.multi_length = False  # train every length of sequence_lengths, in order
  t.sequence_lengths = (128, 512, 2048, 8192, 32768, 131072)
  t.batch_size = 8  # sequences per batch (when tokens_per_batch == 0)
  t.tokens_per_batch = 0  # > 0: batch size = tokens_per_batch // seq_len for every length
  # Microbatches per optimizer step inside the jitted step (bk_jax.train.step): the batch of
  # every length must divide by grad_accum_steps x (mesh.data x mesh.fsdp).
  t.grad_accum_steps = 1
  t.epochs = 3  # passes over the training split per length (when steps_per_length == 0)
  t.steps_per_length = 0  # > 0: train exactly this many steps per length instead of epochs
  t.lr = 1e-3  # peak learning rate
  t.min_lr_ratio = 0.1  # cosine decays to lr * min_lr_ratio
  t.warmup_steps = 100  # linear warm-up (clipped to the planned steps)
  t.weight_decay = 0.01  # AdamW decay on parameters with ndim >= 2
  t.grad_clip = 1.0  # global-norm clipping (0 disables)
  t.adam_b1 = 0.9
  t.adam_b2 = 0.95
  t.adam_eps = 1e-8
  t.log_interval = 10  # steps between host syncs (console, TensorBoard, metrics_history)
  t.spike_factor = 2.0  # spike iff loss > spike_factor x previous finite loss
  # Divergence: `divergence_patience` consecutive steps with a non-finite loss/gradient or a loss
  # above max(divergence_factor x best loss of the length, divergence_min_loss) -> restore the last
  # good checkpoint and multiply the learning rate by recovery_lr_scale; after max_recoveries the
  # length is DIVERGED. The floor keeps a task that is learnt from counting: a synthetic task's
  # loss near 0 moves by 10x (0.014 -> 0.15) with the batch; divergence climbs far above it. It
  # binds only below a best loss of floor / factor (0.125 nats), where language models never are.
  t.divergence_factor = 4.0
  t.divergence_min_loss = 0.5  # nats per token
  t.divergence_patience = 20
  t.max_recoveries = 2
  t.recovery_lr_scale = 0.5

  k = c.checkpoint = ml_collections.ConfigDict()
  k.every_steps = 500  # periodic checkpoints (plus one at every length boundary and the end)
  k.keep = 3  # periodic checkpoints kept (named *_final checkpoints are always kept)
  k.resume = True  # resume from the latest checkpoint in save_dir
  # Also keep save_dir/checkpoint_seq{N}_best: the weights of the lowest eval/loss seen at each
  # length (needs eval.every_steps > 0; saved synchronously at every improvement).
  k.keep_best = False

  lg = c.logging = ml_collections.ConfigDict()
  lg.tensorboard = True  # TensorBoard event files, written into save_dir
  lg.progress_bar = True  # tqdm bar with tokens/s
  lg.console = True  # step lines, epoch summaries, the final tables

  e = c.eval = ml_collections.ConfigDict()
  e.eval_only = False  # evaluate the latest checkpoint instead of training
  e.streaming = False  # bk_jax.eval.streaming (chunked with carried state)
  e.eval_tokens = 1_000_000  # tokens to evaluate
  e.chunk_size = 4096  # streaming chunk length
  # lax.scan over sub-chunks of this many tokens inside each streaming chunk (bounded activations
  # at large chunk sizes; bk_jax.eval.streaming.DEFAULT_SUB_CHUNK). 0, or a length that does not
  # divide chunk_size, streams the chunk in one piece.
  e.sub_chunk = 1024
  e.split = "test"  # data split to evaluate (the held-out test split unless overridden)
  # Validation during training (bk_jax.train.validation): every `every_steps` global steps and
  # at the end of each length, the first `batches` training-shape batches of the valid split;
  # logged as eval/loss, eval/perplexity, eval/bits_per_byte. 0 turns it off.
  e.every_steps = 500
  e.batches = 16
  e.samples = 2  # generated continuations logged as TensorBoard text at each validation (0: off)
  e.sample_tokens = 64  # new tokens per sample
  e.sample_temperature = 0.8  # sampling temperature of those samples (0: greedy)

  m = c.mesh = ml_collections.ConfigDict()
  m.data = -1  # -1: all devices left over by the other axes
  m.fsdp = 1
  m.tensor = 1
  m.sequence = 1
  # Logical axis -> mesh axes (bk_jax.sharding.DEFAULT_RULES): parameter axes ("embed" over
  # fsdp, "vocab"/"mlp"/"heads" over tensor, ...) and MaxText-style activation axes
  # ("activation_batch" over (data, fsdp), "activation_length" over sequence, ...), read by
  # make_mesh; a pair is (name, mesh axis | tuple of mesh axes | None).
  m.rules = default_rules_config()

  # Multi-host (bk_jax.distributed): "" / 0 / -1 fall back to JAX_COORDINATOR_ADDRESS,
  # JAX_NUM_PROCESSES, JAX_PROCESS_ID (or a cluster JAX auto-detects); unset = one process.
  dd = c.distributed = ml_collections.ConfigDict()
  dd.coordinator_address = ""
  dd.num_processes = 0
  dd.process_id = -1

  # Fault injection for tests and drills: gradients are multiplied by NaN at these global steps
  # (0-based) and at every step of these sequence lengths.
  d = c.debug = ml_collections.ConfigDict()
  d.nonfinite_grad_steps = ()
  d.nonfinite_grad_seq_lens = ()
  return c

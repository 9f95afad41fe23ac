"""Every checkpoint any file in configs/ produces streams, and streaming == one full forward.

Each config file (found by glob, so a new config is covered without editing this file) is shrunk
by overrides (tiny widths, 2 layers, 32-token sequences, 2 steps, one shared tiny text corpus)
but keeps everything that decides the code path: model kind, remat, scan_layers, resolvent
method, MoE / semiseparable options, multi-length. It trains through the real trainer into a
tmp save_dir, the saved checkpoint is streamed with `run_streaming_eval` as
scripts/eval_streaming.py does (the checkpoint's own config; chunks of 64 tokens, each a
`lax.scan` over 4 sub-chunks of 16, state carried across chunks), and the streamed loss must equal
one full forward of the restored model over the same tokens.

Tolerance: 1e-5 relative on the mean NLL. Both sides are float32; the difference is only the
order of float32 operations (chunked recurrences vs one pass, ~1e-7 relative per op), far below
1e-5 over 256 tokens, while a wrong carried state changes the loss at the 1e-3 level or more.
"""

import glob
import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from bk_jax import data as bk_data
from bk_jax.eval.loading import load_checkpoint
from bk_jax.eval.streaming import run_streaming_eval
from bk_jax.train.cli import load_config
from bk_jax.train.loop import run
from tiny_configs import write_pattern_corpus

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG_FILES = sorted(p for p in glob.glob(os.path.join(REPO, "configs", "*.py"))
                      if os.path.basename(p) != "__init__.py")
EVAL_TOKENS, CHUNK, SUB_CHUNK = 256, 64, 16
RTOL = 1e-5

# explicit variants on configs/quickstart.py (model overrides)
VARIANTS = {
    "remat_full": dict(remat="full"),
    "remat_dots": dict(remat="dots"),
    "scan_layers": dict(scan_layers=True),
    "scan_layers_remat_full": dict(scan_layers=True, remat="full"),
    "semiseparable": dict(use_semiseparable=True, semiseparable_rank=2),
    "moe_scattering": dict(use_moe=True, router="scattering"),
    "moe_learned": dict(use_moe=True, router="learned"),
}
# the default run covers the two NNX transforms the streaming scan must trace through (nnx.remat
# in the layer loop, nnx.remat inside nnx.scan over stacked layers); every other run is slow
FAST_VARIANTS = ("scan_layers_remat_full",)  # covers scan_layers and remat; the rest: slow


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
  """One tiny text corpus and token cache shared by every run of this module."""
  d = tmp_path_factory.mktemp("configs_corpus")
  return str(write_pattern_corpus(str(d / "pattern.txt"), n_chars=40_000)), str(d / "cache")


def shrink(config: ml_collections.ConfigDict, corpus: tuple[str, str], save_dir: str,
           model_overrides: dict | None = None) -> ml_collections.ConfigDict:
  """`config` at test size; the fields that choose the code path are left as the file sets them."""
  c = ml_collections.ConfigDict(config.to_dict())
  c.save_dir = save_dir
  d = c.data
  d.dataset, d.path, d.cache_dir, d.tokenizer = "text", corpus[0], corpus[1], "byte"
  d.data_limit, d.prefetch_batches = 0, 0
  m = c.model
  m.d_model, m.n_layers, m.n_heads, m.d_ff = 16, 2, 2, 32
  m.bs_window, m.mamba.chunk = 8, 8
  m.mamba2.headdim, m.mamba2.d_state = 8, 8  # d_inner 32: 4 heads
  m.transformer.n_heads, m.transformer.block_size = 2, 16
  m.transformer.cache_window = max(int(m.transformer.cache_window), EVAL_TOKENS)  # full attention
  # heads of both kinds stay both kinds at 2 heads: one Green head, one selective head
  m.bk_selective_heads = min(int(m.bk_selective_heads), m.n_heads - 1)
  for k, v in (model_overrides or {}).items():
    m[k] = v
  t = c.train
  t.seq_len, t.batch_size, t.steps_per_length = 32, 2, 2
  if t.multi_length:
    t.sequence_lengths = (16, 32)
  if t.tokens_per_batch > 0:
    t.tokens_per_batch = 64
  t.warmup_steps, t.log_interval = 1, 1
  # one CPU device: the configs' meshes (fsdp x sequence for the 1B/7B files) collapse to it
  c.mesh.data, c.mesh.fsdp, c.mesh.tensor, c.mesh.sequence = -1, 1, 1, 1
  c.checkpoint.every_steps = 1000  # only the final checkpoints
  c.logging.tensorboard, c.logging.progress_bar, c.logging.console = False, False, False
  return c


def full_forward_loss(model: nnx.Module, tokens: np.ndarray) -> float:
  """Mean next-token NLL of one forward pass over `tokens` (no cache)."""
  graphdef, state = nnx.split(model)

  @jax.jit
  def nll(state, toks):
    logits = nnx.merge(graphdef, state)(toks[None, :-1])
    tl = jnp.take_along_axis(logits, toks[None, 1:, None], axis=-1)[..., 0]
    return jnp.mean(jax.nn.logsumexp(logits, -1) - tl)

  return float(nll(state, jnp.asarray(tokens, jnp.int32)))


_RUNS: dict[str, tuple[float, float, dict]] = {}


def train_and_stream(cfg: ml_collections.ConfigDict) -> tuple[float, float, dict]:
  """(streamed loss, full-forward loss, streaming output) of a 2-step run of `cfg`.

  Configs that shrink to the same run (e.g. seq128 and seq2k) share one result.
  """
  key = json.dumps({k: v for k, v in cfg.to_dict().items() if k != "save_dir"}, sort_keys=True,
                   default=str)
  if key in _RUNS:
    return _RUNS[key]
  res = run(cfg)
  assert set(res["status"].values()) == {"trained"}, res["status"]
  # as scripts/eval_streaming.py --checkpoint_dir: the checkpoint's own config, eval overridden
  ev = ml_collections.ConfigDict(cfg.to_dict())
  ev.eval.split, ev.eval.eval_tokens, ev.eval.chunk_size = "valid", EVAL_TOKENS, CHUNK
  ev.eval.sub_chunk = SUB_CHUNK
  out = run_streaming_eval(ev, config_is_explicit=False,
                           output=os.path.join(cfg.save_dir, "stream.json"))
  assert out["tokens"] == EVAL_TOKENS and out["sub_chunks"] == CHUNK // SUB_CHUNK
  assert out["chunks"] == EVAL_TOKENS // CHUNK  # several chunks: the state is carried
  ck = load_checkpoint(cfg.save_dir)
  tokens = bk_data.load_corpus(ck.config.data).splits["valid"][:EVAL_TOKENS + 1]
  _RUNS[key] = (out["loss"], full_forward_loss(ck.model, np.asarray(tokens)), out)
  return _RUNS[key]


def _check(cfg):
  streamed, full, out = train_and_stream(cfg)
  assert np.isfinite(full) and full > 0
  assert abs(streamed - full) <= RTOL * abs(full), (streamed, full)


def test_every_config_is_found():
  names = {os.path.basename(p) for p in CONFIG_FILES}
  assert {"base.py", "quickstart.py", "seq32k.py", "multi_length.py"} <= names


@pytest.mark.slow
@pytest.mark.parametrize("path", CONFIG_FILES, ids=lambda p: os.path.basename(p)[:-3])
def test_config_checkpoint_streams(path, corpus, tmp_path):
  _check(shrink(load_config(path), corpus, str(tmp_path)))


@pytest.mark.parametrize("variant", [
    pytest.param(v, marks=() if v in FAST_VARIANTS else pytest.mark.slow) for v in VARIANTS])
def test_quickstart_variant_streams(variant, corpus, tmp_path):
  cfg = load_config(os.path.join(REPO, "configs", "quickstart.py"))
  _check(shrink(cfg, corpus, str(tmp_path), VARIANTS[variant]))

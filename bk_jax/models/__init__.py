"""Flax NNX language models: ResNet-BK, and the Mamba and Transformer baselines.

Public API (DESIGN §4):

    model = build_model(config.model)
    logits = model(tokens)                              # (B, N) int32 -> (B, N, V) float32
    cache = model.init_cache(batch_size)
    logits, cache = model(tokens, cache=cache)          # streaming; chunked == full
    logits, aux = model(tokens, return_aux=True)        # aux["aux_loss"] is already weighted
"""

from __future__ import annotations

from typing import Any

from flax import nnx

from bk_jax.models.config import default_model_config, execution_paths, validate_model_config
from bk_jax.models.lm import LanguageModel

__all__ = ["LanguageModel", "build_model", "default_model_config", "execution_paths",
           "validate_model_config"]


def build_model(model_cfg: Any, *, rngs: nnx.Rngs | None = None) -> LanguageModel:
  """Builds the language model described by `model_cfg`.

  Args:
    model_cfg: a model ConfigDict (see `default_model_config`).
    rngs: parameter RNGs; default nnx.Rngs(model_cfg.seed).

  Returns:
    A `LanguageModel` (an nnx.Module) with unsharded parameters annotated with logical axes.

  Raises:
    ValueError: unknown kind, router, remat policy or method, or inconsistent sizes.
  """
  validate_model_config(model_cfg)
  if rngs is None:
    rngs = nnx.Rngs(model_cfg.seed)
  # Parameters carry logical axis names ("vocab", "embed", ...) as metadata only; they are not
  # mesh axes, so eager sharding is off here and the sharding module places the state later
  # (nnx.get_partition_spec + its logical->mesh rules).
  with nnx.use_eager_sharding(False):
    return LanguageModel(model_cfg, rngs=rngs)

"""Flax NNX language models: ResNet-BK, and the Mamba, Mamba-2 and Transformer baselines.

Public API (DESIGN §4):

    model = build_model(config.model)
    logits = model(tokens)                              # (B, N) int32 -> (B, N, V) float32
    cache = model.init_cache(batch_size)                # ModelCache(layers, pos)
    logits, cache = model(tokens, cache=cache)          # streaming; chunked == full
    logits, cache, aux = model.forward(tokens, cache)   # one ModelOutput (cache None without
                                                        # a cache; aux["aux_loss"] already weighted)

The model kinds are registered in `bk_jax.models.kinds` (block factory, config check, aux
reductions).
"""

from __future__ import annotations

from typing import Any

from flax import nnx

from bk_jax.models.config import default_model_config
from bk_jax.models.kinds import execution_paths, validate_model_config
from bk_jax.models.lm import LanguageModel, ModelCache, ModelOutput

__all__ = ["LanguageModel", "ModelCache", "ModelOutput", "build_model", "count_params",
           "default_model_config", "execution_paths", "validate_model_config"]


def build_model(model_cfg: Any, *, rngs: nnx.Rngs | None = None) -> LanguageModel:
  """Builds the language model described by `model_cfg`.

  Args:
    model_cfg: a model ConfigDict (see `default_model_config`).
    rngs: parameter RNGs; default nnx.Rngs(model_cfg.seed).

  Returns:
    A `LanguageModel` (an nnx.Module) with unsharded parameters annotated with logical axes.

  Raises:
    ConfigError (a ValueError): unknown kind, router, remat policy or method, or inconsistent sizes.
  """
  validate_model_config(model_cfg)
  if rngs is None:
    rngs = nnx.Rngs(model_cfg.seed)
  # Parameters carry logical axis names ("vocab", "embed", ...) as metadata only; they are not
  # mesh axes, so eager sharding is off here and the sharding module places the state later
  # (nnx.get_partition_spec + its logical->mesh rules).
  with nnx.use_eager_sharding(False):
    return LanguageModel(model_cfg, rngs=rngs)


def count_params(model_cfg: Any) -> int:
  """Number of parameters of the model `model_cfg` describes, from shapes only.

  The model is built under ``nnx.eval_shape``: no parameter is allocated, so a 7B config counts
  in seconds on a laptop.

  Args:
    model_cfg: a model ConfigDict.

  Returns:
    The total element count of every nnx.Param.
  """
  import math

  import jax

  abstract = nnx.eval_shape(lambda: build_model(model_cfg))
  params = nnx.state(abstract, nnx.Param)
  return int(sum(math.prod(x.shape) for x in jax.tree.leaves(params)))

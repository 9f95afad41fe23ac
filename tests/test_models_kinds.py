"""The model-kind registry and the typed model contracts.

A kind registered from outside the package (one block class + one `register`) builds, trains a
forward pass and streams exactly like the built-in kinds; unknown kinds and undeclared aux keys
fail with one clear line; old checkpoints that store `use_scattering_router` still load.
"""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from bk_jax.models import ModelCache, ModelOutput, build_model, default_model_config
from bk_jax.models import kinds
from bk_jax.runtime.checkpoint_meta import ADDED_MODEL_FIELDS, config_differences, upgrade_config
from bk_jax.runtime.errors import ConfigError
from bk_jax.runtime.run_config import train_lengths


def cfg_for(kind, **kw):
  c = default_model_config()
  c.kind, c.vocab_size, c.d_model, c.n_layers, c.n_heads, c.d_ff = kind, 37, 16, 2, 4, 32
  c.transformer.n_heads = 2
  c.mamba2.headdim = 8  # d_inner 32: 4 heads
  c.update(kw)
  return c


class CumsumBlock(nnx.Module):
  """A toy causal block: x + W (running sum of x); carry = the running sum (B, d)."""

  def __init__(self, d, *, rngs, dtype, param_dtype):
    self.w = nnx.Linear(d, d, rngs=rngs, dtype=dtype, param_dtype=param_dtype)

  def init_carry(self, batch_size):
    return jnp.zeros((batch_size, self.w.in_features), jnp.float32)

  def __call__(self, x, carry, pos, bias):
    del pos, bias
    if carry is None:
      carry = self.init_carry(x.shape[0])
    s = carry[:, None] + jnp.cumsum(x, axis=1)
    return x + self.w(s), s[:, -1], {"aux_loss": jnp.zeros(()), "toy/mean_sum": jnp.mean(s)}


@pytest.fixture
def toy_kind():
  kind = kinds.register(kinds.ModelKind(
      name="toy_cumsum",
      make_block=lambda cfg, rngs, dtype, param_dtype: CumsumBlock(
          cfg.d_model, rngs=rngs, dtype=dtype, param_dtype=param_dtype),
      check=lambda cfg: kinds.need(cfg.d_model % 2 == 0, "toy_cumsum needs an even d_model"),
      paths=lambda cfg, platform, batch, seq_len: {"toy": "cumsum"},
      arch_fields=("toy_field",),
      aux_reduce={"toy/mean_sum": jnp.mean}))
  yield kind
  del kinds._REGISTRY[kind.name]  # leave the registry as the package defines it


def test_registered_kind_builds_streams_and_reports(toy_kind):
  from bk_jax.models import execution_paths, validate_model_config

  cfg = cfg_for("toy_cumsum")
  model = build_model(cfg)
  t = jax.random.randint(jax.random.key(0), (2, 12), 0, 37)
  out = model.forward(t)
  assert isinstance(out, ModelOutput) and out.cache is None
  np.testing.assert_array_equal(model(t), out.logits)  # the public call: logits only
  assert set(out.aux) == {"aux_loss", "toy/mean_sum"} and out.aux["toy/mean_sum"].shape == ()
  cache = model.init_cache(2)
  assert isinstance(cache, ModelCache) and cache.layers.shape == (2, 2, 16)
  pieces = []
  for lo, hi in ((0, 5), (5, 12)):
    logits, cache = model(t[:, lo:hi], cache=cache)
    pieces.append(logits)
  np.testing.assert_allclose(np.concatenate(pieces, 1), out.logits, atol=1e-5, rtol=1e-5)
  assert int(cache.pos) == 12
  assert execution_paths(cfg) == {"dtype": "float32", "toy": "cumsum"}
  assert "toy_field" in kinds.arch_fields()
  with pytest.raises(ConfigError, match="toy_cumsum needs an even d_model"):
    validate_model_config(cfg_for("toy_cumsum", d_model=15))


def test_unknown_kind_is_one_config_error_naming_the_kinds():
  with pytest.raises(ConfigError) as e:
    build_model(cfg_for("rnn"))
  msg = str(e.value)
  assert "\n" not in msg and "'rnn'" in msg
  for k in ("resnet_bk", "mamba", "transformer", "mamba2"):
    assert k in msg
  assert kinds.KINDS == ("resnet_bk", "mamba", "transformer", "mamba2")


def test_reduce_aux_uses_declared_reductions_and_rejects_undeclared_keys():
  rng = np.random.default_rng(0)
  stacked = {"aux_loss": rng.random(3), "moe/expert_load": rng.random((3, 4)),
             "bk/condition_number": rng.random(3), "bk/precision_flags": rng.random(3)}
  got = kinds.reduce_aux("resnet_bk", {k: jnp.asarray(v) for k, v in stacked.items()})
  np.testing.assert_allclose(got["aux_loss"], stacked["aux_loss"].sum(), rtol=1e-6)
  np.testing.assert_allclose(got["moe/expert_load"], stacked["moe/expert_load"].mean(0), rtol=1e-6)
  np.testing.assert_allclose(got["bk/condition_number"], stacked["bk/condition_number"].max())
  np.testing.assert_allclose(got["bk/precision_flags"], stacked["bk/precision_flags"].sum(), rtol=1e-6)
  mean = kinds.reduce_aux("mamba", {"aux_loss": jnp.asarray(stacked["aux_loss"])}, loss_reduce=jnp.mean)
  np.testing.assert_allclose(mean["aux_loss"], stacked["aux_loss"].mean(), rtol=1e-6)
  with pytest.raises(KeyError, match="'bk/new_stat' of model kind 'mamba' has no declared reduction"):
    kinds.reduce_aux("mamba", {"bk/new_stat": jnp.zeros(3)})


@pytest.mark.parametrize("kind,carry_type", [("mamba", "MambaCarry"), ("transformer", "KVCache"),
                                             ("mamba2", "Mamba2Carry")])
def test_block_carries_are_named_tuples(kind, carry_type):
  model = build_model(cfg_for(kind))
  cache = model.init_cache(2)
  assert type(cache.layers).__name__ == carry_type and hasattr(cache.layers, "_fields")


def test_bk_carry_is_a_named_tuple():
  model = build_model(cfg_for("resnet_bk", bk_mixer="green", bk_conv=True))
  layers = model.init_cache(2).layers
  assert type(layers).__name__ == "BKCarry" and layers.conv.shape == (2, 2, 3, 16)
  default = build_model(cfg_for("resnet_bk")).init_cache(2).layers
  assert type(default).__name__ == "BKCarry" and default.conv is None


def test_upgrade_config_maps_the_old_moe_key():
  old = {"model": {"kind": "resnet_bk", "use_scattering_router": True}, "data": {"tokenizer": "byte"}}
  new = upgrade_config(old)
  assert new["model"] == {"kind": "resnet_bk", "use_moe": True, **ADDED_MODEL_FIELDS}
  assert "use_scattering_router" in old["model"]  # the input is not modified
  assert upgrade_config(new) == new
  cfg = {"model": {"kind": "resnet_bk", "use_moe": False}, "data": {"tokenizer": "byte"}}
  assert config_differences(cfg, new, arch_fields=("kind", "use_moe")) == [
      "model.use_moe=False (checkpoint True)"]


def test_upgrade_config_renames_the_old_init_value():
  old = {"model": {"kind": "resnet_bk", **ADDED_MODEL_FIELDS, "bk_init": "seed"}}
  assert upgrade_config(old)["model"]["bk_init"] == "short_memory"
  assert old["model"]["bk_init"] == "seed"  # the input is not modified
  assert upgrade_config(upgrade_config(old)) == upgrade_config(old)


def test_upgrade_config_fills_the_mixer_fields_of_older_checkpoints():
  """A checkpoint written before the mixer options holds the default "diag" block: the
  filled-in fields compare equal to today's defaults, and another mixer is told apart."""
  from bk_jax.models import default_model_config, kinds
  current = {"model": default_model_config().to_dict(), "data": {"tokenizer": "byte"}}
  stored = {"model": {k: v for k, v in current["model"].items() if k not in ADDED_MODEL_FIELDS},
            "data": {"tokenizer": "byte"}}
  fields = kinds.arch_fields()
  assert "bk_mixer" in fields and "bk_key_dim" in fields
  assert config_differences(current, stored, arch_fields=fields) != []  # unfilled: differs
  assert config_differences(current, upgrade_config(stored), arch_fields=fields) == []
  current["model"]["bk_key_dim"] = 4
  assert config_differences(current, upgrade_config(stored), arch_fields=fields) == [
      "model.bk_key_dim=4 (checkpoint 0)"]


def test_old_run_dir_with_use_scattering_router_still_loads(tmp_path):
  """A real orbax checkpoint whose stored config has the old key: eval loading and the trainer's
  resume metadata both read it under the new name, and the restored MoE model runs."""
  from bk_jax.eval.loading import load_checkpoint
  from bk_jax.train.checkpoint import Checkpoints
  from bk_jax.train.state import create_train_state
  from bk_jax.train.step import make_optimizer
  from tiny_configs import tiny_config, write_pattern_corpus

  corpus = write_pattern_corpus(str(tmp_path / "pattern.txt"), n_chars=20_000)
  config = tiny_config(str(tmp_path / "run"), corpus, str(tmp_path / "cache"))
  config.model.vocab_size = 259
  config.model.use_moe = True
  model = build_model(config.model, rngs=nnx.Rngs(0))
  _, state = create_train_state(model, make_optimizer(config.train))
  stored = config.to_dict()
  stored["model"]["use_scattering_router"] = stored["model"].pop("use_moe")  # as written before
  ck = Checkpoints(config.save_dir, keep=2)
  ck.save_named("checkpoint_final", state, None, dict(config=stored, position=[0, 0]))
  ck.save(3, state, None, dict(config=stored, position=[0, 0]), force=True)
  assert ck.restore_meta(3)["config"]["model"]["use_moe"] is True
  ck.close()

  loaded = load_checkpoint(config.save_dir, "checkpoint_final", config)
  assert loaded.config.model.use_moe and "use_scattering_router" not in loaded.config.model
  t = jnp.arange(16, dtype=jnp.int32)[None] % 50
  np.testing.assert_array_equal(loaded.model(t), model(t))


def test_train_lengths_is_the_one_rule_for_train_and_eval():
  c = ml_collections.ConfigDict({"train": {"multi_length": False, "seq_len": 256,
                                           "sequence_lengths": (128, 512)}})
  assert train_lengths(c) == (256,)
  c.train.multi_length = True
  assert train_lengths(c) == (128, 512)
  assert train_lengths({"train": {"seq_len": 64}}) == (64,)  # written before multi_length existed

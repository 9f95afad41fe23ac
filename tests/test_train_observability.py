"""Validation during training, the TensorBoard layout and the self-describing results file, read
back with the real tools (tensorboard's EventAccumulator, orbax, the results JSON)."""

import glob
import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from bk_jax.train.loop import run
from tiny_configs import tiny_config, write_pattern_corpus


@pytest.fixture(scope="module")
def eval_run(tmp_path_factory):
  d = tmp_path_factory.mktemp("obs")
  corpus = write_pattern_corpus(str(d / "pattern.txt"))
  save = str(d / "myrun")
  cfg = tiny_config(save, corpus, str(d / "cache"), lengths=(32,), steps=8)
  cfg.train.lr = 3e-2  # large: the eval curve is not monotone, so "best" is a real choice
  cfg.eval.every_steps, cfg.eval.batches = 2, 2
  cfg.eval.samples, cfg.eval.sample_tokens = 2, 8
  cfg.checkpoint.keep_best = True
  cfg.model.use_birman_schwinger = True  # monitors on: bk/* curves must appear
  return cfg, run(cfg)


def _acc(save_dir):
  from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

  acc = EventAccumulator(save_dir, size_guidance={"scalars": 0, "tensors": 0})
  acc.Reload()
  return acc


def test_eval_curves_in_tensorboard_and_json(eval_run):
  cfg, res = eval_run
  evals = res["eval_history"]
  assert [e["step"] for e in evals] == [2, 4, 6, 8]
  d = res["run"]["data"]
  bytes_per_token = d["split_bytes"]["valid"] / d["split_tokens"]["valid"]
  for e in evals:
    assert math.isfinite(e["eval/loss"]) and e["eval/tokens"] == 2 * 4 * 32
    assert e["eval/perplexity"] == pytest.approx(math.exp(e["eval/loss"]), rel=1e-9)
    assert e["eval/bits_per_byte"] == pytest.approx(e["eval/loss"] / math.log(2) / bytes_per_token,
                                                    rel=1e-9)
  acc = _acc(cfg.save_dir)
  for k in ("eval/loss", "eval/perplexity", "eval/bits_per_byte"):
    ev = acc.Scalars(f"seq32/{k}")
    assert [x.step for x in ev] == [2, 4, 6, 8]
    np.testing.assert_allclose([x.value for x in ev], [e[k] for e in evals], rtol=1e-6)
  with open(os.path.join(cfg.save_dir, "long_context_results.json")) as f:
    assert json.load(f)["eval_history"] == json.loads(json.dumps(evals))


def test_best_checkpoint_is_the_min_eval_loss_step(eval_run):
  from bk_jax import data as bk_data
  from bk_jax.eval.loading import load_checkpoint
  from bk_jax.train.step import masked_cross_entropy

  cfg, res = eval_run
  evals = res["eval_history"]
  best = min(evals, key=lambda e: e["eval/loss"])
  rec = res["best_eval"]["32"]
  assert rec["step"] == best["step"] and rec["eval/loss"] == best["eval/loss"]
  assert rec["path"] == os.path.join(cfg.save_dir, "checkpoint_seq32_best")
  assert res["length_summary"]["32"]["best_eval"] == rec
  # the weights in it score the recorded loss on the same valid batches
  ck = load_checkpoint(cfg.save_dir, "checkpoint_seq32_best")
  assert ck.meta["position"] == [0, best["step"]]
  ds = bk_data.make_train_dataset(ck.config.data, 32, 4, seed=cfg.seed, split="valid", num_epochs=1)
  forward = nnx.jit(lambda m, x: m(x))
  tot = n = 0.0
  for i, b in enumerate(bk_data.make_iterator(ds, ck.config.data)):
    if i == 2:
      break
    ce = masked_cross_entropy(forward(ck.model, jnp.asarray(b["inputs"])), b["targets"], b["mask"])
    tot, n = tot + float(ce) * b["mask"].sum(), n + b["mask"].sum()
  assert tot / n == pytest.approx(best["eval/loss"], rel=1e-5)


def test_tensorboard_layout(eval_run):
  cfg, res = eval_run
  # events directly in save_dir: `tensorboard --logdir <parent>` names the run "myrun"
  assert glob.glob(os.path.join(cfg.save_dir, "events.out.tfevents.*"))
  acc = _acc(cfg.save_dir)
  tags = set(acc.Tags()["scalars"])
  # the seed's dashboard (the monitors are on in this run), then the namespaced figures
  for t in ("loss", "perplexity", "gradient_norm", "spike_count", "schatten_s1", "schatten_s2",
            "condition_number", "step_time", "train/param_norm", "perf/tokens_per_s",
            "perf/host_rss_gb", "bk/precision_flags"):
    assert f"seq32/{t}" in tags, t
  assert "learning_rate" in tags and "seq32/learning_rate" not in tags  # global, as the seed's
  assert not any(t.endswith(("mean_schatten_s1", "max_condition_number")) for t in tags)
  assert ("seq32/memory_gb" in tags) == (jax.default_backend() != "cpu")
  assert not any("moe/" in t or "aux_loss" in t for t in tags)  # no MoE: no curve
  texts = set(acc.Tags()["tensors"])
  assert {"config/text_summary", "run/text_summary", "seq32/eval/samples/text_summary"} <= texts
  cfg_text = acc.Tensors("config/text_summary")[0].tensor_proto.string_val[0].decode()
  assert json.loads(cfg_text)["eval"]["every_steps"] == 2
  samples = acc.Tensors("seq32/eval/samples/text_summary")
  assert [s.step for s in samples] == [2, 4, 6, 8] and " -> " in samples[0].tensor_proto.string_val[0].decode()
  hp = acc.PluginTagToContent("hparams")
  assert hp  # the hparams plugin's experiment / session records
  final = {t.split("/", 1)[1]: acc.Scalars(t)[-1].value for t in tags if t.startswith("hparams/")}
  s = res["length_summary"]["32"]
  assert final["eval_loss"] == pytest.approx(s["eval_loss"], rel=1e-6)
  assert final["last_logged_loss"] == pytest.approx(s["last_logged_loss"], rel=1e-6)


def test_results_describe_the_run(eval_run):
  cfg, res = eval_run
  assert res["schema_version"] == 3 and res["save_dir"] == os.path.abspath(cfg.save_dir)
  assert set(res["units"]) >= {"time", "memory", "loss"} and "1e9" in res["units"]["memory"]
  r = res["run"]
  for k in ("started", "finished", "command", "config_file", "git", "versions", "host", "cpu_count",
            "device_kind", "device_count", "data", "execution_paths"):
    assert k in r, k
  assert r["finished"] >= r["started"] and r["device_count"] == jax.device_count()
  assert r["execution_paths"]["kind"] == "resnet_bk" and r["execution_paths"]["resolvent_method"]
  assert r["versions"]["jax"] == jax.__version__
  d = r["data"]
  assert len(d["sha256"]) == 64 and d["source_bytes"] == os.path.getsize(cfg.data.path)
  assert d["split_tokens"]["train"] > 0 and len(d["cache_key"]) == 64
  assert "0x9E3779B1" in d["shuffle_seed_formula"] and d["shuffle_seed"] == cfg.seed
  # the three "final" losses, each named
  s = res["length_summary"]["32"]
  train = [h for h in res["metrics_history"] if h["seq_len"] == 32]
  assert s["last_logged_loss"] == train[-1]["loss"]
  assert s["epoch_mean_loss"] == res["results_by_length"]["32"][-1]["epoch_mean_loss"]
  assert s["epoch_mean_perplexity"] == pytest.approx(math.exp(s["epoch_mean_loss"]), rel=1e-9)
  assert s["eval_loss"] == res["eval_history"][-1]["eval/loss"]


def test_console_lines(tmp_path, capsys):
  corpus = write_pattern_corpus(str(tmp_path / "p.txt"))
  cfg = tiny_config(str(tmp_path / "run"), corpus, str(tmp_path / "cache"), lengths=(32,), steps=2)
  cfg.eval.every_steps, cfg.eval.batches, cfg.eval.samples = 2, 1, 0
  run(cfg)
  out = capsys.readouterr().out
  assert "Eval      2 | N=32 | Loss:" in out and "bits/byte" in out
  assert "Epoch mean train loss:" in out
  for col in ("Last step loss", "Epoch mean loss", "Epoch mean PPL", "Eval loss"):
    assert col in out


def test_short_valid_split_halves_the_eval_batch_or_skips_the_length(tmp_path):
  # valid split: 1,001 tokens = 3 windows of 256 (batch 4 -> 2), none of 1024 (skipped)
  corpus = write_pattern_corpus(str(tmp_path / "p.txt"), n_chars=20_000)
  cfg = tiny_config(str(tmp_path / "run"), corpus, str(tmp_path / "cache"), lengths=(256, 1024), steps=1)
  cfg.eval.every_steps, cfg.eval.batches, cfg.eval.samples = 1, 4, 0
  cfg.logging.console = False
  res = run(cfg)
  assert res["run"]["data"]["split_tokens"]["valid"] // 256 == 3
  assert [(e["seq_len"], e["eval/tokens"]) for e in res["eval_history"]] == [(256, 2 * 256)]
  assert list(res["eval_skipped"]) == ["1024"] and "valid split has" in res["eval_skipped"]["1024"]
  assert res["status"] == {"256": "trained", "1024": "trained"}

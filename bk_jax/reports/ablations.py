"""ResNet-BK ablations of scripts/ablations.py: one switch at a time, timed and optionally trained.

Every variant is the base ResNet-BK (d_model, n_layers, n_heads) with the config overrides of
`variants`; baselines (other kinds) get the layer count that matches the base's parameters
(`throughput.layers_for_params`). Speed: the trainer's jitted step per row (`throughput.bench_one`).
Quality (quality_steps > 0): that many training steps on a byte-level text corpus through
bk_jax.train.loop.run (`runs.train`) and the validation loss of the final checkpoint.
"""

from __future__ import annotations

import os

from bk_jax.data.tokenizers import ByteTokenizer
from bk_jax.reports import common, plots, runs, throughput
from bk_jax.reports.block_variants import variants

BYTE_VOCAB = ByteTokenizer.vocab_size  # the runs read bytes (data.tokenizer="byte")


def plan_rows(heads: list[int], only: list[str] | None, baselines: list[str]) -> list[tuple]:
  """The rows to run: (kind, row name, ResNet-BK overrides).

  Args:
    heads: see `variants`.
    only: variant names to keep, in this order ("none" keeps none); None or empty: all.
    baselines: other kinds appended as rows of their own (no overrides).

  Returns:
    [("resnet_bk", variant, overrides), ..., (kind, kind, {}), ...].

  Raises:
    ValueError: an unknown variant or kind (one line), before anything runs.
  """
  vs = variants(heads)
  for k in only or ():
    if k != "none" and k not in vs:
      raise ValueError(f"unknown row {k!r}: a variant is one of {', '.join(vs)} (or none)")
  runs.check_rows([k for k in baselines if k], variants=False)
  if only:
    vs = {k: vs[k] for k in only if k != "none"}
  todo = [("resnet_bk", name, ov) for name, ov in vs.items()]
  return todo + [(k, k, {}) for k in baselines if k]


def quality_config(kind: str, name: str, n_layers: int, ov: dict, *, out: str, data: str,
                   d_model: int, n_heads: int, quality_len: int, quality_batch: int,
                   quality_steps: int, lr: float, seed: int):
  """The training config of one row's quality run (save_dir out/runs/<name>, cache out/cache)."""
  return runs.make_config(kind, os.path.join(out, "runs", name), {
      "seed": seed, "data.dataset": "text", "data.path": data, "data.tokenizer": "byte",
      "data.cache_dir": os.path.join(out, "cache"), "model.d_model": d_model,
      "model.n_layers": n_layers, "model.n_heads": n_heads, "model.d_ff": 4 * d_model,
      "train.seq_len": quality_len, "train.batch_size": quality_batch,
      "train.steps_per_length": quality_steps, "train.lr": lr,
      "model.transformer.n_heads": max(1, d_model // 32),
      "model.mamba2.headdim": throughput.mamba2_headdim(d_model),
      "train.warmup_steps": max(1, quality_steps // 10), "train.log_interval": 10,
      **{f"model.{k}": v for k, v in ov.items()}})


def markdown(rows: list[dict], quality_steps: int, quality_batch: int, quality_len: int) -> str:
  """The ablations.md table; sets every row's "speed_vs_base" (base step time / the row's)."""
  base = next((r for r in rows if r["variant"] == "base"), rows[0])
  header = ["variant", "params", "step s (median)", "tokens/s", "speed vs base", "peak MB"]
  if quality_steps > 0:
    header += [f"val loss after {quality_steps} steps = "
               f"{quality_steps * quality_batch * quality_len:,} tokens (nats/char)",
               "train wall s (under load)"]
  trows = []
  for r in rows:
    r["speed_vs_base"] = base["step_s"] / r["step_s"]
    row = [r["variant"], r["n_params"], round(r["step_s"], 4), r["tokens_per_s"],
           f"{r['speed_vs_base']:.2f}x", r["peak_mb"]]
    if quality_steps > 0:
      row += [round(r["quality_val_loss"], 4), round(r["quality_train_wall_s"])]
    trows.append(row)
  return common.md_table(header, trows)


def run_ablations(todo: list[tuple], *, n: int, tokens_per_step: int, repeats: int, d_model: int,
                  n_layers: int, n_heads: int, quality_steps: int, quality_len: int,
                  quality_batch: int, lr: float, seed: int, data: str, eval_tokens: int, out: str,
                  args: dict) -> dict:
  """Times (and with quality_steps > 0 trains) every row; writes ablations.json/.md/.png.

  Args:
    todo: the rows, from `plan_rows`.
    n, tokens_per_step, repeats: the timed step (sequence length, tokens per step, timed steps).
    d_model, n_layers, n_heads: the base ResNet-BK.
    quality_steps: > 0: training steps per row on `data`, then its validation loss.
    quality_len, quality_batch, lr, seed: the quality runs' length, batch, lr and seed.
    data: path of the text corpus (byte tokenizer).
    eval_tokens: validation tokens scored per quality run.
    out: output folder.
    args: the command's arguments, recorded in ablations.json.

  Returns:
    {"rows": one dict per row (`bench_one`'s figures, variant, kind, overrides, speed_vs_base and
    the quality_* figures), "out": out}.
  """
  rows = []
  target = throughput.param_count(throughput.model_config(  # the base ResNet-BK's parameters
      "resnet_bk", d_model, n_layers, BYTE_VOCAB, n_heads=n_heads))
  for kind, name, ov in todo:
    m = throughput.model_config(kind, d_model, n_layers, BYTE_VOCAB, **{"n_heads": n_heads, **ov})
    if kind != "resnet_bk":  # baselines: layers matched to the base ResNet-BK's parameters
      m.n_layers = throughput.layers_for_params(
          throughput.model_config(kind, d_model, 1, BYTE_VOCAB), target)
    r = throughput.bench_one(m, n, tokens_per_step, repeats)
    r.update(variant=name, kind=kind, overrides=ov)
    if quality_steps > 0:
      c = quality_config(kind, name, int(m.n_layers), ov, out=out, data=data, d_model=d_model,
                         n_heads=n_heads, quality_len=quality_len, quality_batch=quality_batch,
                         quality_steps=quality_steps, lr=lr, seed=seed)
      res = runs.train(c)
      r["quality_val_loss"] = runs.validate(c, eval_tokens)["loss"]
      r["quality_train_wall_s"] = res["wall_s"]
      r["quality_tokens_seen"] = int(res["total_steps"]) * quality_batch * quality_len
    rows.append(r)
    print(f"# {name}: step {r['step_s']:.3f}s params {r['n_params']:,} "
          f"val {r.get('quality_val_loss', float('nan')):.4f}", flush=True)
  md = markdown(rows, quality_steps, quality_batch, quality_len)
  with open(os.path.join(out, "ablations.md"), "w") as f:
    f.write(md + "\n")
  common.write_json(out, "ablations.json", dict(args=args, rows=rows))
  plots.plot_bars(os.path.join(out, "ablations.png"), [r["variant"] for r in rows],
                  {"resnet_bk": [r["tokens_per_s"] for r in rows]}, ylabel="training tokens/s",
                  title=f"ResNet-BK ablations, N={n}, {tokens_per_step} tokens/step")
  print(md)
  return dict(rows=rows, out=out)

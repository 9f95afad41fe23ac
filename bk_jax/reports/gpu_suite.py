"""The GPU benchmark suite: `python scripts/benchmark.py --suite gpu [--quick]`.

Stages, each in its own child process under a wall-clock budget (a stage that runs over is
killed and recorded as timed out, with every row it finished kept, so one slow kind cannot eat
the rest of the suite):

  ops                 BK resolvent `causal_diag` forward+backward at N 8k, 131k, 1M, each method
  models:<kind>       one AdamW training step of every kind at d_model 512 (parameters matched to
                      ResNet-BK), N 8k/32k/131k, on the kind's fastest path ("auto" methods) and
                      bf16 activations; one child per kind; `models:resnet_bk:green_keyed` is the
                      keyed Green block (the chunkwise kernel) at the default block's layer count
  train               the used-by configs/seq32k.py through the library trainer (40 steps)
  stream              1M-token streaming evaluation of the checkpoint the train stage wrote

Every row records the implementation that ran (`bk_jax.models.execution_paths`, the resolved
resolvent method). Output: gpu_suite.json (device, jax/flax versions, every row), gpu_suite.md
and gpu_suite.png under the results directory. `--quick` shrinks every size so the whole suite
runs on the CPU in the test suite; the full sizes are meant for one GPU, 5.5 minutes of budgets.
"""

from __future__ import annotations

import os
import time

from bk_jax.data.tokenizers import ByteTokenizer
from bk_jax.reports.stages import REPO, Emitter, run_stages

STAGES = ("ops", "models:resnet_bk", "models:resnet_bk:green_keyed", "models:mamba",
          "models:mamba2", "models:transformer", "train", "stream")


def suite_spec(quick: bool = False, budget_scale: float = 1.0) -> dict:
  """Sizes and per-stage budgets (seconds) of the suite.

  Args:
    quick: tiny sizes for a CPU smoke run.
    budget_scale: multiplies every stage budget.

  Returns:
    A JSON-serialisable dict read by the stage functions.
  """
  if quick:
    # one size per stage: a quick run's cost is compilation, one program per cell
    spec = dict(ops_lengths=[256], ops_heads=4, model_lengths=[64], d_model=32,
                n_layers=1, tokens_per_step=128, dtype="bfloat16", remat="none", repeats=1,
                train_steps=3, baseline_steps=2, stream_tokens=2048, stream_chunk=256,
                train_overrides={"train.seq_len": 128, "train.batch_size": 2,
                                 "train.log_interval": 1, "model.d_model": 32,
                                 "model.n_layers": 1, "model.n_heads": 4, "model.d_ff": 64},
                budgets={s: 240.0 for s in STAGES})
  else:
    spec = dict(ops_lengths=[8192, 131072, 1048576], ops_heads=64,
                model_lengths=[8192, 32768, 131072], d_model=512, n_layers=4,
                tokens_per_step=262144, dtype="bfloat16", remat="none", repeats=3,
                train_steps=40, baseline_steps=20, stream_tokens=1_048_576, stream_chunk=32768,
                train_overrides={"train.log_interval": 10},
                # 330 s in all (measured on an H200 at 0.78x these budgets: ops 44 s, each
                # model stage 31-38 s, train 55 s, stream 14 s; Mamba-2 and the keyed block
                # not measured yet: a stage cut by its budget keeps the cells it finished)
                budgets={"ops": 45.0, "models:resnet_bk": 45.0,
                         "models:resnet_bk:green_keyed": 30.0, "models:mamba": 45.0,
                         "models:mamba2": 35.0, "models:transformer": 40.0, "train": 65.0,
                         "stream": 25.0})
  spec["budgets"] = {k: v * budget_scale for k, v in spec["budgets"].items()}
  spec.update(quick=quick, vocab=ByteTokenizer.vocab_size, ops_methods=["associative", "scan", "chunked"],
              train_config=os.path.join(REPO, "configs", "seq32k.py"))
  return spec


# ------------------------------------------------------------------ stages (run in the child)

def _stage_ops(spec: dict, emit, deadline: float) -> None:
  from bk_jax.reports.throughput import bench_resolvent

  for n in spec["ops_lengths"]:
    for method in spec["ops_methods"]:  # associative first: the slow sequential forms go last
      cell = dict(cell=f"causal_diag {method} N={n}", method=method, n=n)
      with emit.cell(cell, deadline) as go:
        if go:
          r = bench_resolvent(method, n, spec["ops_heads"], True, spec["repeats"],
                              max_s=max(1.0, (deadline - time.monotonic()) / 4))
          emit.row(dict(cell, **r, paths={"resolvent_method": r["method_ran"]}))


def _model_cfg(spec: dict, row: str, remat: str):
  """The model config of a row: a kind, or resnet_bk:VARIANT (`runs.parse_row`)."""
  from bk_jax.reports import runs, throughput

  kind, variant = runs.parse_row(row)
  kw = dict(dtype=spec["dtype"], remat=remat)
  target = throughput.param_count(
      throughput.model_config("resnet_bk", spec["d_model"], spec["n_layers"], spec["vocab"], **kw))
  layers = (spec["n_layers"] if kind == "resnet_bk" else
            throughput.layers_for_params(
                throughput.model_config(kind, spec["d_model"], 1, spec["vocab"], **kw), target))
  cfg = throughput.model_config(kind, spec["d_model"], layers, spec["vocab"], **kw)
  # the fastest path: every method left on "auto" (resolved per platform by the model)
  cfg.resolvent_method = cfg.mamba.scan_method = cfg.transformer.attention = "auto"
  cfg.mamba2.chunk = 0  # "auto"
  for key, value in variant.items():  # "model.bk_mixer" -> cfg.bk_mixer
    runs.set_dotted(cfg, key.removeprefix("model."), value)
  return cfg


def _stage_models(spec: dict, emit, deadline: float, kind: str) -> None:
  for n in spec["model_lengths"]:
    cell = dict(cell=f"{kind} step N={n}", kind=kind, n=n)
    with emit.cell(cell, deadline) as go:
      if go:
        emit.row({**_bench_model(spec, kind, n), **cell})  # the row's kind names its variant


def _bench_model(spec: dict, kind: str, n: int) -> dict:
  from bk_jax.models import execution_paths
  from bk_jax.reports import throughput

  remat, note = spec["remat"], None
  try:
    cfg = _model_cfg(spec, kind, remat)
    r = throughput.bench_one(cfg, n, spec["tokens_per_step"], spec["repeats"])
  except Exception as e:  # noqa: BLE001 - out of memory without remat: retry rematerialised
    if "RESOURCE_EXHAUSTED" not in str(e) or remat == "full":
      raise
    remat, note = "full", f"remat {spec['remat']!r} ran out of memory; remat 'full'"
    cfg = _model_cfg(spec, kind, remat)
    r = throughput.bench_one(cfg, n, spec["tokens_per_step"], spec["repeats"])
  return dict(r, d_model=cfg.d_model, n_layers=cfg.n_layers, remat=remat, note=note,
              paths=execution_paths(cfg, batch=r["batch"], seq_len=n))


def _train_config(spec: dict, out: str):
  from bk_jax.reports.runs import set_dotted
  from bk_jax.train.cli import load_config

  c = load_config(spec["train_config"])
  c.save_dir = os.path.join(out, "runs", "seq32k")
  c.checkpoint.resume = False
  c.checkpoint.every_steps = 1_000_000  # only the final checkpoint (the stream stage reads it)
  c.logging.tensorboard = c.logging.progress_bar = c.logging.console = False
  c.train.steps_per_length = spec["train_steps"]
  for k, v in spec["train_overrides"].items():
    set_dotted(c, k, v)
  return c


#: The previous default of configs/seq32k.py (the sequential chunked resolvent), timed in the same
#: stage as "auto" so the speed-up of the default path is a ratio measured in one run.
PREVIOUS_DEFAULT = {"model.resolvent_method": "chunked"}


def _stage_train(spec: dict, emit, deadline: float, out: str) -> None:
  from bk_jax.reports.runs import set_dotted

  c = _train_config(spec, out)
  name = os.path.basename(spec["train_config"])
  cell = dict(cell=f"train {name}", seq_len=c.train.seq_len, steps=spec["train_steps"])
  with emit.cell(cell, deadline) as go:
    if go:
      emit.row(dict(cell, **_train(c, deadline)))
  base = _train_config(spec, out)
  base.save_dir += "_previous_default"
  base.train.steps_per_length = spec["baseline_steps"]
  for k, v in PREVIOUS_DEFAULT.items():
    set_dotted(base, k, v)
  cell = dict(cell=f"train {name} previous default (chunked)", baseline=True,
              seq_len=base.train.seq_len, steps=spec["baseline_steps"])
  with emit.cell(cell, deadline) as go:
    if go:
      emit.row(dict(cell, **_train(base, deadline)))


def _train(c, deadline: float) -> dict:
  from bk_jax.models import execution_paths
  from bk_jax.reports import runs

  # stop cleanly (checkpoint saved) a little before the stage is killed
  res = runs.train(c, budget_s=max(1.0, deadline - time.monotonic() - 5.0))
  hist = res.get("metrics_history", [])
  steps = max((int(h["step"]) for h in hist), default=0)
  tokens = steps * c.train.batch_size * c.train.seq_len
  return dict(steps_done=steps, batch=c.train.batch_size, tokens=tokens, wall_s=res["wall_s"],
              tokens_per_s_wall=tokens / res["wall_s"],
              tokens_per_s=runs.steady_tokens_per_s(res, c.train.batch_size * c.train.seq_len),
              stopped_by_budget=res["stopped_by_budget"], save_dir=c.save_dir,
              paths=execution_paths(c.model, batch=c.train.batch_size, seq_len=c.train.seq_len))


def _stage_stream(spec: dict, emit, deadline: float, out: str) -> None:
  c = _train_config(spec, out)
  cell = dict(cell=f"stream {spec['stream_tokens']} tokens", tokens=spec["stream_tokens"])
  with emit.cell(cell, deadline) as go:
    if go:
      emit.row(dict(cell, **_stream(spec, c, out)))


def _stream(spec: dict, c, out: str) -> dict:
  from bk_jax.eval.streaming import run_streaming_eval
  from bk_jax.models import execution_paths

  if not os.path.isdir(c.save_dir):
    raise FileNotFoundError(f"no checkpoint in {c.save_dir}: the train stage did not finish")
  c.model.remat = "none"  # inference: nothing to rematerialise (a runtime field, not a weight)
  c.eval.eval_only = c.eval.streaming = True
  c.eval.eval_tokens, c.eval.chunk_size, c.eval.split = (spec["stream_tokens"],
                                                         spec["stream_chunk"], "train")
  t0 = time.perf_counter()
  r = run_streaming_eval(c, output=os.path.join(out, "stream_eval.json"))
  keep = ("loss", "tokens", "chunks", "tokens_per_s", "compile_seconds", "peak_memory_gb",
          "memory_kind")
  return dict({k: r.get(k) for k in keep}, wall_s=time.perf_counter() - t0,
              chunk_size=spec["stream_chunk"], paths=execution_paths(c.model))


def run_stage(stage: str, spec: dict, out: str, rows_path: str) -> None:
  """Runs one stage in this process, appending its rows to rows_path (the child's entry)."""
  deadline = time.monotonic() + spec["budgets"][stage]
  emit = Emitter(rows_path, stage)
  try:
    if stage == "ops":
      _stage_ops(spec, emit, deadline)
    elif stage.startswith("models:"):
      _stage_models(spec, emit, deadline, stage.split(":", 1)[1])
    elif stage == "train":
      _stage_train(spec, emit, deadline, out)
    elif stage == "stream":
      _stage_stream(spec, emit, deadline, out)
    else:
      raise ValueError(f"unknown stage {stage!r}; expected one of {STAGES}")
  except Exception as e:  # noqa: BLE001 - one failing cell/stage is recorded, the suite goes on
    emit.stage_error(e)


# ------------------------------------------------------------------ the parent

def run_suite(out: str, *, quick: bool = False, stages: list[str] | None = None,
              budget_scale: float = 1.0, budgets: dict | None = None, grace_s: float = 15.0,
              log=print) -> dict:
  """Runs the suite stage by stage (one child process each) and writes JSON, markdown and PNG.

  Args:
    out: results directory (created).
    quick: tiny sizes (CPU smoke test).
    stages: subset of STAGES, in order (default all).
    budget_scale: multiplies every stage budget.
    budgets: per-stage budget overrides in seconds (after scaling).
    grace_s: a child is killed at its budget plus this (start-up; cells past the budget are
      skipped by the child itself).
    log: progress printer.

  Returns:
    The JSON payload written to out/gpu_suite.json (plus "out").
  """
  import flax
  import jax

  from bk_jax.reports import common, plots

  os.makedirs(out, exist_ok=True)
  spec = suite_spec(quick, budget_scale)
  spec["budgets"].update(budgets or {})
  stages = list(stages or STAGES)
  bad = [s for s in stages if s not in STAGES]
  if bad:
    raise ValueError(f"unknown stage(s) {bad}; expected some of {STAGES}")
  t_suite = time.perf_counter()
  summary, rows = run_stages([[stage] for stage in stages], module=__name__, spec=spec, out=out,
                             grace_s=grace_s, log=log, row_line=_row_line)
  # Only now does this (parent) process touch a device: had it initialised the GPU before the
  # stages, its preallocated memory would have been missing from every child.
  payload = dict(spec=spec, stages=summary, rows=rows, total_s=time.perf_counter() - t_suite,
                 flax=flax.__version__, jax=jax.__version__,
                 device=jax.devices()[0].device_kind, checks=checks(rows))
  common.write_json(out, "gpu_suite.json", payload)
  with open(os.path.join(out, "gpu_suite.md"), "w") as f:
    f.write(markdown(payload) + "\n")
  plots.plot_gpu_suite(os.path.join(out, "gpu_suite.png"), rows,
                       title=f"{payload['device']} | jax {jax.__version__} | "
                             f"{'quick' if quick else 'full'} suite")
  log(f"# wrote {out}/gpu_suite.json, gpu_suite.md, gpu_suite.png ({payload['total_s']:.0f} s)")
  return dict(payload, out=out)


def _row_line(r: dict) -> str:
  tps = r.get("tokens_per_s")
  what = f"{tps:,.0f} tokens/s" if tps else r.get("error") or r.get("reason") or ""
  return f"{r['stage']} | {r.get('cell')} | {r['status']} | {what} | {r.get('paths', '')}"


def checks(rows: list[dict]) -> list[dict]:
  """The speed targets that this run's rows can decide (ratios within one run).

  ResNet-BK's ratios are taken against the fastest baseline of each family at each N
  (`common.BASELINE_FAMILIES`: state-space = the faster of mamba and mamba2, attention = the
  transformer), and each check names the kind it was measured against.
  """
  from bk_jax.reports.common import fastest_baseline

  tps = {(r["kind"], r["n"]): r["tokens_per_s"] for r in rows
         if r["stage"].startswith("models:") and r["status"] == "ok"}
  out = []

  def add(name, num, den, bound):
    if num in tps and den in tps:
      v = tps[num] / tps[den]
      out.append(dict(name=name, value=v, bound=bound, ok=v >= bound))

  train = {bool(r.get("baseline")): r.get("tokens_per_s") for r in rows
           if r["stage"] == "train" and r["status"] == "ok"}
  if train.get(False) and train.get(True):
    v = train[False] / train[True]
    out.append(dict(name="seq32k.py tokens/s, default (auto) / previous default (chunked) >= 50",
                    value=v, bound=50.0, ok=v >= 50.0))

  def against(family, n, bound):
    """ResNet-BK over the family's fastest kind at n (`common.BASELINE_FAMILIES`), named."""
    if (best := fastest_baseline(tps, family, n)) is not None:
      add(f"resnet_bk / {family} ({best[0]}) tokens/s at N={n} >= {bound:g}", ("resnet_bk", n),
          (best[0], n), bound)

  ns = sorted({n for _, n in tps})
  if len(ns) >= 2:
    add(f"resnet_bk tokens/s N={ns[-1]} / N={ns[0]} >= 0.9", ("resnet_bk", ns[-1]),
        ("resnet_bk", ns[0]), 0.9)
  for n in ns:
    against("state-space", n, 1.0)
    # Mamba-2 within 1.5x of the seed BK block
    add(f"mamba2 / resnet_bk tokens/s at N={n} >= 1/1.5", ("mamba2", n), ("resnet_bk", n), 1 / 1.5)
    # the keyed block's step within 1.5x the default block's
    add(f"resnet_bk:green_keyed / resnet_bk tokens/s at N={n} >= 1/1.5",
        ("resnet_bk:green_keyed", n), ("resnet_bk", n), 1 / 1.5)
  if len(ns) >= 2:
    against("attention", ns[-2], 3.0)
    against("attention", ns[-1], 10.0)
  return out


def markdown(payload: dict) -> str:
  """Stage summary, one table per stage kind, and the target checks."""
  from bk_jax.reports.common import md_table

  rows = payload["rows"]
  paths = lambda r: ", ".join(f"{k}={v}" for k, v in (r.get("paths") or {}).items())
  parts = [f"GPU suite on {payload['device']} (jax {payload['jax']}, flax {payload['flax']}), "
           f"{payload['total_s']:.0f} s in all.",
           md_table(["stage", "status", "wall s", "budget s", "rows"],
                    [[s["stage"], s["status"], s["wall_s"], s["budget_s"], s["rows"]]
                     for s in payload["stages"]])]
  ops = [r for r in rows if r["stage"] == "ops"]
  if ops:
    parts.append("Resolvent causal_diag, forward+backward, batch 1, "
                 f"{payload['spec']['ops_heads']} heads:\n\n" + md_table(
                     ["method", "N", "status", "tokens/s", "ns/element", "XLA temp MiB"],
                     [[r.get("method"), r.get("n"), r["status"], r.get("tokens_per_s"),
                       r.get("ns_per_element"),
                       None if r.get("temp_bytes") is None else r["temp_bytes"] / 2**20]
                      for r in ops]))
  models = [r for r in rows if r["stage"].startswith("models:")]
  if models:
    parts.append(f"Training step (AdamW), {payload['spec']['tokens_per_step']:,} tokens/step, "
                 f"activations {payload['spec']['dtype']}:\n\n" + md_table(
                     ["kind", "N", "status", "layers", "params", "remat", "tokens/s", "peak MB",
                      "implementation"],
                     [[r.get("kind"), r.get("n"), r["status"], r.get("n_layers"),
                       r.get("n_params"), r.get("remat"), r.get("tokens_per_s"),
                       r.get("peak_mb"), paths(r) or r.get("error")] for r in models]))
  other = [r for r in rows if r["stage"] in ("train", "stream")]
  if other:
    parts.append(md_table(
        ["stage", "what", "status", "tokens/s", "wall s", "implementation / error"],
        [[r["stage"], r.get("cell"), r["status"], r.get("tokens_per_s"), r.get("wall_s"),
          paths(r) or r.get("error")] for r in other]))
    parts.append("train: tokens/s is the median over log intervals after the first (compile); "
                 "tokens_per_s_wall in the JSON includes compilation.")
  if payload["checks"]:
    parts.append("ResNet-BK's ratios are against the fastest baseline of each family measured "
                 "here at that N, named in each target: state-space = the faster of mamba and "
                 "mamba2; attention = transformer (its 'auto' attention: cuDNN on a GPU).")
    parts.append(md_table(["target", "value", "ok"],
                          [[c["name"], c["value"], "PASS" if c["ok"] else "FAIL"]
                           for c in payload["checks"]]))
  return "\n\n".join(parts)

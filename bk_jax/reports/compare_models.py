"""Model comparison at matched parameters and equal tokens: `python scripts/compare_models.py`.

Rows (`default_rows`): the seed ResNet-BK block, the best BK block (`BEST_BK`, a variant of
`reports.block_variants.variants`), then every registered baseline kind of `BASELINES` (Mamba,
Mamba-2 once its kind is registered, the Transformer). Every row is trained on the same tokens
at about the same parameter count (`runs.match_params`: the layer count closest to the target),
then measured by the same stages (`stages.run_stages`, each under its own wall-clock budget):

  train:<row>   the library trainer (`runs.train`) for `tokens` tokens at length N; tokens/s is
                the median over log intervals after the first (compilation)
  eval:<row>    validation loss (`runs.validate`, batched at N); loss by position inside long
                held-out documents (`eval.position`); passkey retrieval by depth x length
                (`eval.passkey`)
  mqar:<row>    the same architecture at a small width trained on MQAR, then the accuracy grid
                over N x key-value pairs (`eval.mqar`)

Suites (`suite_spec`): "gpu" (~20M parameters, N 8192, bf16, on `pysource`; under 8 minutes on
one H200: the training stages run one after another, for clean tokens/s, then every eval and
MQAR stage side by side), "cpu" (~1M parameters, 16M tokens of Tiny Shakespeare at N 256, the
CPU quality target; hours, for an idle machine) and `quick` (the chosen suite's stages at tiny
sizes, in this process, for the test suite). The report (`compare_report`) names the
implementation that ran for every row.
"""

from __future__ import annotations

import copy
import math
import os
import time

from bk_jax.models.kinds import KINDS
from bk_jax.reports import common, compare_report, runs

from bk_jax.reports.stages import Emitter, run_stages

#: The best ResNet-BK block (the lowest validation loss at equal tokens in the ablations and the
#: quality anchor): a `resnet_bk:NAME` row of `reports.block_variants.variants`.
BEST_BK = "green_keyed"
#: Baseline kinds, in row order; a kind that is not registered (bk_jax.models.kinds) is skipped.
BASELINES = ("mamba", "mamba2", "transformer")
#: The experiments' corpus for the CPU suite (as the quality anchor).
TINY_SHAKESPEARE = runs.TINY_SHAKESPEARE


def default_rows(kinds=KINDS) -> list[str]:
  """The seed BK block, the best BK block, then every registered baseline of `BASELINES`."""
  return ["resnet_bk", f"resnet_bk:{BEST_BK}"] + [k for k in BASELINES if k in kinds]


def _gpu() -> dict:
  return dict(
      data=dict(dataset="pysource", path="", tokenizer="byte", data_limit=0, cache_dir=""),
      # scan_layers: one compiled layer body for the ~10 layers (compilation is part of a budget)
      model=dict(params=20_000_000, d_model=512, n_heads=16, head_dim=64, dtype="bfloat16",
                 scan_layers=True),
      # 64 steps of 8 x 8192: what the slowest row trains inside its budget with a margin. On
      # one H200 Mamba ran at 52k tokens/s (compilation ~10 s), Mamba-2 at 148k (~16 s); at 96
      # steps both were stopped by their budgets at 5.6M and 4.5M tokens
      train=dict(seq_len=8192, batch=8, tokens=64 * 8 * 8192, lr=1e-3, log_interval=8, seed=0),
      eval=dict(val_tokens=1 << 21, position=dict(split="valid", doc_tokens=32768, max_docs=16,
                                                  first_edge=512, chunk=8192, batch=4),
                passkey=dict(split="test", lengths=[2048, 8192, 16384, 32768],
                             depths=[0.0, 0.25, 0.5, 0.75, 1.0], samples=4, batch=4, chunk=8192,
                             template="python", digits=5)),
      # trained at Zoology's N 256, D 16 point; 1,500 steps at N 512, D 32 and lr 1e-3 left every
      # row at chance (the budget, not the plan, ended each: compilation shares 16 cores)
      mqar=dict(vocab=1024, d_model=128, n_layers=2, n_heads=16, train_len=256, train_kv=16,
                steps=4000, batch=64, lr=3e-3, lengths=[256, 512, 1024, 2048, 4096],
                kv_pairs=[16, 32, 64, 128, 256], samples=32, batch_eval=8, chunk=4096,
                eval_share=0.3),
      budgets=dict(train={"resnet_bk": 40.0, f"resnet_bk:{BEST_BK}": 55.0, "mamba": 115.0,
                          "mamba2": 65.0, "transformer": 45.0}, train_default=50.0,
                   eval=140.0, mqar=140.0),
      side_by_side=True, grace_s=10.0)


def _cpu() -> dict:
  return dict(
      data=dict(dataset="text", path=TINY_SHAKESPEARE, tokenizer="byte", data_limit=0,
                cache_dir=""),
      # the quality anchor's target: every row's closest layer count stays under 1M parameters
      # (the keyed block: 3 layers, 784k; at 950k it would take 4 layers, 1.02M)
      # dropout 0.1 on every row: 16.8M tokens are ~16.7 passes over the 1 MB corpus, and
      # without it every row fits the training text far better than the held-out text (the
      # keyed block: train 1.09, valid 1.563 nats/char; with 0.1: valid 1.438, with 0.2: 1.466)
      model=dict(params=900_000, d_model=128, n_heads=16, head_dim=32, dtype="float32",
                 scan_layers=False, dropout=0.1),
      train=dict(seq_len=256, batch=32, tokens=2048 * 32 * 256, lr=3e-3, log_interval=16, seed=0),
      eval=dict(val_tokens=1 << 20, position=dict(split="valid", doc_tokens=32768, max_docs=1,
                                                  first_edge=64, chunk=4096, batch=1),
                passkey=dict(split="test", lengths=[256, 1024, 4096],
                             depths=[0.0, 0.25, 0.5, 0.75, 1.0], samples=8, batch=4, chunk=1024,
                             template="prose", digits=5)),
      mqar=dict(vocab=1024, d_model=64, n_layers=2, n_heads=16, train_len=256, train_kv=16,
                steps=2000, batch=32, lr=1e-3, lengths=[256, 512, 1024, 2048, 4096],
                kv_pairs=[16, 32, 64, 128, 256], samples=16, batch_eval=4, chunk=4096,
                eval_share=0.25),
      budgets=dict(train={}, train_default=4 * 3600.0, eval=3600.0, mqar=5400.0),
      side_by_side=False, grace_s=30.0)


def _quick(spec: dict) -> dict:
  """The suite's stages at tiny sizes (the corpus stays; pysource is capped)."""
  spec = copy.deepcopy(spec)
  if spec["data"]["dataset"] == "pysource":
    spec["data"]["data_limit"] = 1 << 16
  spec["model"].update(params=30_000, d_model=32, n_heads=common.QUICK_N_HEADS, head_dim=16,
                       dtype="float32")
  spec["train"].update(seq_len=128, batch=2, tokens=3 * 2 * 128, log_interval=1)
  spec["eval"] = dict(val_tokens=512, position=dict(split="valid", doc_tokens=512, max_docs=3,
                                                    first_edge=64, chunk=128, batch=2),
                      passkey=dict(spec["eval"]["passkey"], lengths=[128, 256],
                                   depths=[0.0, 0.5, 1.0], samples=2, batch=2, chunk=128))
  spec["mqar"].update(vocab=64, d_model=32, n_layers=1, n_heads=common.QUICK_N_HEADS,
                      train_len=64, train_kv=4, steps=3, batch=4, lengths=[64, 128],
                      kv_pairs=[4, 8, 16], samples=2, batch_eval=2, chunk=128, eval_share=0.5)
  spec["budgets"] = dict(train={}, train_default=240.0, eval=240.0, mqar=240.0)
  spec["side_by_side"] = False
  return spec


SUITES = {"gpu": _gpu, "cpu": _cpu}


def suite_spec(suite: str, *, quick: bool = False, rows: list[str] | None = None, tokens: int = 0,
               budget_scale: float = 1.0, dropout: float | None = None) -> dict:
  """Sizes, rows, stages and per-stage budgets (seconds) of one suite.

  Args:
    suite: "gpu" or "cpu".
    quick: tiny sizes (the same stages; CPU, seconds).
    rows: the rows ("KIND" or "resnet_bk:VARIANT"); default `default_rows()`.
    tokens: > 0: training tokens per row instead of the suite's.
    budget_scale: multiplies every stage budget.
    dropout: every row's training `model.dropout` (the MQAR stages train without: a fresh
      synthetic stream is never seen twice); None: the suite's (cpu 0.1, gpu 0). Recorded as
      model.dropout, absent when 0 (as in runs written before the option, so their `out` still
      takes new rows at 0).

  Returns:
    A JSON-serialisable dict: data, model, train, eval, mqar, rows, groups (the stage order:
    stages of a group run side by side), budgets {stage: seconds}, side_by_side, grace_s.

  Raises:
    ValueError: an unknown suite or row.
  """
  if suite not in SUITES:
    raise ValueError(f"unknown suite {suite!r}; expected one of {', '.join(SUITES)}")
  spec = SUITES[suite]()
  if quick:
    spec = _quick(spec)
  rows = list(rows or default_rows())
  runs.check_rows(rows)  # an unknown kind or variant fails here, before any stage runs
  if tokens > 0:
    spec["train"]["tokens"] = int(tokens)
  if dropout is not None:
    if not 0.0 <= dropout < 1.0:
      raise ValueError(f"dropout must be in [0, 1), got {dropout}")
    spec["model"]["dropout"] = float(dropout)
  if not spec["model"].get("dropout"):
    spec["model"].pop("dropout", None)
  b = spec.pop("budgets")
  budgets = {f"train:{r}": b["train"].get(r, b["train_default"]) for r in rows}
  budgets.update({f"{s}:{r}": b[s] for s in ("eval", "mqar") for r in rows})
  spec.update(suite=suite, quick=quick, rows=rows, best_bk=f"resnet_bk:{BEST_BK}",
              groups=_groups(rows, spec["side_by_side"]),
              budgets={k: v * budget_scale for k, v in budgets.items()})
  return spec


def _groups(rows: list[str], side_by_side: bool) -> list[list[str]]:
  """The stage order: each training alone, then the evaluations and MQAR (side by side or not)."""
  later = [f"{s}:{r}" for s in ("eval", "mqar") for r in rows]
  return [[f"train:{r}"] for r in rows] + ([later] if side_by_side else [[s] for s in later])


# ------------------------------------------------------------------ configs of a row

def _slug(row: str) -> str:
  return row.replace(":", "_")


def train_config(spec: dict, out: str, row: str):
  """The training config of `row` (configs/base.py + the suite's sizes), layers matched."""
  kind, variant = runs.parse_row(row)
  m, t, d = spec["model"], spec["train"], spec["data"]
  steps = max(1, math.ceil(t["tokens"] / (t["batch"] * t["seq_len"])))
  c = runs.make_config(kind, os.path.join(out, "runs", _slug(row)), {
      "seed": t["seed"], **{f"data.{k}": v for k, v in d.items()},
      "model.d_model": m["d_model"], "model.n_heads": m["n_heads"], "model.d_ff": 4 * m["d_model"],
      "model.transformer.n_heads": max(1, m["d_model"] // m["head_dim"]), "model.dtype": m["dtype"],
      "model.scan_layers": m["scan_layers"], "model.dropout": m.get("dropout", 0.0),
      "train.seq_len": t["seq_len"], "train.batch_size": t["batch"],
      "train.steps_per_length": steps, "train.lr": t["lr"],
      "train.warmup_steps": max(1, steps // 10), "train.log_interval": t["log_interval"],
      "eval.every_steps": 0, **variant})
  runs.match_params(c, m["params"])
  return c


def mqar_config(spec: dict, out: str, row: str):
  """The MQAR training config of `row`: its block at the MQAR width and depth.

  Every row has the same d_model and `mqar.n_layers` layers, unmatched: Zoology's protocol,
  recall at equal model dimension. Matching parameters instead gave the Transformer and the
  keyed block one layer at this width, and one layer cannot form the two-step circuit (find
  the earlier key, read the token after it) that recall needs."""
  kind, variant = runs.parse_row(row)
  q = spec["mqar"]
  overrides = {"seed": spec["train"]["seed"], "data.dataset": "synthetic",
               "data.synthetic.task": "mqar", "data.synthetic.vocab_size": q["vocab"],
               "data.synthetic.num_kv_pairs": q["train_kv"], "model.d_model": q["d_model"],
               "model.n_layers": q["n_layers"], "model.n_heads": q["n_heads"],
               "model.d_ff": 4 * q["d_model"],
               "model.transformer.n_heads": max(1, q["d_model"] // 32),
               "train.seq_len": q["train_len"], "train.batch_size": q["batch"],
               "train.steps_per_length": q["steps"], "train.lr": q["lr"],
               "train.warmup_steps": max(1, q["steps"] // 10),
               # the trainer's budget check waits for the host sync of a log step: keep them close
               "train.log_interval": max(1, min(10, q["steps"] // 10)), "eval.every_steps": 0}
  return runs.make_config(kind, os.path.join(out, "runs", f"mqar_{_slug(row)}"),
                          {**overrides, **variant})


def stream_paths(cfg, window: int) -> dict:
  """The implementation of the streaming evaluations: the kind's own, and for the Transformer
  its streaming attention (always blockwise over the KV ring) and the window."""
  from bk_jax.models import execution_paths

  extra = ({"attention": f"blockwise, KV window {window}"} if cfg.kind == "transformer" else {})
  return dict(execution_paths(cfg), **extra)


# ------------------------------------------------------------------ stages (run in the child)

def _stage_train(spec: dict, emit: Emitter, deadline: float, out: str, row: str) -> None:
  from bk_jax.models import execution_paths

  c = train_config(spec, out, row)
  n, b = int(c.train.seq_len), int(c.train.batch_size)
  cell = dict(cell="train", row=row, kind=c.model.kind)
  with emit.cell(cell, deadline) as go:
    if go:
      # stop cleanly (checkpoint saved) a little before the stage is killed
      res = runs.train(c, budget_s=max(1.0, deadline - time.monotonic() - 5.0),
                       resume=spec["resume"])
      fig = runs.length_figures(res, n)
      steps = int(res["total_steps"])
      emit.row(dict(cell, params=int(res["n_params"]), n_layers=int(c.model.n_layers),
                    planned_steps=int(c.train.steps_per_length), steps=steps, batch=b, seq_len=n,
                    tokens=steps * b * n, wall_s=res["wall_s"], start_step=res["start_step"],
                    tokens_per_s=runs.steady_tokens_per_s(res, b * n),
                    tokens_per_s_wall=res["steps_run"] * b * n / res["wall_s"],
                    stopped_by_budget=res["stopped_by_budget"], run_status=fig["status"],
                    final_train_loss=fig["final_train_loss"], curve_steps=fig["curve_steps"],
                    curve_loss=fig["curve_loss"],
                    paths=execution_paths(c.model, batch=b, seq_len=n)))


def _stage_eval(spec: dict, emit: Emitter, deadline: float, out: str, row: str) -> None:
  from bk_jax.data import load_corpus
  from bk_jax.data.documents import long_documents
  from bk_jax.eval.loading import load_checkpoint
  from bk_jax.eval.passkey import passkey_table
  from bk_jax.eval.position import doubling_edges, position_table

  c = train_config(spec, out, row)
  c.model.remat = "none"  # inference: nothing to rematerialise (a runtime field)
  e = spec["eval"]
  base = dict(row=row, kind=c.model.kind)
  with emit.cell(dict(base, cell="val"), deadline) as go:
    if go:
      v = runs.validate(c, e["val_tokens"], split="valid")
      emit.row(dict(base, cell="val", val_loss=v["loss"], val_tokens=v["tokens"]))
  loaded = {}  # KV window -> the restored model (every other kind: one model)

  def model(window: int):
    """The checkpoint with a Transformer KV window of `window` (a runtime field): each
    evaluation attends to its whole prompt or document, and no further."""
    key = window if c.model.kind == "transformer" else 0
    if key not in loaded:
      c.model.transformer.cache_window = window
      loaded[key] = load_checkpoint(c.save_dir, None, c).model
    return loaded[key]

  p = e["position"]
  with emit.cell(dict(base, cell="position"), deadline) as go:
    if go:
      docs = long_documents(c.data, p["split"], p["doc_tokens"] + 1, p["max_docs"])
      tab = position_table(model(p["doc_tokens"]), docs, doc_tokens=p["doc_tokens"],
                           edges=doubling_edges(p["first_edge"], p["doc_tokens"]),
                           chunk_size=p["chunk"], batch_size=p["batch"])
      emit.row(dict(base, cell="position", split=p["split"],
                    stream_paths=stream_paths(c.model, p["doc_tokens"]), **tab))
  k = e["passkey"]
  with emit.cell(dict(base, cell="passkey"), deadline) as go:
    if go:
      corpus = load_corpus(c.data)
      window = max(k["lengths"])
      rows = passkey_table(model(window), corpus.tokenizer, corpus.splits[k["split"]],
                           lengths=k["lengths"], depths=k["depths"], samples=k["samples"],
                           template=k["template"], digits=k["digits"], chunk_size=k["chunk"],
                           batch_size=k["batch"], seed=spec["train"]["seed"])
      emit.row(dict(base, cell="passkey", filler_split=k["split"],
                    stream_paths=stream_paths(c.model, window), cells=rows))


def _stage_mqar(spec: dict, emit: Emitter, deadline: float, out: str, row: str) -> None:
  from bk_jax.eval.loading import load_checkpoint
  from bk_jax.eval.mqar import mqar_table

  q = spec["mqar"]
  c = mqar_config(spec, out, row)
  base = dict(row=row, kind=c.model.kind)
  with emit.cell(dict(base, cell="mqar_train"), deadline) as go:
    if go:
      # the evaluation keeps its share of the stage budget; training stops cleanly before it
      budget = max(1.0, (deadline - time.monotonic()) * (1.0 - q["eval_share"]))
      res = runs.train(c, budget_s=budget, resume=spec["resume"])
      fig = runs.length_figures(res, int(c.train.seq_len))
      emit.row(dict(base, cell="mqar_train", params=int(res["n_params"]),
                    n_layers=int(c.model.n_layers), steps=int(res["total_steps"]),
                    planned_steps=q["steps"], wall_s=res["wall_s"], start_step=res["start_step"],
                    stopped_by_budget=res["stopped_by_budget"],
                    final_train_loss=fig["final_train_loss"]))
  with emit.cell(dict(base, cell="mqar"), deadline) as go:
    if go:
      ck = load_checkpoint(c.save_dir, None, c)
      rows = mqar_table(ck.model, c.data.synthetic, lengths=q["lengths"], kv_pairs=q["kv_pairs"],
                        samples=q["samples"], batch_size=q["batch_eval"], chunk_size=q["chunk"])
      emit.row(dict(base, cell="mqar", train_len=q["train_len"], train_kv=q["train_kv"],
                    cells=rows))


def run_stage(stage: str, spec: dict, out: str, rows_path: str) -> None:
  """Runs one stage ("train:<row>", "eval:<row>" or "mqar:<row>") in this process, appending
  its rows to rows_path (the child's entry point, `stages.run_stages`)."""
  deadline = time.monotonic() + spec["budgets"][stage]
  emit = Emitter(rows_path, stage)
  what, _, row = stage.partition(":")
  fn = {"train": _stage_train, "eval": _stage_eval, "mqar": _stage_mqar}.get(what)
  try:
    if fn is None:
      raise ValueError(f"unknown stage {stage!r}; expected train:, eval: or mqar:<row>")
    fn(spec, emit, deadline, out, row)
  except Exception as e:  # noqa: BLE001 - one failing stage is recorded, the suite goes on
    emit.stage_error(e)


# ------------------------------------------------------------------ the parent

def corpus_report(spec: dict) -> dict:
  """Builds the token cache of the suite's corpus (before any stage is timed) and describes it:
  its identity (`bk_jax.data.identity`) and the document lengths per split."""
  from bk_jax.data import default_data_config
  from bk_jax.data.documents import document_lengths, length_summary
  from bk_jax.data.identity import corpus_identity

  cfg = default_data_config()
  cfg.update(spec["data"])
  return dict(identity=corpus_identity(cfg),
              documents={s: length_summary(a) for s, a in document_lengths(cfg).items()})


#: The stage kinds, in run order (`--stages` picks some of them).
STAGE_KINDS = ("train", "eval", "mqar")


#: the spec's entries that say what a call runs; the others are the sizes every row shares
_CALL_KEYS = ("rows", "groups", "budgets", "resume")


def _load_earlier(out: str) -> dict | None:
  """The comparison.json of an earlier run in `out`, or None."""
  import json

  path = os.path.join(out, "comparison.json")
  if not os.path.isfile(path):
    return None
  with open(path) as f:
    return json.load(f)


def _earlier(out: str, prev: dict | None, spec: dict,
             kinds: list[str]) -> tuple[dict, list[dict], list[dict]]:
  """The earlier run in `out` (`prev`, its comparison.json, or None) with this call's rows added:
  the spec of every row (the earlier run's, then this call's new ones; this call's budgets for
  its stages), and the earlier stage summaries and rows that this call does not run again (other
  stage kinds, or other rows).

  Raises:
    ValueError: no comparison.json in `out`, one at other sizes (suite, --quick, --tokens,
      --dropout), or
      eval without train of a row the earlier run did not train.
  """
  path = os.path.join(out, "comparison.json")
  if prev is None:
    raise ValueError(f"--stages {','.join(kinds)} evaluates the checkpoints of an earlier run, "
                     f"but {path} does not exist")
  # the corpus's path may differ between checkouts: its identity is checked in run_compare
  sizes = lambda sp: {k: (dict(v, path=None) if k == "data" else v) for k, v in sp.items()
                      if k not in _CALL_KEYS}
  if sizes(prev["spec"]) != sizes(spec):
    differ = sorted(k for k in sizes(spec) if prev["spec"].get(k) != spec[k])
    raise ValueError(f"{path} holds a run of suite {prev['spec']['suite']} at other sizes "
                     f"({', '.join(differ)}); add rows with the same --suite, --quick, --tokens "
                     f"and --dropout, or give another --out")
  new = [r for r in spec["rows"] if r not in prev["spec"]["rows"]]
  if new and "eval" in kinds and "train" not in kinds:
    raise ValueError(f"--stages {','.join(kinds)} evaluates the checkpoints of an earlier run, "
                     f"and {path} has none of {', '.join(new)}")
  rows = prev["spec"]["rows"] + new
  rerun = lambda name: (name.partition(":")[0] in kinds and name.partition(":")[2] in spec["rows"])
  merged = dict(prev["spec"], rows=rows, groups=_groups(rows, spec["side_by_side"]),
                budgets=dict(prev["spec"]["budgets"], **spec["budgets"]))
  return (merged, [s for s in prev["stages"] if not rerun(s["stage"])],
          [r for r in prev["rows"] if not rerun(r["stage"])])


def run_compare(out: str, *, suite: str = "gpu", quick: bool = False, rows: list[str] | None = None,
                tokens: int = 0, budget_scale: float = 1.0, stages: list[str] | None = None,
                dropout: float | None = None, resume: bool = False, args: dict | None = None,
                log=print) -> dict:
  """Runs the suite and writes comparison.json/.md/.png, passkey.png and mqar.png under `out`.

  Args:
    out: results directory (created).
    suite, quick, tokens, budget_scale, dropout: see `suite_spec`.
    rows: see `suite_spec`; None in an earlier run's `out`: that run's rows.
    stages: stage kinds to run (`STAGE_KINDS`; default all). In a new `out` they run alone
      (e.g. train and eval without MQAR, or MQAR only), except eval without train, which needs
      an earlier run's checkpoints. In an earlier run's `out` (same suite, --quick, --tokens
      and --dropout) this call's stages of this call's rows replace that run's, and its new
      rows join it: e.g. rerun the MQAR stages with more time without training again, or add a
      row to a comparison trained one row at a time. The report covers every row.
    resume: the stages that train (train, mqar) continue from their run's latest checkpoint in
      `out` (a stage stopped by its budget or killed with the command: the periodic
      checkpoints, every 500 steps) instead of starting over; the trainer refuses a checkpoint
      of another model. A resumed row's train s and wall-clock tokens/s count this call's steps.
    args: the command's arguments, recorded in the JSON.
    log: progress printer.

  Returns:
    The JSON payload (plus "out").

  Raises:
    ValueError: an unknown stage kind, an earlier run in `out` at other sizes, or eval without
      train of a row no earlier run in `out` trained.
  """
  kinds = list(stages or STAGE_KINDS)
  bad = [k for k in kinds if k not in STAGE_KINDS]
  if bad:
    raise ValueError(f"unknown stage(s) {', '.join(bad)}; expected some of "
                     f"{', '.join(STAGE_KINDS)}")
  earlier = _load_earlier(out)
  if rows is None and earlier is not None:  # no --rows: the earlier run's
    rows = earlier["spec"]["rows"]
  spec = suite_spec(suite, quick=quick, rows=rows, tokens=tokens, budget_scale=budget_scale,
                    dropout=dropout)
  spec["resume"] = bool(resume)
  report_spec, kept_stages, kept_rows = spec, [], []
  # eval reads the train stage's checkpoints, MQAR trains its own model: only eval without
  # train needs an earlier run; any other call runs alone in a new `out`, and in an earlier
  # run's `out` (at the same sizes) adds its rows and stages to that run's others
  if earlier is not None or ("eval" in kinds and "train" not in kinds):
    report_spec, kept_stages, kept_rows = _earlier(out, earlier, spec, kinds)
  os.makedirs(out, exist_ok=True)
  t0 = time.perf_counter()
  corpus = corpus_report(spec)
  if earlier is not None and earlier["corpus"]["identity"]["sha256"] != corpus["identity"]["sha256"]:
    raise ValueError(f"{os.path.join(out, 'comparison.json')} holds a run on another corpus "
                     f"(sha256 {earlier['corpus']['identity']['sha256'][:16]}, here "
                     f"{corpus['identity']['sha256'][:16]}); give another --out")
  log(f"# corpus {spec['data']['dataset']}: {corpus['identity']['source_files']:,} files, "
      f"{corpus['identity']['source_bytes']:,} bytes, sha256 {corpus['identity']['sha256'][:16]}")
  env = {"XLA_PYTHON_CLIENT_PREALLOCATE": "false"} if spec["side_by_side"] else None
  chosen = ([s for s in g if s.partition(":")[0] in kinds] for g in spec["groups"])
  groups = [g for g in chosen if g]
  summary, stage_rows = run_stages(groups, module=__name__, spec=spec, out=out,
                                   grace_s=spec["grace_s"], in_process=quick, env_extra=env,
                                   log=log, row_line=compare_report.row_line)
  order = [s for g in report_spec["groups"] for s in g]
  summary = sorted(kept_stages + summary, key=lambda s: order.index(s["stage"]))
  payload, files = compare_report.write(out, spec=report_spec, corpus=corpus, stages=summary,
                                        rows=kept_rows + stage_rows,
                                        total_s=time.perf_counter() - t0, args=args or {})
  log(f"# wrote {', '.join(os.path.join(out, f) for f in files)} ({payload['total_s']:.0f} s)")
  return dict(payload, out=out)

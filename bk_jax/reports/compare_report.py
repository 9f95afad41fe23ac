"""The report of the model comparison (`compare_models`): one record per row, the markdown tables,
the figures and the targets the run can decide.

Files under the results directory: comparison.json (provenance-stamped: command, machine, spec,
corpus identity and document lengths, every stage and row), comparison.md, comparison.png
(training loss against tokens, loss by position in long documents, training tokens/s),
passkey.png (accuracy by depth x length per row) and mqar.png (accuracy by N x key-value pairs).
"""

from __future__ import annotations

import math
import os

from bk_jax.eval import mqar, passkey, position
from bk_jax.reports import common, plots


def row_line(r: dict) -> str:
  """One line of the suite log for a stage row."""
  what = r.get("error") or r.get("reason") or ""
  for key, fmt in (("val_loss", "val loss {:.4f}"), ("loss", "loss {:.4f}"),
                   ("tokens_per_s", "{:,.0f} tokens/s")):
    if r.get(key) is not None and not what:
      what = fmt.format(r[key])
  return f"{r['stage']} | {r.get('cell')} | {r['status']} | {what}"


def models(spec: dict, rows: list[dict]) -> list[dict]:
  """One record per comparison row: {row, kind, <cell>: the stage row of that cell}."""
  out = []
  for name in spec["rows"]:
    m = dict(row=name, kind=name.partition(":")[0])
    for r in rows:
      if r.get("row") == name and r.get("cell"):
        m[r["cell"]] = r
    out.append(m)
  return out


def _ok(m: dict, cell: str) -> dict | None:
  r = m.get(cell)
  return r if r and r.get("status") == "ok" else None


def _mean(xs) -> float | None:
  xs = [x for x in xs if x is not None]
  return sum(xs) / len(xs) if xs else None


def passkey_within(m: dict, n: int) -> float | None:
  """Mean passkey accuracy over the cells of prompts no longer than `n` (the training length)."""
  p = _ok(m, "passkey")
  return _mean([c["accuracy"] for c in p["cells"] if c["length"] <= n]) if p else None


def mqar_mean(m: dict) -> float | None:
  q = _ok(m, "mqar")
  return _mean([c["accuracy"] for c in q["cells"]]) if q else None


def checks(spec: dict, ms: list[dict]) -> list[dict]:
  """The targets this run's rows can decide: equal tokens, the best BK block's validation loss,
  speed, passkey and MQAR against the baselines, and a named implementation per row."""
  by = {m["row"]: m for m in ms}
  best, n = by.get(spec["best_bk"]), spec["train"]["seq_len"]
  out = []

  def add(name, value, bound, ok):
    out.append(dict(name=name, value=value, bound=bound, ok=bool(ok)))

  trained = [_ok(m, "train") for m in ms]
  if all(trained):
    tokens = {t["tokens"] for t in trained}
    add("every row trained on the same tokens (none stopped by its budget)", min(tokens),
        spec["train"]["tokens"], len(tokens) == 1 and not any(t["stopped_by_budget"]
                                                             for t in trained))
  add("every row names the implementation that ran", sum(bool(_ok(m, "train") and
                                                         m["train"].get("paths")) for m in ms),
      len(ms), all(_ok(m, "train") and m["train"].get("paths") for m in ms))
  if best is None:
    return out
  val = lambda m: (_ok(m, "val") or {}).get("val_loss")
  rivals = ["mamba2", "transformer"] + (["mamba"] if spec["suite"] == "cpu" else [])
  for other in (r for r in rivals if r in by):
    if val(best) is not None and val(by[other]) is not None:
      add(f"val loss {best['row']} <= {other}", val(best), val(by[other]),
          val(best) <= val(by[other]))
  if spec["suite"] == "cpu" and val(best) is not None and _ok(best, "train"):
    add(f"{best['row']} val loss <= 1.45 nats/char", val(best), 1.45, val(best) <= 1.45)
    add(f"{best['row']} parameters <= 1M", best["train"]["params"], 1_000_000,
        best["train"]["params"] <= 1_000_000)
  if spec["suite"] == "gpu" and "transformer" in by:
    a, b = _ok(best, "train"), _ok(by["transformer"], "train")
    if a and b and a.get("tokens_per_s") and b.get("tokens_per_s"):
      v = a["tokens_per_s"] / b["tokens_per_s"]
      add(f"tokens/s {best['row']} / transformer at N={n} >= 2", v, 2.0, v >= 2.0)
  p = _ok(best, "passkey")
  if p:
    within = [c["accuracy"] for c in p["cells"] if c["length"] <= n]
    if within:
      add(f"{best['row']} passkey >= 99% at every depth, prompts <= N={n}", min(within), 0.99,
          min(within) >= 0.99)
  if "mamba2" in by and mqar_mean(best) is not None and mqar_mean(by["mamba2"]) is not None:
    add(f"MQAR mean accuracy {best['row']} >= mamba2", mqar_mean(best), mqar_mean(by["mamba2"]),
        mqar_mean(best) >= mqar_mean(by["mamba2"]))
  return out


def _paths(p: dict | None) -> str:
  return ", ".join(f"{k}={v}" for k, v in (p or {}).items())


def _pct(x) -> str | None:
  return None if x is None else f"{100 * x:.1f}"


def markdown(payload: dict) -> str:
  """Every table of comparison.md."""
  spec, ms = payload["spec"], payload["models"]
  t, ident = spec["train"], payload["corpus"]["identity"]
  md = common.md_table
  n = t["seq_len"]
  parts = [
      f"Model comparison, suite {spec['suite']}{' (quick)' if spec['quick'] else ''}, on "
      f"{payload['machine']['device_kind']} ({payload['machine']['backend']}), jax "
      f"{payload['machine']['jax']}, {payload['total_s']:.0f} s in all. Corpus "
      f"{ident['dataset']} ({ident['source_files']:,} files, {ident['source_bytes']:,} bytes, "
      f"sha256 {ident['sha256'][:16]}), tokenizer {ident['tokenizer']}; every row trained on "
      f"{t['tokens']:,} tokens at N={n} (batch {t['batch']}), ~{spec['model']['params']:,} "
      f"parameters, activations {spec['model']['dtype']}"
      f"{', dropout %g' % spec['model']['dropout'] if spec['model'].get('dropout') else ''}.",
      md(["stage", "status", "wall s", "budget s", "rows"],
         [[s["stage"], s["status"], s["wall_s"], s["budget_s"], s["rows"]]
          for s in payload["stages"]])]
  main = []
  for m in ms:
    tr, v = _ok(m, "train") or {}, _ok(m, "val") or {}
    main.append([m["row"], tr.get("params"), tr.get("n_layers"), tr.get("tokens"),
                 tr.get("tokens_per_s"), tr.get("wall_s"), v.get("val_loss"),
                 None if v.get("val_loss") is None else math.exp(v["val_loss"]),
                 _pct(passkey_within(m, n)), _pct(mqar_mean(m))])
  parts.append(md(["model", "params", "layers", "tokens", "tokens/s", "train s",
                   "val loss (nats/token)", "val ppl", f"passkey <= {n} (%)", "MQAR mean (%)"],
                  main))
  resumed = [f"{m['row']} from step {tr['start_step']:,}" for m in ms
             for tr in [_ok(m, "train") or {}] if tr.get("start_step")]
  if resumed:
    parts.append(f"Resumed from a checkpoint (--resume): {'; '.join(resumed)}; train s counts "
                 f"the resumed part.")
  parts.append("Implementation that ran:\n\n" + md(
      ["model", "training", "streaming evaluation"],
      [[m["row"], _paths((_ok(m, "train") or {}).get("paths")),
        _paths((_ok(m, "position") or _ok(m, "passkey") or {}).get("stream_paths"))] for m in ms]))
  pos = {m["row"]: _ok(m, "position") for m in ms if _ok(m, "position")}
  if pos:
    p0 = next(iter(pos.values()))
    parts.append(f"Loss (nats/token) by position inside {p0['documents']} held-out {p0['split']} "
                 f"documents of >= {p0['doc_tokens']:,} tokens (each cut to {p0['doc_tokens']:,}; "
                 f"trained at N={n}):\n\n" + position.format_table(pos))
  pk = {m["row"]: _ok(m, "passkey") for m in ms if _ok(m, "passkey")}
  if pk:
    p0 = next(iter(pk.values()))
    parts.append(f"Passkey retrieval, whole number right (%), {p0['cells'][0]['samples']} prompts "
                 f"per cell, filler from the {p0['filler_split']} split:\n\n" +
                 passkey.format_table({k: v["cells"] for k, v in pk.items()}))
  mq = {m["row"]: _ok(m, "mqar") for m in ms if _ok(m, "mqar")}
  if mq:
    q = spec["mqar"]
    # every row at the same width and depth (not matched parameters): its own size and steps
    trained = [[m["row"], t.get("params"), t.get("steps"),
                {True: "yes", False: "no"}.get(t.get("stopped_by_budget")),
                t.get("final_train_loss")]
               for m in ms if m["row"] in mq for t in [_ok(m, "mqar_train") or {}]]
    parts.append(f"MQAR, every row at d_model {q['d_model']} and {q['n_layers']} layers, trained "
                 f"at N={q['train_len']} with D={q['train_kv']} pairs, vocabulary {q['vocab']} "
                 f"(chance: 1 in {q['vocab'] - q['vocab'] // 2} values), at most {q['steps']} "
                 f"steps:\n\n" + md(["model", "params", "steps", "stopped by budget",
                                     "final train loss"], trained))
    parts.append("MQAR accuracy (%) by length N and key-value pairs D ('-': N < 4 D):\n\n" +
                 mqar.format_table({k: v["cells"] for k, v in mq.items()}))
  docs = payload["corpus"]["documents"]
  parts.append("Document lengths of the corpus (tokens):\n\n" + md(
      ["split", "documents", "tokens", "median", "p90", "max", "documents >= 32k"],
      [[s, d["documents"], d["tokens"], d.get("p50"), d.get("p90"), d.get("max"),
        d.get("at_least", {}).get(32768, {}).get("documents")] for s, d in docs.items()]))
  failed = [[m["row"], c, m[c].get("status"), m[c].get("error") or m[c].get("reason")]
            for m in ms for c in ("train", "val", "position", "passkey", "mqar_train", "mqar")
            if c in m and m[c].get("status") != "ok"]
  if failed:
    parts.append("Cells without a result:\n\n" + md(["model", "cell", "status", "why"], failed))
  if payload["checks"]:
    parts.append(md(["target", "value", "bound", "ok"],
                    [[c["name"], c["value"], c["bound"], "PASS" if c["ok"] else "FAIL"]
                     for c in payload["checks"]]))
  return "\n\n".join(parts)


def _style(ms: list[dict]) -> dict[str, tuple[str, str]]:
  """(colour, line style) per row: the kind's colour; a second row of one kind is dashed."""
  seen, out = {}, {}
  for m in ms:
    k = m["kind"]
    out[m["row"]] = (plots.COLORS.get(k, "black"), ("-", "--", ":", "-.")[seen.get(k, 0) % 4])
    seen[k] = seen.get(k, 0) + 1
  return out


def figure(path: str, payload: dict) -> str:
  """Training loss against tokens, loss by position (the training length marked), tokens/s."""
  plt = plots.pyplot()
  ms, n = payload["models"], payload["spec"]["train"]["seq_len"]
  style = _style(ms)
  fig, ax = plt.subplots(1, 3, figsize=(15, 4))
  names, speeds = [], []
  for m in ms:
    c, ls = style[m["row"]]
    tr, p = _ok(m, "train"), _ok(m, "position")
    if tr and tr["curve_steps"]:
      per = tr["batch"] * tr["seq_len"]
      ax[0].plot([s * per for s in tr["curve_steps"]], tr["curve_loss"], ls, color=c,
                 label=m["row"])
    if p:
      mid = [math.sqrt(max(b["start"], 1) * (b["end"] or p["doc_tokens"])) for b in p["buckets"]]
      ax[1].plot(mid, [b["loss"] for b in p["buckets"]], ls, marker="o", color=c, label=m["row"])
    names.append(m["row"])
    speeds.append((tr or {}).get("tokens_per_s") or 0.0)
  ax[1].axvline(n, color="gray", lw=1, ls=":", label=f"training length {n}")
  ax[1].set_xscale("log", base=2)
  ax[2].bar(range(len(names)), speeds, color=[style[r][0] for r in names])
  ax[2].set_xticks(range(len(names)), names, rotation=20, fontsize=7)
  for a, (xl, yl, title) in zip(ax, [
      ("training tokens", "training loss (nats/token)", "training"),
      ("position in the document (tokens)", "loss (nats/token)", "loss by position"),
      ("", "training tokens/s (median)", "speed")]):
    a.set_xlabel(xl)
    a.set_ylabel(yl)
    a.set_title(title, fontsize=9)
    a.grid(True, alpha=0.3)
  for a in ax[:2]:
    if a.get_legend_handles_labels()[0]:
      a.legend(fontsize=7)
  fig.suptitle(f"{payload['machine']['device_kind']} | suite {payload['spec']['suite']}"
               f"{' (quick)' if payload['spec']['quick'] else ''}", fontsize=9)
  return plots.save_figure(fig, path)


def write(out: str, *, spec: dict, corpus: dict, stages: list[dict], rows: list[dict],
          total_s: float, args: dict) -> tuple[dict, list[str]]:
  """Writes every file of the report; returns the JSON payload and the names of the files (a
  heat map only where some row has its cells)."""
  from bk_jax.eval.plots import plot_heatmaps
  from bk_jax.runtime.provenance import machine

  ms = models(spec, rows)
  payload = dict(spec=spec, args=args, corpus=corpus, stages=stages, models=ms, rows=rows,
                 total_s=total_s, machine=machine())
  payload["checks"] = checks(spec, ms)
  common.write_json(out, "comparison.json", payload)
  with open(os.path.join(out, "comparison.md"), "w") as f:
    f.write(markdown(payload) + "\n")
  figure(os.path.join(out, "comparison.png"), payload)
  files = ["comparison.json", "comparison.md", "comparison.png"]
  for cell, fname, x, y, xl, yl in (("passkey", "passkey.png", "length", "depth", "prompt length",
                                     "needle depth"),
                                    ("mqar", "mqar.png", "length", "kv_pairs", "sequence length N",
                                     "key-value pairs D")):
    panels = {m["row"]: _ok(m, cell)["cells"] for m in ms if _ok(m, cell)}
    if panels:
      plot_heatmaps(os.path.join(out, fname), panels, x=x, y=y, xlabel=xl, ylabel=yl,
                    title=f"{cell}: accuracy (%)")
      files.append(fname)
  return payload, files

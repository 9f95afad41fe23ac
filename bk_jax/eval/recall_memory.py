"""What a trained recurrent model keeps of an induction-heads answer until it is asked for.

In an induction-heads sequence (bk_jax.data.synthetic) the trigger first occurs at position p,
the answer follows at p + 1 and the trigger comes again at the last position n - 1, where the
model must name the answer. A recurrent layer holds the answer in its state from the write at
p + 1 (whose key, through the conv, still sees the trigger) to the read at n - 1:

  * "ward_selective" ResNet-BK (DESIGN §2.12): S_j = a_j S_{j-1} + w_j k_j x_j^T per head (per
    head and key dimension with bk_decay or bk_step "key");
  * Mamba: h_j = exp(dt_j A) h_{j-1} + dt_j B_j x_j per channel c and state s, a_j = exp(dt_j A).

Each unit u of the state (a head, a head's key dimension, a Mamba (channel, state) pair) keeps of
the write at p + 1 the retention

    R_u = prod_{j=p+2}^{n-1} a_{j,u}

A layer's carrier is the unit that holds most of the answer at the read, chosen by the median
over the samples at each length: the largest share w_{p+1} R_u for the selective block (with the
complement write S is a convex combination of its writes, so the share is the answer's weight in
what the head reads), the largest contribution |C_{n-1,s} R_u dt_{p+1,c} B_{p+1,s} x_{p+1,c}| to
the read for Mamba. The carrier's retention against the test length separates two failures: a
retention that falls with the length means the layer forgot the answer; accuracy that falls while
the retention holds means the answer is kept but drowned by the other writes. Its decay rate
-log a_j by position (1 / rate: its memory in tokens) says where it forgets. (The write at p + 1
is the answer's own token; the conv also hands the answer to the next three positions' writes,
which this probe does not follow.)

`memory_table` measures it on the induction test sequences that `extrapolation_table` scores (the
same samples), with one full forward per batch (not streamed: the full forward equals the
streamed one).

`scale_rates` is the intervention that asks whether forgetting is the cause: it multiplies the
decay rate of chosen units (a selective head's lambda = A_h + s_h lam_bk, or a Mamba channel's
A_c) by a factor before the probe runs, so their log a_j, and with it their memory, scale by it
exactly, the steps and everything else unchanged. If the model answers at lengths it failed at
once a layer forgets 10x slower, its forgetting set its reach.
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from bk_jax.eval.loading import EvalError
from bk_jax.models.bk_mixers import CONV_WIDTH, inv_softplus, selective_decay

LOG10 = math.log(10.0)
FILLER_MODES = ("drop", "skip")


class SelectiveDecays(NamedTuple):
  """One "ward_selective" layer over a sequence: S_j = a_j S_{j-1} + w_j k_j x_j^T."""
  log_a: jax.Array  # (B, N, H), or (B, N, H, n) with a rate or a step per key dimension
  write: jax.Array  # w_j, the shape of log_a
  delta: jax.Array  # (B, N, H) the steps Delta_j, or (B, N, H, n) with a step per key dimension


class MambaDecays(NamedTuple):
  """One Mamba layer over a sequence: h_j = exp(dt_j A) h_{j-1} + dt_j B_j x_j, read by C_j."""
  dt: jax.Array  # (B, N, D) steps
  a: jax.Array  # (D, S) A = -exp(A_log)
  b: jax.Array  # (B, N, S)
  c: jax.Array  # (B, N, S)
  xc: jax.Array  # (B, N, D) the conv'd input x


def check_model(model: nnx.Module) -> None:
  """Raises EvalError unless `model` is Mamba or ResNet-BK of "ward_selective" blocks, unstacked."""
  kind = getattr(model, "kind", type(model).__name__)
  if kind not in ("resnet_bk", "mamba"):
    raise EvalError(f"the recall-memory probe reads Mamba or selective ResNet-BK blocks; got "
                    f"kind {kind}")
  if model.scan_layers:
    raise EvalError("the recall-memory probe walks the blocks one by one: the checkpoint's model "
                    "has model.scan_layers = True")
  mixers = sorted({b.mixer for b in model.blocks}) if kind == "resnet_bk" else ["ward_selective"]
  if mixers != ["ward_selective"]:
    raise EvalError(f"the recall-memory probe needs model.bk_mixer = 'ward_selective'; the "
                    f"checkpoint's blocks use {', '.join(mixers)}")


def parse_rate_scales(specs: Sequence[str]) -> list[tuple[int, int | None, float]]:
  """"LAYER=F" (every unit of a layer) or "LAYER.UNIT=F" (a selective head or a Mamba channel)
  as (layer, unit or None, F); raises EvalError on anything else or on F <= 0."""
  out = []
  for spec in specs:
    where, _, factor = spec.partition("=")
    layer, _, unit = where.partition(".")
    try:
      item = (int(layer), int(unit) if unit else None, float(factor))
    except ValueError:
      item = None
    if item is None or item[0] < 0 or (item[1] is not None and item[1] < 0) or not item[2] > 0:
      raise EvalError(f"a rate scale is LAYER=F or LAYER.UNIT=F with F > 0 (e.g. 1=0.1 or "
                      f"0.3=0.1); got {spec!r}")
    out.append(item)
  return out


def parse_filler(specs: Sequence[str]) -> tuple[tuple[int, str], ...]:
  """"LAYER=drop" or "LAYER=skip" as ((layer, mode), ...); raises EvalError on anything else."""
  out = []
  for spec in specs:
    layer, _, mode = spec.partition("=")
    if not layer.isdigit() or mode not in FILLER_MODES:
      raise EvalError(f"a filler spec is LAYER=drop or LAYER=skip (e.g. 1=skip); got {spec!r}")
    out.append((int(layer), mode))
  return tuple(out)


def scale_rates(model: nnx.Module, scales: Sequence[tuple[int, int | None, float]]) -> None:
  """Multiplies the decay rate of the chosen units by their factors, in place.

  Args:
    model: a model `check_model` accepts.
    scales: (layer, unit or None for all of the layer's units, factor > 0): a unit is a
      selective head (its A_h, or A_{h,i} for every key dimension, and its s_h: the whole
      lambda = A_h + s_h lam_bk scales) or a Mamba channel (its A_{c,s} for every state).

  Raises:
    EvalError: a layer or unit out of range.
  """
  check_model(model)
  for layer, unit, factor in scales:
    if layer >= len(model.blocks):
      raise EvalError(f"rate scale for layer {layer}: the model has {len(model.blocks)} layers")
    block = model.blocks[layer]
    units = block.a_log[...].shape[0]
    if unit is not None and unit >= units:
      raise EvalError(f"rate scale for layer {layer} unit {unit}: the layer has {units} units")
    rows = slice(None) if unit is None else slice(unit, unit + 1)
    block.a_log[...] = block.a_log[...].at[rows].add(math.log(factor))
    if model.kind == "resnet_bk" and block.resolvent:  # s_h = softplus(raw) times the factor
      s = np.asarray(jax.nn.softplus(block.ward_scale_raw[...][rows]), np.float64) * factor
      block.ward_scale_raw[...] = block.ward_scale_raw[...].at[rows].set(inv_softplus(s))


def layer_decays(model: nnx.Module, tokens: jax.Array, keep: jax.Array | None = None,
                 filler: tuple[tuple[int, str], ...] = ()) -> tuple[jax.Array, list[tuple]]:
  """Logits and every layer's decays and writes over a fresh sequence (one full forward).

  Args:
    model: a model `check_model` accepts; tokens: int32 (B, N).
    keep: (B, N) bool, the positions a layer in `filler` treats as it was trained to; the
      others are filler. None with no `filler`.
    filler: (layer, mode) pairs (static under jit) for selective ResNet-BK layers: "drop" zeroes
      the key k_j at the filler, so S_j = a_j S_{j-1} there (no write; the decays as trained);
      "skip" also zeroes the step Delta_j, so S_j = S_{j-1} (no write and no decay: the layer
      ignores the token, as a selective step can learn to). Every other layer is unchanged.

  Returns:
    (logits (B, N, vocab), a `SelectiveDecays` or `MambaDecays` per layer).
  """
  batch, n = tokens.shape
  pos = jnp.zeros((), jnp.int32)
  bias = model.position_bias(pos, n)
  x = model.embed(tokens)
  per_layer = []
  for i, block in enumerate(model.blocks):
    carry = block.init_carry(batch)
    if model.kind == "mamba":
      xc, _, dt, a, b, c, _ = block.scan_inputs(x, carry.conv)
      per_layer.append(MambaDecays(dt, a, b, c, xc))
      x, _, _ = block(x, carry, pos, bias)
      continue
    # the block's own forward (`BKBlock.__call__` less its monitors), with the keys in reach
    u, (v, inputs, res, hopping, z, eta), _ = block.mix_args(x, carry, bias)
    mode = dict(filler).get(i)
    if mode is not None:
      on = lambda a: a * keep.reshape(*keep.shape, *(1,) * (a.ndim - 2)).astype(a.dtype)
      inputs = {**inputs, "k": on(inputs["k"])}
      if mode == "skip":
        inputs["delta"] = on(inputs["delta"])
    log_a, write, _ = selective_decay(v, inputs["delta"], inputs["rate"], inputs["ward_scale"],
                                      hopping=hopping, z=z, eta=eta, g_prev=res.g,
                                      method=block.method, write_form=block.write_form)
    per_layer.append(SelectiveDecays(log_a, write, inputs["delta"]))
    y, _ = block.mix(v, inputs, res, hopping, z, eta)
    x, _ = block.residual(x, u, y, eta)
  return model.logits(x), per_layer


def kept_writes(write_pos: np.ndarray, length: int, recent: int) -> np.ndarray:
  """(B, N) bool: the answer's write and the conv's window after it (p + 1 ... p + CONV_WIDTH,
  every position whose key still sees the answer) and the last `recent` positions before the
  read: the positions a layer in `layer_decays`'s `filler` keeps; the rest is filler."""
  pos = np.arange(length)[None, :]
  answer = (pos >= write_pos[:, None]) & (pos < write_pos[:, None] + CONV_WIDTH)
  return answer | (pos >= length - recent)


def _edges(length: int) -> np.ndarray:
  """Position buckets [0, 64), [64, 128), [128, 256), ... up to `length`."""
  inner = [e for e in (2 ** k for k in range(6, 64)) if e < length]
  return np.array([0, *inner, length])


def _bucket_medians(a: np.ndarray, length: int) -> np.ndarray:
  """(B, N, U) -> (B, U, buckets): the median over each position bucket."""
  edges = _edges(length)
  return np.stack([np.median(a[:, s:e], axis=1) for s, e in zip(edges[:-1], edges[1:])], axis=-1)


def layer_units(arrays: SelectiveDecays | MambaDecays, write_pos: np.ndarray,
                read_pos: int) -> dict:
  """Every unit's hold of the write at `write_pos` at the read `read_pos`, for B sequences.

  Args:
    arrays: one layer's decays from `layer_decays`.
    write_pos: (B,) the write's position (the answer's, p + 1); read_pos: the read's, > write_pos.

  Returns:
    {"score": (B, U) log10 of the share (selective) or of |contribution to the read| (Mamba),
     "retention": (B, U) log10 R_u, "rate", "step": (B, U, buckets) the medians of -log a_j and of
     the step Delta_j / dt_j by position bucket, "names": U unit names}.
  """
  rows = np.arange(write_pos.shape[0])
  length = read_pos + 1
  f64 = lambda a: np.asarray(a, np.float64)
  if isinstance(arrays, SelectiveDecays):
    log_a, write, delta = map(f64, arrays)
    heads, keys = log_a.shape[2], (log_a.shape[3] if log_a.ndim == 4 else 0)
    la = log_a.reshape(*log_a.shape[:2], -1)  # (B, N, U)
    # sum_{j=p+2}^{read} log a_j = C[read] - C[p + 1], C the cumulative sum over positions
    cum = np.cumsum(la, axis=1)
    retention = (cum[rows, read_pos] - cum[rows, write_pos]) / LOG10
    score = retention + np.log10(write.reshape(la.shape)[rows, write_pos])
    # a head's step for each of its key dimensions, or each key dimension's own
    step = (delta.reshape(la.shape) if delta.ndim == 4
            else np.repeat(delta, max(keys, 1), axis=-1))
    names = ([f"head {h}, key {i}" for h in range(heads) for i in range(keys)] if keys
             else [f"head {h}" for h in range(heads)])
    return dict(score=score, retention=retention, rate=_bucket_medians(-la, length),
                step=_bucket_medians(step, length), names=names)
  dt, a, b, c, xc = map(f64, arrays)  # Mamba: the unit (channel, state) decays by exp(dt_c A_cs)
  channels, states = a.shape
  cum = np.cumsum(dt, axis=1)  # (B, N, D)
  retention = (a[None] * (cum[rows, read_pos] - cum[rows, write_pos])[:, :, None]) / LOG10
  write = (dt[rows, write_pos] * xc[rows, write_pos])[:, :, None] * b[rows, write_pos][:, None, :]
  score = retention + np.log10(np.abs(c[rows, read_pos][:, None, :] * write))  # (B, D, S)
  dt_med = _bucket_medians(dt, length)  # (B, D, buckets): the rate is dt |A_cs|, so its median too
  rate = dt_med[:, :, None, :] * np.abs(a)[None, :, :, None]
  flat = lambda u: u.reshape(u.shape[0], channels * states, *u.shape[3:])
  return dict(score=flat(score), retention=flat(retention), rate=flat(rate),
              step=flat(np.broadcast_to(dt_med[:, :, None, :], rate.shape)),
              names=[f"channel {ch}, state {s}" for ch in range(channels) for s in range(states)])


def memory_row(model: nnx.Module, task_cfg: ml_collections.ConfigDict, length: int, *,
               samples: int, batch_size: int, seed: int, decays: Callable | None = None,
               filler: tuple[tuple[int, str], ...] = (), keep_recent: int = 0) -> dict:
  """The carriers' hold of the answer, and the accuracy, at one test length.

  Args:
    model: see `layer_decays`; task_cfg: config.data.synthetic of the induction_heads task.
    length: test length n; samples: sequences (a whole number of batches is run).
    batch_size: sequences per forward; seed: content seed (`synthetic_seed(task_cfg, split)`).
    decays: a jitted `layer_decays` (made here when None).
    filler, keep_recent: `layer_decays`'s filler modes, with the answer's window and the last
      `keep_recent` positions kept (`kept_writes`); () runs the model as trained.

  Returns:
    {length, samples, accuracy, layers: [{carrier (its name), score_log10, retention_log10
    (medians over the samples), retention_log10_correct / _wrong (over those answered right /
    wrong; None where there are none), by_position: [{start, end, rate, step}] the carrier's
    median decay rate -log a_j and step in position buckets [0, 64), [64, 128), ... [2^k, n)}]}.
  """
  from bk_jax.data import make_synthetic_batch
  from bk_jax.data.synthetic import task_vocab_size

  decays = decays or nnx.jit(layer_decays, static_argnums=3)
  trig = task_vocab_size(task_cfg) - 1
  units, correct = [], []
  for i in range(max(1, math.ceil(samples / batch_size))):
    batch = make_synthetic_batch(task_cfg, int(length), batch_size, seed=seed, index=i)
    tokens = np.asarray(batch["inputs"])
    write_pos = np.argmax(tokens == trig, axis=1) + 1  # the trigger's first occurrence, + 1
    keep = jnp.asarray(kept_writes(write_pos, int(length), keep_recent)) if filler else None
    logits, per_layer = decays(model, jnp.asarray(tokens), keep, filler)
    units.append([layer_units(arrays, write_pos, length - 1) for arrays in per_layer])
    pred = np.argmax(np.asarray(logits[:, length - 1]), axis=-1)
    correct.append(pred == np.asarray(batch["targets"])[:, length - 1])
  correct = np.concatenate(correct)
  edges, layers = _edges(length), []
  for layer in range(len(units[0])):
    cat = lambda key: np.concatenate([u[layer][key] for u in units])
    score, retention, rate, step = cat("score"), cat("retention"), cat("rate"), cat("step")
    u = int(np.argmax(np.median(score, axis=0)))
    pick = lambda m: float(np.median(retention[m, u])) if m.any() else None
    by_position = [dict(start=int(s), end=int(e), rate=float(r), step=float(d))
                   for s, e, r, d in zip(edges[:-1], edges[1:], np.median(rate[:, u], axis=0),
                                         np.median(step[:, u], axis=0))]
    layers.append(dict(carrier=units[0][layer]["names"][u],
                       score_log10=float(np.median(score[:, u])),
                       retention_log10=float(np.median(retention[:, u])),
                       retention_log10_correct=pick(correct), retention_log10_wrong=pick(~correct),
                       by_position=by_position))
  return dict(length=int(length), samples=int(correct.shape[0]),
              accuracy=float(np.mean(correct)), layers=layers)


def memory_table(model: nnx.Module, task_cfg: ml_collections.ConfigDict, lengths: Sequence[int], *,
                 samples: int = 16, batch_size: int = 4, split: str = "test",
                 filler: Sequence[tuple[int, str]] = (), keep_recent: int = 256,
                 log: Callable[[str], None] | None = print) -> list[dict]:
  """`memory_row` at every length, on the samples `extrapolation_table` scores for `split`.

  `filler` is the intervention that asks what the tokens between the answer and the read do:
  its layers treat every position but the answer's window and the last `keep_recent` as filler,
  which they do not write ("drop": the other writes no longer crowd the answer, the decays are
  as trained) or ignore ("skip": nor decay, so the layer's state at the read is what it is at a
  length of about `keep_recent`, plus the answer). If the model then answers where it failed,
  those layers' handling of the filler set its reach; if not, the cause is elsewhere.

  Raises:
    EvalError: a model `check_model` refuses, not the induction task, a length under the
      task's, a filler layer out of range or of Mamba, an unknown mode, or keep_recent < 1.
  """
  from bk_jax.data.synthetic import min_seq_len, synthetic_seed

  check_model(model)
  if task_cfg.task != "induction_heads":
    raise EvalError(f"the recall-memory probe reads induction_heads sequences; the config's task "
                    f"is {task_cfg.task}")
  bad = [n for n in lengths if n < min_seq_len(task_cfg)]
  if bad:
    raise EvalError(f"induction_heads needs sequences of at least {min_seq_len(task_cfg)} tokens; "
                    f"got {bad}")
  filler = tuple(sorted(dict(filler).items()))
  if filler and model.kind != "resnet_bk":
    raise EvalError(f"the filler intervention reads selective ResNet-BK layers; the model is "
                    f"{model.kind}")
  for layer, mode in filler:
    if not 0 <= layer < len(model.blocks) or mode not in FILLER_MODES:
      raise EvalError(f"filler {layer}={mode}: a layer of the model's {len(model.blocks)} and "
                      f"one of {', '.join(FILLER_MODES)}")
  if filler and keep_recent < 1:
    raise EvalError(f"keep_recent must be >= 1 (the read's own write); got {keep_recent}")
  decays = nnx.jit(layer_decays, static_argnums=3)
  seed, rows = synthetic_seed(task_cfg, split), []
  for n in lengths:
    row = memory_row(model, task_cfg, int(n), samples=samples, batch_size=batch_size, seed=seed,
                     decays=decays, filler=filler, keep_recent=keep_recent)
    rows.append(row)
    if log is not None:
      held = ", ".join(f"layer {i} ({r['carrier']}) 10^{r['retention_log10']:.2f}"
                       for i, r in enumerate(row["layers"]))
      log(f"N={n:>8}: accuracy {100 * row['accuracy']:5.1f}%; the answer's retention at the "
          f"read: {held}")
  return rows


def format_table(rows: list[dict]) -> str:
  """Markdown: per length the accuracy and each layer's carrier and its log10 retention."""
  layers = len(rows[0]["layers"]) if rows else 0
  head = ["length", "samples", "accuracy (%)"] + [
      f"layer {i}: log10 retention (right / wrong), carrier" for i in range(layers)]
  fmt = lambda v: "" if v is None else f"{v:.2f}"
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for r in rows:
    cells = [f"{r['length']:,}", str(r["samples"]), f"{100 * r['accuracy']:.1f}"] + [
        f"{fmt(x['retention_log10'])} ({fmt(x['retention_log10_correct'])} / "
        f"{fmt(x['retention_log10_wrong'])}), {x['carrier']}" for x in r["layers"]]
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"


def format_positions(row: dict) -> str:
  """Markdown: at one length, each layer's carrier's decay rate and step by position bucket."""
  lines = ["| layer, carrier | positions | decay rate -log a | memory 1/rate (tokens) | step |",
           "|---|---|---|---|---|"]
  for i, layer in enumerate(row["layers"]):
    for b in layer["by_position"]:
      # a rate of 0: the carrier skips (most of) the bucket's tokens, e.g. under --filler skip
      memory = f"{1.0 / b['rate']:,.0f}" if b["rate"] > 0 else "no decay"
      lines.append(f"| {i}, {layer['carrier']} | {b['start']}-{b['end']} | {b['rate']:.3g} | "
                   f"{memory} | {b['step']:.3g} |")
  return "\n".join(lines) + "\n"

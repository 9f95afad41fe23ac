"""What a trained selective block keeps of an induction-heads answer until it is asked for.

In an induction-heads sequence (bk_jax.data.synthetic) the trigger first occurs at position p,
the answer follows at p + 1 and the trigger comes again at the last position n - 1, where the
model must name the answer. A "ward_selective" block (DESIGN §2.12) can only hold the answer in
its state S_j = a_j S_{j-1} + w_j k_j x_j^T, written at p + 1 (where its key, through the conv,
still sees the trigger) and read at n - 1. Of that write the state keeps, at the read,

    share = w_{p+1} * prod_{j=p+2}^{n-1} a_j        (per head; per key dimension with bk_decay "key")

With the complement write (w = 1 - a) S is a convex combination of its writes, so the shares of
all writes in a head sum to at most 1 and `share` is the answer's weight in what the head reads.
Measured against the test length this separates two failures: a share that falls with the
length means the block forgot the answer (its steps Delta_j on filler tokens are not small
enough); accuracy that falls while the share holds means the answer is kept but drowned by the
other writes it is mixed with.

`memory_table` measures it on the induction test sequences that `extrapolation_table` scores (the
same samples), with one full forward per batch (not streamed: the decays are those of the full
forward, which equals the streamed one).
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from bk_jax.eval.loading import EvalError
from bk_jax.models.bk import prime_bump_potential
from bk_jax.models.bk_mixers import selective_decay


def check_selective(model: nnx.Module) -> None:
  """Raises EvalError unless `model` is a ResNet-BK model of "ward_selective" blocks, unstacked."""
  if getattr(model, "kind", None) != "resnet_bk":
    raise EvalError(f"the recall-memory probe reads ResNet-BK selective blocks; got kind "
                    f"{getattr(model, 'kind', type(model).__name__)}")
  if model.scan_layers:
    raise EvalError("the recall-memory probe walks the blocks one by one: the checkpoint's model "
                    "has model.scan_layers = True")
  mixers = sorted({b.mixer for b in model.blocks})
  if mixers != ["ward_selective"]:
    raise EvalError(f"the recall-memory probe needs model.bk_mixer = 'ward_selective'; the "
                    f"checkpoint's blocks use {', '.join(mixers)}")


def layer_decays(model: nnx.Module, tokens: jax.Array) -> tuple[jax.Array, list[tuple]]:
  """Logits and every block's log-decay and write over a fresh sequence (one full forward).

  Args:
    model: a LanguageModel of "ward_selective" blocks (`check_selective`).
    tokens: int32 (B, N).

  Returns:
    (logits (B, N, vocab), [(log_a, write, delta)] per layer): log_a and write (B, N, H), or
    (B, N, H, n) with a rate per key dimension; delta the steps Delta_j (B, N, H).
  """
  n = tokens.shape[1]
  bias = None
  if model.prime_bump_scale is not None:
    bias = prime_bump_potential(jnp.arange(n, dtype=jnp.int32), model.prime_bump_scale)
  x = model.embed(tokens)
  pos = jnp.zeros((), jnp.int32)
  per_layer = []
  for block in model.blocks:
    carry = block.init_carry(tokens.shape[0])
    _, (v, inputs, res, hopping, z, eta), _ = block.mix_args(x, carry, bias)
    log_a, write, _ = selective_decay(v, inputs["delta"], inputs["rate"], inputs["ward_scale"],
                                      hopping=hopping, z=z, eta=eta, g_prev=res.g,
                                      method=block.method, write_form=block.write_form)
    per_layer.append((log_a, write, inputs["delta"]))
    x, _, _ = block(x, carry, pos, bias)
  logits = model.head(model.final_norm(x).astype(model.logits_dtype)).astype(jnp.float32)
  return logits, per_layer


def answer_shares(per_layer: list[tuple], write_pos: np.ndarray, read_pos: int) -> np.ndarray:
  """log10 of the answer's share at the read, per sample, layer and head.

  Args:
    per_layer: `layer_decays`'s [(log_a, write, ...)], B sequences.
    write_pos: (B,) the position of the write (the answer's, p + 1).
    read_pos: the position of the read (n - 1); > every write_pos.

  Returns:
    (B, layers, heads) float64 log10(w_{p+1} prod_{j=p+2}^{read} a_j); with a rate per key
    dimension every (head, key dimension) pair is a head.
  """
  out = []
  for log_a, write, *_ in per_layer:
    la = np.asarray(log_a, np.float64)
    w = np.asarray(write, np.float64)
    la, w = la.reshape(*la.shape[:2], -1), w.reshape(*w.shape[:2], -1)  # (B, N, heads)
    # sum_{j=p+2}^{read} log a_j = C[read] - C[p + 1], C the cumulative sum over positions
    c = np.cumsum(la, axis=1)
    rows = np.arange(la.shape[0])
    kept = c[rows, read_pos] - c[rows, write_pos]
    out.append((kept + np.log(w[rows, write_pos])) / math.log(10.0))
  return np.stack(out, axis=1)


def _edges(length: int) -> np.ndarray:
  """Position buckets [0, 64), [64, 128), [128, 256), ... up to `length`."""
  inner = [e for e in (2 ** k for k in range(6, 64)) if e < length]
  return np.array([0, *inner, length])


def _rates_by_position(log_a, delta, length: int) -> np.ndarray:
  """(B, heads, buckets, 2): per sequence the median decay rate -log a_j and step Delta_j in each
  position bucket; with a rate per key dimension every (head, key dimension) is a head."""
  la = -np.asarray(log_a, np.float64)
  la = la.reshape(*la.shape[:2], -1)  # (B, N, heads)
  d = np.asarray(delta, np.float64)
  d = np.repeat(d, la.shape[-1] // d.shape[-1], axis=-1)  # a head's step for its key dimensions
  edges = _edges(length)
  cols = [np.stack([np.median(x[:, a:b], axis=1) for x in (la, d)], axis=-1)
          for a, b in zip(edges[:-1], edges[1:])]
  return np.stack(cols, axis=2)


def memory_row(model: nnx.Module, task_cfg: ml_collections.ConfigDict, length: int, *,
               samples: int, batch_size: int, seed: int, decays: Callable | None = None) -> dict:
  """The answer's share and the accuracy at one test length.

  Args:
    model: see `layer_decays`; task_cfg: config.data.synthetic of the induction_heads task.
    length: test length n; samples: sequences (a whole number of batches is run).
    batch_size: sequences per forward; seed: content seed (`synthetic_seed(task_cfg, split)`).
    decays: a jitted `layer_decays` (made here when None).

  Returns:
    {length, samples, accuracy, layers: [{best_head, share_log10 (median of the best head),
    share_log10_correct / _wrong (medians over the samples answered right / wrong),
    by_position: the best head's median decay rate -log a_j ("rate"; 1 / rate is its memory in
    tokens) and step Delta_j ("step") in position buckets [0, 64), [64, 128), ... [2^k, n)}]}.
  """
  from bk_jax.data import make_synthetic_batch
  from bk_jax.data.synthetic import task_vocab_size

  decays = decays or nnx.jit(layer_decays)
  trig = task_vocab_size(task_cfg) - 1
  shares, correct, memory = [], [], []
  for i in range(max(1, math.ceil(samples / batch_size))):
    batch = make_synthetic_batch(task_cfg, int(length), batch_size, seed=seed, index=i)
    tokens = np.asarray(batch["inputs"])
    logits, per_layer = decays(model, jnp.asarray(tokens))
    write_pos = np.argmax(tokens == trig, axis=1) + 1  # the trigger's first occurrence, + 1
    shares.append(answer_shares(per_layer, write_pos, length - 1))
    pred = np.argmax(np.asarray(logits[:, length - 1]), axis=-1)
    correct.append(pred == np.asarray(batch["targets"])[:, length - 1])
    memory.append(np.stack([_rates_by_position(la, d, length) for la, _, d in per_layer], axis=1))
  shares, correct, memory = np.concatenate(shares), np.concatenate(correct), np.concatenate(memory)
  edges = _edges(length)
  layers = []
  for layer in range(shares.shape[1]):
    med = np.median(shares[:, layer], axis=0)
    h = int(np.argmax(med))
    pick = lambda m: float(np.median(shares[m, layer, h])) if m.any() else None
    rates = np.median(memory[:, layer, h], axis=0)  # (buckets, 2): over the samples
    by_position = [dict(start=int(a), end=int(b), rate=float(r), step=float(d))
                   for a, b, (r, d) in zip(edges[:-1], edges[1:], rates)]
    layers.append(dict(best_head=h, share_log10=float(med[h]), share_log10_correct=pick(correct),
                       share_log10_wrong=pick(~correct), by_position=by_position))
  return dict(length=int(length), samples=int(shares.shape[0]),
              accuracy=float(np.mean(correct)), layers=layers)


def memory_table(model: nnx.Module, task_cfg: ml_collections.ConfigDict, lengths: Sequence[int], *,
                 samples: int = 16, batch_size: int = 4, split: str = "test",
                 log: Callable[[str], None] | None = print) -> list[dict]:
  """`memory_row` at every length, on the samples `extrapolation_table` scores for `split`.

  Raises:
    EvalError: not a selective model, not the induction task, or a length under the task's.
  """
  from bk_jax.data.synthetic import min_seq_len, synthetic_seed

  check_selective(model)
  if task_cfg.task != "induction_heads":
    raise EvalError(f"the recall-memory probe reads induction_heads sequences; the config's task "
                    f"is {task_cfg.task}")
  bad = [n for n in lengths if n < min_seq_len(task_cfg)]
  if bad:
    raise EvalError(f"induction_heads needs sequences of at least {min_seq_len(task_cfg)} tokens; "
                    f"got {bad}")
  seed, decays, rows = synthetic_seed(task_cfg, split), nnx.jit(layer_decays), []
  for n in lengths:
    row = memory_row(model, task_cfg, int(n), samples=samples, batch_size=batch_size, seed=seed,
                     decays=decays)
    rows.append(row)
    if log is not None:
      shares = ", ".join(f"layer {i}: head {r['best_head']} 10^{r['share_log10']:.2f}"
                         for i, r in enumerate(row["layers"]))
      log(f"N={n:>8}: accuracy {100 * row['accuracy']:5.1f}%; the answer's share at the read "
          f"({shares})")
  return rows


def format_table(rows: list[dict]) -> str:
  """Markdown: per length the accuracy and, per layer, the best head's log10 share."""
  layers = len(rows[0]["layers"]) if rows else 0
  head = ["length", "samples", "accuracy (%)"] + [
      f"layer {i}: log10 share (right / wrong)" for i in range(layers)]
  fmt = lambda v: "" if v is None else f"{v:.2f}"
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for r in rows:
    cells = [f"{r['length']:,}", str(r["samples"]), f"{100 * r['accuracy']:.1f}"] + [
        f"{fmt(x['share_log10'])} ({fmt(x['share_log10_correct'])} / "
        f"{fmt(x['share_log10_wrong'])}), head {x['best_head']}" for x in r["layers"]]
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"


def format_positions(row: dict) -> str:
  """Markdown: at one length, each layer's best head's decay rate and step by position bucket."""
  lines = ["| layer, head | positions | decay rate -log a | memory 1/rate (tokens) | step Delta |",
           "|---|---|---|---|---|"]
  for i, layer in enumerate(row["layers"]):
    for b in layer["by_position"]:
      lines.append(f"| {i}, {layer['best_head']} | {b['start']}-{b['end']} | {b['rate']:.3g} | "
                   f"{1.0 / b['rate']:,.0f} | {b['step']:.3g} |")
  return "\n".join(lines) + "\n"

"""Passkey retrieval: a number hidden at a chosen depth of filler text, asked for at the end.

A prompt of N input tokens is

    filler[:a]  needle  filler[a:]  question  answer

with the needle stating a random `digits`-digit number and the question repeating the text that
led to the number in the needle, so the answer is a copy from up to N tokens back (Mohtashami &
Jaggi 2023's passkey test). The depth d in [0, 1] puts the needle at a = round(d * filler
length): 0 at the start of the prompt, 1 just before the question. The filler is held-out text of
the model's own corpus (a random window of it per sample), so the haystack looks like training
data. A sample counts as retrieved when every answer token is the model's top-1 prediction given
the prompt and the answer's earlier tokens: exactly when greedy decoding writes the number.

Prompts are scored through the streaming evaluator (state carried across chunks, several prompts
side by side), so a prompt of a million tokens costs the memory of one chunk.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np
from flax import nnx

from bk_jax.eval.loading import EvalError
from bk_jax.eval.streaming import DEFAULT_SUB_CHUNK, StreamingEvaluator
from bk_jax.runtime.markdown import md_table


@dataclasses.dataclass(frozen=True)
class Template:
  """The needle and the question; `{key}` in the needle is the number.

  The question must end with the text that precedes `{key}` in the needle: the answer is then
  a continuation the model has seen once, N tokens earlier.
  """
  needle: str
  question: str


TEMPLATES = {
    # for models of source code (pysource, pystdlib): a constant defined, then defined again
    "python": Template(needle="\nPASS_KEY = {key}  # remember this number\n",
                       question="\n# the same number as above\nPASS_KEY = "),
    # for models of prose (Tiny Shakespeare, WikiText): the wording of the original test
    "prose": Template(needle="\nThe pass key is {key}. Remember it. {key} is the pass key.\n",
                      question="\nWhat is the pass key? The pass key is "),
}


def _ids(tokenizer, text: str) -> np.ndarray:
  """Token ids of `text` without the line-end EOS that word/BPE tokenizers append."""
  ids = np.asarray(tokenizer.encode(text), np.int32)
  if not text.endswith("\n") and len(ids) and ids[-1] == tokenizer.eos_id:
    ids = ids[:-1]
  return ids


def _question_answer(tokenizer, question: str, key: str) -> tuple[np.ndarray, np.ndarray]:
  """(question ids, answer ids): the tokens of question+key, cut where they leave the question's."""
  full, q = _ids(tokenizer, question + key), _ids(tokenizer, question)
  common = 0
  while common < min(len(full), len(q)) and full[common] == q[common]:
    common += 1
  if common == len(full):
    raise EvalError(f"the passkey {key!r} has no tokens of its own after the question")
  return full[:common], full[common:]


def passkey_prompt(tokenizer, filler: np.ndarray, length: int, depth: float, key: str,
                   template: Template) -> dict[str, np.ndarray]:
  """One prompt of `length` input tokens.

  Args:
    tokenizer: the corpus's tokenizer (bk_jax.data.Tokenizer).
    filler: int token ids of at least `length` tokens (only the first ones needed are used).
    length: N, input positions (the prompt is N + 1 tokens: inputs and shifted targets).
    depth: needle position as a fraction of the filler, in [0, 1].
    key: the number, as text.
    template: needle and question.

  Returns:
    dict(inputs int32 (N,), targets int32 (N,), mask float32 (N,) = 1 at the answer tokens,
    needle_at = index of the needle's first token).

  Raises:
    EvalError: `length` too short for the needle, question and answer, or depth outside [0, 1].
  """
  if not 0.0 <= depth <= 1.0:
    raise EvalError(f"passkey depth must be in [0, 1], got {depth}")
  needle = _ids(tokenizer, template.needle.format(key=key))
  question, answer = _question_answer(tokenizer, template.question, key)
  n_fill = length + 1 - len(needle) - len(question) - len(answer)
  if n_fill < 0:
    raise EvalError(f"passkey length {length} is shorter than the needle, question and answer "
                    f"({len(needle) + len(question) + len(answer) - 1} tokens)")
  if len(filler) < n_fill:
    raise EvalError(f"passkey filler has {len(filler):,} tokens; length {length:,} needs "
                    f"{n_fill:,}")
  a = int(round(depth * n_fill))
  fill = np.asarray(filler[:n_fill], np.int32)
  x = np.concatenate([fill[:a], needle, fill[a:], question, answer]).astype(np.int32)
  mask = np.zeros(length, np.float32)
  mask[length - len(answer):] = 1.0  # targets x[N-len(answer)+1 ..] are the answer tokens
  return dict(inputs=x[:-1], targets=x[1:], mask=mask, needle_at=np.int64(a))


def passkey_table(model: nnx.Module, tokenizer, filler: np.ndarray, *, lengths: Sequence[int],
                  depths: Sequence[float], samples: int, template: Template | str = "python",
                  digits: int = 5, chunk_size: int = 4096, batch_size: int = 4, seed: int = 0,
                  sub_chunk: int | None = DEFAULT_SUB_CHUNK) -> list[dict]:
  """Retrieval accuracy for every (length, depth) cell.

  Args:
    model: a bk_jax LanguageModel (or any module with the streaming interface).
    tokenizer: the tokenizer of the model's corpus.
    filler: held-out token ids of that corpus (each sample takes a random window).
    lengths: prompt lengths N (input tokens).
    depths: needle depths in [0, 1].
    samples: prompts per cell (rounded up to whole batches).
    template: a `Template` or a name in `TEMPLATES`.
    digits: length of the number.
    chunk_size: the longest streaming chunk (the shortest length is used when shorter; a
      length that is not a multiple of the chunk pads its last chunk).
    batch_size: prompts streamed side by side.
    seed: numbers and filler windows (the same seed gives the same prompts for every model).
    sub_chunk: see `StreamingEvaluator`.

  Returns:
    Rows {length, depth, samples, accuracy (whole number retrieved), digit_accuracy (answer
    tokens right), answer_loss (nats per answer token)}, lengths outer, depths inner.
  """
  tpl = TEMPLATES[template] if isinstance(template, str) else template
  if max(lengths) > len(filler):
    raise EvalError(f"passkey filler has {len(filler):,} tokens; the longest prompt needs "
                    f"{max(lengths):,}")
  chunk = min(int(chunk_size), min(int(n) for n in lengths))  # one compile, no padding
  ev = StreamingEvaluator(model, chunk_size=chunk, batch_size=batch_size, edges=(0,),
                          sub_chunk=sub_chunk)
  ev.compile()
  rng = np.random.default_rng(seed)
  n_batches = -(-int(samples) // batch_size)
  rows = []
  for n in lengths:
    for d in depths:
      hit = nll = cnt = answers = 0.0
      for _ in range(n_batches):
        ps = []
        for _ in range(batch_size):
          key = str(rng.integers(10 ** (digits - 1), 10 ** digits))
          start = int(rng.integers(0, len(filler) - n + 1))
          ps.append(passkey_prompt(tokenizer, filler[start:start + n], int(n), float(d), key, tpl))
        x, t, m = (np.stack([p[k] for p in ps]) for k in ("inputs", "targets", "mask"))
        r = ev.run(((x[:, a:a + chunk], t[:, a:a + chunk], m[:, a:a + chunk])
                    for a in range(0, int(n), chunk)), progress=False, log=None)
        s_nll, s_cnt, s_hit = r.per_stream.sum(-1)  # (B,) each
        hit += float((s_hit == s_cnt).sum())
        nll, cnt, answers = nll + s_nll.sum(), cnt + s_cnt.sum(), answers + s_hit.sum()
      total = n_batches * batch_size
      rows.append(dict(length=int(n), depth=float(d), samples=total, accuracy=hit / total,
                       digit_accuracy=answers / cnt, answer_loss=nll / cnt))
  return rows


def format_table(results: dict[str, list[dict]]) -> str:
  """Markdown: retrieval accuracy (%) per model and prompt length (rows) and depth (columns), from
  `passkey_table` rows by model name."""
  depths = sorted({c["depth"] for rows in results.values() for c in rows})
  out = []
  for name, rows in results.items():
    for n in sorted({c["length"] for c in rows}):
      cell = {c["depth"]: c["accuracy"] for c in rows if c["length"] == n}
      out.append([name, n] + [f"{100 * cell[d]:.1f}" if d in cell else None for d in depths])
  return md_table(["model", "length"] + [f"depth {d:g}" for d in depths], out)

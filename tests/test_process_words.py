"""The repository speaks of the software, not of how it was developed.

Every tracked file (`git ls-files`; its path and, for text files, its content) is searched for
words about the development process: tracker references ("issue 14", "issue-14", "issues 12
and 14", "#14"), "round" as a stage of work ("first round", "this round", "round 2"), "landed"
in any form (`LANDED_DEFAULT`), "session", dated API notes ("late-2026 APIs"), remarks on how a
source was looked up ("as recalled", "the search tool"), branch and merge history ("this
branch", "the merged code"), pull requests, sprints and milestones. Ordinary English stays
allowed: "rounding", "round trip", "around", "round(x, 2)" and "issue" without a number ("this
raises an issue") match none of the patterns.

Skipped: binary files (a NUL byte or not UTF-8), the bundled corpus under bk_jax/data/assets/
(third-party text), and this file (it spells the patterns out). ALLOWED lists the exact phrases
that contain a pattern but mean something else, each with its reason.
"""

from __future__ import annotations

import os
import re
import subprocess

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SELF = os.path.relpath(os.path.abspath(__file__), ROOT)
SKIP_PREFIXES = ("bk_jax/data/assets/",)

#: (name, pattern) of each kind of development-process word; case-insensitive unless (?-i)
PATTERNS = [
    ("tracker reference", r"(?<![a-z])issues?[ _-]?#?\d+|\bissues \d+ (and|or) \d+|(?<![\w&#/:{'\"])#\d+\b"),
    ("tracker reference", r"\bthe issue's\b|\bpull requests?\b|(?-i:\bPRs?\b)"),
    ("round of work", r"\b(first|second|third|fourth|fifth|sixth|seventh|next|previous|last|this|"
                      r"that|earlier|later|another|final|new|same|one|two|three|four|five)"
                      r"[ -]rounds?\b"),
    ("round of work", r"\brounds? (\d+|one|two|three|four|five|of (work|review|changes|fixes|"
                      r"experiments|ablations))\b"),
    ("landed", r"landed|landing (of|the) (change|work|branch)"),
    ("session", r"\bsessions?\b"),
    ("dated note", r"\b(early|mid|late)[- ]20\d\d\b|\bas of (20\d\d|today|now)\b|\b(until|since|"
                   r"before|after|in|from) (jan|feb|mar|apr|may|jun|jul|aug|sep|oct|nov|dec)[a-z]*\.? 20\d\d\b"),
    ("look-up remark", r"\bas recalled\b|\bsearch tool\b|\b(did not|didn't) return the "
                       r"(paper|text|appendix|abstract)\b"),
    ("branch history", r"\bthis branch\b|\bmerged (code|main|branch)\b|\b(before|after) "
                       r"(the|this) (branch )?merged?\b|\bmain branch\b"),
    ("planning word", r"\b(sprint|milestone)s?\b"),
]
COMPILED = [(name, re.compile(p, re.IGNORECASE)) for name, p in PATTERNS]

#: exact phrases that contain a pattern but are ordinary terms; removed before matching
ALLOWED = {
    # TensorBoard's HParams plugin calls its per-run records "sessions" (SessionStartInfo)
    "experiment / session records": "TensorBoard HParams terminology",
}


def _tracked() -> list[str]:
  out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
  return [p for p in out.decode().split("\0") if p]


def _text(path: str) -> str | None:
  try:
    with open(os.path.join(ROOT, path), "rb") as f:
      data = f.read()
  except (FileNotFoundError, IsADirectoryError):  # deleted in the work tree, or a submodule
    return None
  if b"\0" in data[:8192]:
    return None
  try:
    return data.decode("utf-8")
  except UnicodeDecodeError:
    return None


def hits(text: str) -> list[tuple[int, str, str]]:
  """(line number, kind, matched text) of every process word in `text`."""
  out = []
  for i, line in enumerate(text.splitlines(), 1):
    for phrase in ALLOWED:
      line = line.replace(phrase, " ")
    for name, rx in COMPILED:
      for m in rx.finditer(line):
        out.append((i, name, m.group(0)))
  return out


def test_patterns_catch_process_words_and_spare_english():
  caught = ["see issue 14", "issue-14 variants", "ablations_issue14", "issues 12 and 14", "(#14)",
            "Fourth round: memory", "after the third round", "in this round", "round 2 of review",
            "LANDED_DEFAULT", "the landed default", "One lent H200 session", "late-2026 APIs",
            "as recalled: the search tool did not return the appendix text", "before this branch",
            "rerun on the merged code", "the issue's 1.5x bound", "this PR", "Until Nov 2026 this test"]
  for s in caught:
    assert hits(s), s
  spared = ["rounding to 4 digits", "no host round trip per token", "around 2k tokens",
            "round(x, 2)", "this raises an issue", "a tissue", "color #1f77b4", "items[#]",
            "expression", "issued", "the branch taken by lax.cond", "the merge of two JSONs",
            "experiment / session records", "Roundup", "a landing page", "f'{x:#04x}'",
            "CPU, 2026-11-27", "in 2026-12-03's run"]
  for s in spared:
    assert not hits(s), (s, hits(s))


def test_no_process_words_in_the_repository():
  bad = []
  for path in _tracked():
    if path == SELF or path.startswith(SKIP_PREFIXES):
      continue
    for _, name, word in hits(path):
      bad.append(f"{path} (file name): {name}: {word!r}")
    text = _text(path)
    if text is None:
      continue
    for line, name, word in hits(text):
      bad.append(f"{path}:{line}: {name}: {word!r}")
  assert not bad, f"{len(bad)} development-process words:\n" + "\n".join(bad)

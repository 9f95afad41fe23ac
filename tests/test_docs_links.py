"""Every relative link of the documentation leads somewhere: the file exists and, for a
`file.md#anchor` link, the anchor is one of that file's headings (GitHub's slugs).

Checked: README.md, docs/**/*.md and the README.md files under results/. Links inside code
spans and fenced blocks are not links; http(s) and mailto links are not fetched.
"""

import glob
import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FILES = sorted({os.path.join(ROOT, "README.md"),
                *glob.glob(os.path.join(ROOT, "docs", "**", "*.md"), recursive=True),
                *glob.glob(os.path.join(ROOT, "results", "**", "README.md"), recursive=True)})
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def _prose(text: str) -> str:
  text = re.sub(r"^\s*```.*?^\s*```", "", text, flags=re.S | re.M)
  return re.sub(r"`[^`\n]*`", "", text)


def slugs(text: str) -> set[str]:
  """The anchors GitHub gives the headings of a markdown text (duplicates get -1, -2, ...)."""
  out, seen = set(), {}
  for line in re.sub(r"^\s*```.*?^\s*```", "", text, flags=re.S | re.M).splitlines():
    m = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
    if not m:
      continue
    slug = re.sub(r"[^\w\- ]", "", m.group(1).lower()).replace(" ", "-")
    n = seen.get(slug, 0)
    seen[slug] = n + 1
    out.add(slug if n == 0 else f"{slug}-{n}")
  return out


def test_slugs_follow_github():
  assert slugs("# A. B (c)\n## Keyed mixer: the kernel G or its modulus\n## x\n## x\n") == {
      "a-b-c", "keyed-mixer-the-kernel-g-or-its-modulus", "x", "x-1"}
  assert "210-the-greens-function-mixer-values-mixed-by-the-prefix-resolvent-row" in slugs(
      "### 2.10 The Green's-function mixer: values mixed by the prefix resolvent row")


@pytest.mark.parametrize("path", FILES, ids=lambda p: os.path.relpath(p, ROOT))
def test_relative_links_resolve(path):
  bad = []
  for target in LINK.findall(_prose(open(path).read())):
    if re.match(r"^(https?:|mailto:)", target):
      continue
    file, _, anchor = target.partition("#")
    dest = os.path.normpath(os.path.join(os.path.dirname(path), file)) if file else path
    if not os.path.exists(dest):
      bad.append(f"{target}: no such file")
    elif anchor and dest.endswith(".md") and anchor not in slugs(open(dest).read()):
      bad.append(f"{target}: no heading with that anchor in {os.path.relpath(dest, ROOT)}")
  assert not bad, f"{os.path.relpath(path, ROOT)}:\n" + "\n".join(bad)

"""results/ follows its layout rule (results/README.md): results/<question>/<experiment>/README.md.

Every committed file under results/ sits in an experiment folder (two levels down) whose
README.md gives the command and where docs/results.md quotes it; nothing sits directly in
results/ or in a question folder except results/README.md; a question is one of the names the
README lists.
"""

import os
import re
import subprocess

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _tracked_results() -> list[str]:
  out = subprocess.run(["git", "ls-files", "results"], cwd=ROOT, capture_output=True, text=True,
                       check=True).stdout.split()
  return [p for p in out if os.path.exists(os.path.join(ROOT, p))]


def _questions() -> set[str]:
  text = open(os.path.join(ROOT, "results", "README.md")).read()
  rule = text[:text.index("- `<experiment>`")]
  return set(re.findall(r"`([a-z_]+)`", rule.split("one of:")[1]))


def test_questions_are_listed():
  assert {"speed_cpu", "speed_gpu", "quality", "long_range", "stability", "block_variants"} <= _questions()


def test_every_result_sits_in_an_experiment_folder_with_a_readme():
  files = _tracked_results()
  assert files, "git ls-files found nothing under results/"
  questions = _questions()
  bad = []
  for path in files:
    parts = path.split("/")
    if path == "results/README.md":
      continue
    if len(parts) < 4:
      bad.append(f"{path}: not inside results/<question>/<experiment>/")
      continue
    if parts[1] not in questions:
      bad.append(f"{path}: question folder {parts[1]!r} is not listed in results/README.md")
    readme = os.path.join(ROOT, *parts[:3], "README.md")
    if not os.path.isfile(readme):
      bad.append(f"{path}: no {os.path.relpath(readme, ROOT)}")
  assert not bad, "\n".join(bad)


def test_experiment_readmes_give_command_and_where_quoted():
  readmes = sorted({os.path.join(*p.split("/")[:3], "README.md") for p in _tracked_results()
                    if len(p.split("/")) >= 4})
  bad = []
  for rel in readmes:
    text = open(os.path.join(ROOT, rel)).read()
    if "python" not in text:
      bad.append(f"{rel}: no command")
    if "docs/results.md#" not in text:
      bad.append(f"{rel}: does not say where docs/results.md quotes it")
    if not re.search(r"20\d\d-\d\d-\d\d", text):
      bad.append(f"{rel}: no date")
  assert not bad, "\n".join(bad)

"""Every results JSON records `command` and `machine` through one helper (bk_jax.runtime.provenance)."""

import glob
import json
import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

#: json.dump sites that write something other than a result (caches, tokenizer files, the metric
#: writer's text, the stage records and specs of the report suites, stdout), or the helper's own
#: writers.
NOT_RESULTS = {
    "bk_jax/data/tokenizers.py", "bk_jax/data/identity.py", "bk_jax/data/cache.py",
    "bk_jax/data/__main__.py", "bk_jax/train/metrics.py", "bk_jax/reports/stages.py",
    "scripts/generate.py",
    "bk_jax/runtime/jsonio.py",  # the generic atomic writer: its callers stamp (checked below)
    "bk_jax/train/results.py",  # long_context_results.json: run section from run_info (below)
}


def _call_text(src: str, start: int) -> str:
  """The source of the call whose opening parenthesis ends the match at `start`."""
  depth, i = 1, start
  while depth and i < len(src):
    depth += {"(": 1, ")": -1}.get(src[i], 0)
    i += 1
  return src[start:i]


def test_every_json_writer_stamps():
  """Every json.dump(s) / write_json(...) call in bk_jax and scripts passes stamped(...), or its
  file is listed above with the reason (common.write_json stamps by itself)."""
  bad = []
  for path in sorted(glob.glob(os.path.join(ROOT, "bk_jax", "**", "*.py"), recursive=True) +
                     glob.glob(os.path.join(ROOT, "scripts", "*.py"))):
    rel = os.path.relpath(path, ROOT)
    if rel in NOT_RESULTS:
      continue
    src = open(path).read()
    for m in re.finditer(r"(?<![\w.])(json\.dumps?|write_json)\(", src):
      line_start = src.rfind("\n", 0, m.start()) + 1
      if src[line_start:m.start()].strip().startswith("def"):
        continue
      if "stamped(" not in _call_text(src, m.end()):
        bad.append(f"{rel}:{src.count(chr(10), 0, m.start()) + 1}: {src[m.start():m.end() + 60]!r}")
  assert not bad, "results JSON written without bk_jax.runtime.provenance.stamped:\n" + "\n".join(bad)


def test_stamped_fields():
  from bk_jax.runtime.provenance import stamped
  out = stamped(dict(a=1, command="kept"))
  assert out["a"] == 1 and out["command"] == "kept"
  m = out["machine"]
  assert m["backend"] == "cpu" and m["cpu_count"] >= 1 and m["jax"] and m["devices"]


def test_trainer_run_section(tmp_path):
  from bk_jax.train.cli import DEFAULT_CONFIG, load_config
  from bk_jax.train.run_info import run_section

  run = run_section(load_config(DEFAULT_CONFIG), started="t", data={}, save_dir=str(tmp_path))
  assert run["command"] and run["machine"]["backend"] == "cpu"


def test_bench_ops_json_has_command_and_machine(tmp_path):
  out = tmp_path / "ops.json"
  r = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "bench_ops.py"), "--quick",
                      "--methods", "scan", "--out", str(out)], capture_output=True, text=True,
                     env=dict(os.environ, PYTHONPATH=ROOT), timeout=300)
  assert r.returncode == 0, r.stderr[-2000:]
  d = json.load(open(out))
  assert "bench_ops.py" in d["command"] and "--quick" in d["command"]
  assert d["machine"]["backend"] == "cpu" and d["rows"]


#: committed before the fields existed; the README.md of each file's folder names it as such.
LEGACY = {"results/speed_cpu/ops/bench_ops.json": ("command", "machine"),
          "results/streaming/quickstart_1m/train_split.json": ("command", "machine"),
          "results/streaming/quickstart_1m/test_split.json": ("command", "machine"),
          "results/quality/equal_time_600s/quality_anchor_resnet_bk.json": ("machine",)}


def test_committed_results_carry_command_and_machine():
  """Every committed results JSON has both fields, except the legacy files, each of which its
  folder's README.md names as predating the provenance stamp."""
  missing = {}
  for path in sorted(glob.glob(os.path.join(ROOT, "results", "**", "*.json"), recursive=True)):
    parts = os.path.relpath(path, ROOT).split(os.sep)
    if "runs" in parts or "cache" in parts:  # a report's run and token-cache dirs (.gitignore)
      continue
    d = json.load(open(path))
    lack = tuple(k for k in ("command", "machine") if not isinstance(d, dict) or k not in d)
    if lack:
      missing[os.path.relpath(path, ROOT)] = lack
  assert missing == LEGACY
  for rel in LEGACY:
    readme = " ".join(open(os.path.join(ROOT, os.path.dirname(rel), "README.md")).read().split())
    assert f"`{os.path.basename(rel)}`" in readme and "the provenance stamp" in readme, rel

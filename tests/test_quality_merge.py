"""scripts/quality_anchor.py --merge rebuilds the table and figure from result JSONs (no training)."""

import glob
import json
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "scripts"))

import quality_anchor  # noqa: E402


def _write(path, obj):
  with open(path, "w") as f:
    json.dump(obj, f)
  return str(path)


def test_merge_two_layouts(tmp_path):
  full = _write(tmp_path / "quality_anchor.json", dict(
      args=dict(batch=4, seq_len=8, budget_s=60.0), published=dict(params=800_000, val_loss=1.88),
      rows=[dict(kind="mamba", params=10, n_layers=2, steps=5, wall_s=12.4, tokens_seen=160,
                 val_loss=2.5, curve_steps=[1, 5], curve_loss=[3.0, 2.6])]))
  single = _write(tmp_path / "quality_anchor_resnet_bk.json", dict(
      kind="resnet_bk", params=11, n_layers=3, budget_s=60, steps=7, train_epoch_time_s=30.6,
      val_loss=2.25))
  out = tmp_path / "out"
  quality_anchor.main(["--out", str(out), "--merge", full, single])
  md = open(out / "quality_anchor.md").read().splitlines()
  rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]] for line in md
          if line.startswith("| ") and not line.startswith("| model")}
  assert rows["mamba"] == ["10", "2", "60", "5", "12", "160", "2.5", "quality_anchor.json"]
  # tokens derived from the recorded args: 7 steps x 4 x 8; wall clock from train_epoch_time_s
  assert rows["resnet_bk"] == ["11", "3", "60", "7", "31", "224 (derived)", "2.25",
                               "quality_anchor_resnet_bk.json"]
  assert rows["nanoGPT GPT (published)"][6] == "1.88"
  assert os.path.getsize(out / "quality_anchor.png") > 10_000


def test_merge_rejects_a_kind_twice_and_unknown_files(tmp_path):
  a = _write(tmp_path / "a.json", dict(kind="mamba", params=1, n_layers=1, steps=1, val_loss=1.0))
  b = _write(tmp_path / "b.json", dict(kind="mamba", params=1, n_layers=1, steps=1, val_loss=1.0))
  with pytest.raises(ValueError, match="two files"):
    quality_anchor.main(["--out", str(tmp_path / "o"), "--merge", a, b])
  c = _write(tmp_path / "c.json", dict(loss=1.0))
  with pytest.raises(ValueError, match="neither"):
    quality_anchor.main(["--out", str(tmp_path / "o"), "--merge", c])


def test_committed_600s_table_has_every_kind_of_its_jsons():
  d = os.path.join(ROOT, "results", "quality", "equal_time_600s")
  kinds = set()
  for p in glob.glob(os.path.join(d, "*.json")):
    j = json.load(open(p))
    kinds |= {r["kind"] for r in j["rows"]} if "rows" in j else {j["kind"]}
  md = open(os.path.join(d, "quality_anchor.md")).read()
  assert kinds == {"resnet_bk", "mamba"}
  for k in kinds:
    assert f"| {k} |" in md

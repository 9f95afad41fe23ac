"""A run's checkpoints restore with orbax and grain alone (docs/guides/training.md, "Restoring a checkpoint with
plain orbax"): parameters, optimizer state, step, metadata, and the data iterator, whose next
batch is the one the trainer would have drawn.

This file does not import bk_jax: a tiny run is trained (and its own loader's view dumped) in a
subprocess; the plain restore runs in another subprocess that checks bk_jax was never imported.
"""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

TRAIN = r"""
import json, sys
import jax, numpy as np
sys.path[:0] = [{repo!r}, {repo!r} + "/tests"]
from bk_jax.train.loop import Trainer
from tiny_configs import tiny_config, write_pattern_corpus

out = {out!r}
corpus = write_pattern_corpus(out + "/p.txt")
cfg = tiny_config(out + "/run", corpus, out + "/cache", lengths=(32,), steps=6)
cfg.logging.console = False
cfg.checkpoint.every_steps = 4
Trainer(cfg).run()
# the project's own loader: restore checkpoints/4 and draw the next batch
t = Trainer(cfg)
t._restore(4)
import re
name = lambda k: "/".join(w for w in re.findall(r"\w+", jax.tree_util.keystr(k)) if w != "value")
flat = {{name(k): np.asarray(v) for k, v in jax.tree_util.tree_leaves_with_path(t.state.params)}}
np.savez(out + "/params4.npz", **flat)
np.savez(out + "/next4.npz", **next(t.iterator))
t.ckpt.close()
"""

PLAIN = """
import json, sys
import grain, numpy as np, orbax.checkpoint as ocp

run = {run!r}
out = {out!r}

def pipeline(info):
  # docs/guides/training.md: the training pipeline, rebuilt from meta["data_iterator"] with grain and numpy
  n, b = info["seq_len"], info["batch_size"]
  tokens = np.memmap(info["cache_entry"] + "/train.bin", dtype=info["dtype"], mode="r",
                     shape=(info["split_tokens"],))
  num = (len(tokens) - 1) // n
  per = num // info["process_count"]
  def window(w):
    x = np.asarray(tokens[w * n: w * n + n + 1], np.int32)
    return dict(inputs=x[:-1], targets=x[1:], mask=np.ones((n,), np.float32))
  ds = grain.MapDataset.range(num)[info["process_index"]: info["process_index"] + per * info["process_count"]: info["process_count"]]
  ds = ds.shuffle(seed=info["grain_shuffle_seed"]).map(window).batch(b, drop_remainder=True).repeat(None)
  return iter(ds.to_iter_dataset(grain.ReadOptions(num_threads=0, prefetch_buffer_size=0)))

# 1. periodic checkpoint: name the items; restore state and meta without a target
mngr = ocp.CheckpointManager(run + "/checkpoints", item_names=("state", "data", "meta"))
r = mngr.restore(4, args=ocp.args.Composite(state=ocp.args.StandardRestore(),
                                            meta=ocp.args.JsonRestore()))
state, meta = r["state"], r["meta"]
# 2. the data item into a rebuilt iterator
it = pipeline(meta["data_iterator"])
mngr.restore(4, args=ocp.args.Composite(data=grain.checkpoint.CheckpointRestore(it)))
nxt = next(it)
# 3. a named checkpoint: a plain Checkpointer of a Composite
named = ocp.Checkpointer(ocp.CompositeCheckpointHandler())
rn = named.restore(run + "/checkpoint_final", args=ocp.args.Composite(
    state=ocp.args.StandardRestore(), meta=ocp.args.JsonRestore()))
it2 = pipeline(rn["meta"]["data_iterator"])
named.restore(run + "/checkpoint_final", args=ocp.args.Composite(data=grain.checkpoint.CheckpointRestore(it2)))
mngr.close()

flat = {{}}
def walk(prefix, x):
  if isinstance(x, dict):
    for k, v in x.items():
      walk(prefix + [str(k)], v)
  else:
    flat["/".join(p for p in prefix if p != "value")] = np.asarray(x)
walk([], state["params"])
np.savez(out + "/plain_params4.npz", **flat)
np.savez(out + "/plain_next4.npz", **nxt)
json.dump(dict(step=int(state["step"]), position=meta["position"], opt_leaves=len(state["opt_state"]),
               final_step=int(rn["state"]["step"]), final_position=rn["meta"]["position"],
               final_data_seq_len=rn["meta"]["data_iterator"]["seq_len"],
               final_next_index=it2.get_state().get("next_index"),
               bk_jax_imported=any(m.startswith("bk_jax") for m in sys.modules)),
          open(out + "/plain.json", "w"))
"""


def _py(code, cwd):
  p = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                     timeout=600, cwd=cwd)
  assert p.returncode == 0, p.stderr[-3000:]


def test_plain_orbax_and_grain_restore(tmp_path):
  out = str(tmp_path)
  _py(TRAIN.format(repo=REPO, out=out), REPO)
  _py(PLAIN.format(run=out + "/run", out=out), out)
  with open(out + "/plain.json") as f:
    plain = json.load(f)
  assert not plain["bk_jax_imported"]
  assert plain["step"] == 4 and plain["position"] == [0, 4] and plain["opt_leaves"] > 0
  assert plain["final_step"] == 6 and plain["final_data_seq_len"] == 32
  # the named checkpoint's iterator stands where its length ended (6 batches drawn)
  assert plain["final_next_index"] == 6
  ours, theirs = np.load(out + "/params4.npz"), np.load(out + "/plain_params4.npz")
  assert sorted(ours.files) == sorted(theirs.files) and len(ours.files) > 5
  for k in ours.files:
    np.testing.assert_array_equal(ours[k], theirs[k])  # bit-identical
  a, b = np.load(out + "/next4.npz"), np.load(out + "/plain_next4.npz")
  for k in ("inputs", "targets", "mask"):
    np.testing.assert_array_equal(a[k], b[k])

"""Multi-device checks for the sharding tests, run in a subprocess with fake CPU devices.

    XLA_FLAGS=--xla_force_host_platform_device_count=8 python tests/sharding_checks.py CHECK [ARGS]

Every check asserts and prints one JSON line starting with "RESULT "; tests/test_sharding_*.py
start this script (see `run_check`) so the pytest process itself never imports JAX with fake
devices.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_check(name: str, *args: str, devices: int = 8, timeout: int = 600, env=None) -> dict:
  """Runs `name` in a fresh interpreter with `devices` fake CPU devices; returns its RESULT."""
  e = dict(os.environ)
  e.update(XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", JAX_PLATFORMS="cpu",
           PYTHONPATH=ROOT + os.pathsep + e.get("PYTHONPATH", ""))
  e.update(env or {})
  p = subprocess.run([sys.executable, os.path.abspath(__file__), name, *args], env=e, cwd=ROOT,
                     capture_output=True, text=True, timeout=timeout)
  lines = [ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")]
  if p.returncode != 0 or not lines:
    raise AssertionError(f"check {name} {args} failed (rc={p.returncode}):\n"
                         f"{p.stdout[-3000:]}\n{p.stderr[-6000:]}")
  return json.loads(lines[-1][len("RESULT "):])


def free_port() -> int:
  import socket

  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def run_multiprocess(name: str, *args: str, processes: int = 2, devices_per_process: int = 1,
                     timeout: int = 300) -> list[dict]:
  """Starts `processes` workers of check `name` on localhost (JAX distributed runtime, gloo CPU
  collectives); every worker must exit by itself within `timeout` (else all are killed)."""
  port = free_port()
  procs = []
  for pid in range(processes):
    e = dict(os.environ)
    e.update(XLA_FLAGS=f"--xla_force_host_platform_device_count={devices_per_process}",
             JAX_PLATFORMS="cpu", PYTHONPATH=ROOT + os.pathsep + e.get("PYTHONPATH", ""),
             JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", JAX_NUM_PROCESSES=str(processes),
             JAX_PROCESS_ID=str(pid))
    procs.append(subprocess.Popen([sys.executable, os.path.abspath(__file__), name, *args],
                                  env=e, cwd=ROOT, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True))
  outs = []
  try:
    for p in procs:
      outs.append(p.communicate(timeout=timeout))
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
        p.wait()
  results = []
  for p, (out, err) in zip(procs, outs):
    lines = [ln for ln in out.splitlines() if ln.startswith("RESULT ")]
    if p.returncode != 0 or not lines:
      raise AssertionError(f"worker {name} failed (rc={p.returncode}):\n{out[-3000:]}\n{err[-6000:]}")
    results.append(json.loads(lines[-1][len("RESULT "):]))
  return results


# ------------------------------------------------------------------------------ helpers
def _result(**kw):
  print("RESULT " + json.dumps(kw), flush=True)


def tiny_config(*, vocab=64, d_model=32, n_heads=4, d_ff=64, n_layers=2, mesh=(1, 1, 1, 1)):
  from bk_jax.train.cli import DEFAULT_CONFIG, load_config

  c = load_config(DEFAULT_CONFIG)
  m = c.model
  m.vocab_size, m.d_model, m.n_heads, m.d_ff, m.n_layers = vocab, d_model, n_heads, d_ff, n_layers
  c.train.lr, c.train.warmup_steps = 3e-3, 2
  # Adam's first update is lr * g / (|g| + eps): with eps = 1e-8 a gradient entry of ~1e-8 turns
  # float32 rounding of differently ordered (sharded) reductions into a visible update
  # difference (seen: 1.2e-5 on one weight, with the losses equal to 1e-6; how large depends on
  # the host processor's instruction choice); eps = 1e-6 keeps the update smooth in the
  # gradient, so parameters compare the sharding, not that.
  c.train.adam_eps = 1e-6
  c.mesh.data, c.mesh.fsdp, c.mesh.tensor, c.mesh.sequence = mesh
  return c


def random_batches(n_batches, batch, seq_len, vocab, seed=0):
  import numpy as np

  rng = np.random.default_rng(seed)
  out = []
  for _ in range(n_batches):
    toks = rng.integers(0, vocab, size=(batch, seq_len + 1)).astype(np.int32)
    out.append(dict(inputs=toks[:, :-1], targets=toks[:, 1:],
                    mask=np.ones((batch, seq_len), np.float32)))
  return out


def train_losses(cfg, mesh, batches, state=None):
  """Runs the jitted, sharded train step over `batches`; returns (losses, state)."""
  from bk_jax.sharding import shard_batch
  from bk_jax.train.step import build_sharded_step

  state0, step, _ = build_sharded_step(cfg, mesh, 20)
  state = state0 if state is None else state
  losses = []
  for b in batches:
    state, metrics = step(state, shard_batch(b, mesh))
    losses.append(float(metrics["loss"]))
  return losses, state


def _max_tree_diff(a, b):
  import jax
  import numpy as np

  return max(float(np.max(np.abs(np.asarray(x) - np.asarray(y))))
             for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


# ------------------------------------------------------------------------------ checks
def check_scan(dtype="float32", size="quick"):
  """Sequence-sharded causal_diag (dispatched from resolvent.causal_diag) == unsharded.

  size="quick": mesh (1, 8) with 5 positions per shard, scan and associative, fresh and carried;
  "full" adds mesh (2, 4) (data x sequence) and 16 positions per shard.
  """
  import jax

  if dtype == "float64":
    jax.config.update("jax_enable_x64", True)
  import jax.numpy as jnp
  import numpy as np

  from bk_jax.ops import resolvent, sharded_scan
  from bk_jax.sharding import make_mesh

  fdt = jnp.float64 if dtype == "float64" else jnp.float32
  cdt = jnp.complex128 if dtype == "float64" else jnp.complex64
  out = {}
  rng = np.random.default_rng(0)
  full = size == "full"
  for n_data, n_seq in ((1, 8), (2, 4))[:2 if full else 1]:
    mesh = make_mesh(dict(data=n_data, fsdp=1, tensor=1, sequence=n_seq))
    for n_per in (5, 16)[:2 if full else 1]:  # odd shard length exercises the pairwise reduction's padding
      b, n, h = 4, n_seq * n_per, 3
      v = jnp.asarray(rng.normal(size=(b, n, h)) * 2.0, fdt)
      hop = jnp.asarray([0.7, 1.0, 1.4], fdt)
      z = jnp.asarray([-1.0 + 0.3j, -2.5 + 0.1j, 0.5 + 0.6j], cdt)
      carry = jnp.asarray(rng.normal(size=(b, h)) * 0.2 + 0.3j, cdt)
      w = jnp.asarray(rng.normal(size=(n, h)) + 1j * rng.normal(size=(n, h)), cdt)
      for method in ("scan", "associative"):
        for c in (None, carry):
          def loss(v, hop, z, c, method=method):
            g, last = resolvent.causal_diag(v, hopping=hop, z=z, carry=c, method=method)
            return jnp.sum(jnp.real(g * w)) + jnp.sum(jnp.imag(last) * 3.0), (g, last)

          argn = (0, 1, 2) if c is None else (0, 1, 2, 3)
          f = jax.jit(jax.value_and_grad(loss, argnums=argn, has_aux=True))
          (_, (g0, l0)), gr0 = f(v, hop, z, c)
          with jax.set_mesh(mesh):
            f_sh = jax.jit(jax.value_and_grad(loss, argnums=argn, has_aux=True))
            jaxpr = str(jax.make_jaxpr(lambda *a: loss(*a)[0])(v, hop, z, c))
            assert "shard_map" in jaxpr, "causal_diag did not dispatch to the sharded scan"
            (_, (g1, l1)), gr1 = f_sh(v, hop, z, c)
          assert "sequence" in str(g1.sharding.spec), g1.sharding
          scale = max(float(np.max(np.abs(np.asarray(x)))) for x in gr0)
          key = f"S{n_seq}_n{n}_{method}_{'carry' if c is not None else 'fresh'}"
          out[key] = dict(g=float(np.max(np.abs(g0 - g1))), carry=float(np.max(np.abs(l0 - l1))),
                          grad=_max_tree_diff(gr0, gr1) / scale)
      # streaming: two sharded calls chained through the carry == one unsharded call
      g_full, last_full = resolvent.causal_diag(v, hopping=hop, z=z)
      with jax.set_mesh(mesh):
        half = n // 2 if (n // 2) % n_seq == 0 else n
        g_a, c_a = jax.jit(lambda v: resolvent.causal_diag(v, hopping=hop, z=z))(v[:, :half])
        parts = [g_a]
        if half < n:
          g_b, c_a = jax.jit(lambda v, c: resolvent.causal_diag(v, hopping=hop, z=z, carry=c))(
              v[:, half:], c_a)
          parts.append(g_b)
      out[f"S{n_seq}_n{n}_chained"] = dict(
          g=float(np.max(np.abs(np.concatenate(parts, 1) - g_full))),
          carry=float(np.max(np.abs(c_a - last_full))), grad=0.0)
    # sequence_parallel_causal_diag also works as a direct call with an explicit mesh
    g_d, _ = jax.jit(lambda v: sharded_scan.sequence_parallel_causal_diag(
        v, hopping=hop, z=z, mesh=mesh))(v)
    out[f"S{n_seq}_direct"] = dict(
        g=float(np.max(np.abs(g_d - resolvent.causal_diag(v, hopping=hop, z=z)[0]))),
        carry=0.0, grad=0.0)
  _result(**out)


def check_selective(op="diag", dtype="float32"):
  """Sequence-sharded causal_diag / causal_green with per-position hopping and z == unsharded.

  Meshes (sequence 8) and (data 2 x sequence 4), 5 positions per shard; scan and associative
  local passes, fresh and carried; values, carries and gradients w.r.t. every argument.
  """
  import jax

  if dtype == "float64":
    jax.config.update("jax_enable_x64", True)
  import jax.numpy as jnp
  import numpy as np

  from bk_jax.ops import resolvent
  from bk_jax.sharding import make_mesh

  fdt = jnp.float64 if dtype == "float64" else jnp.float32
  cdt = jnp.complex128 if dtype == "float64" else jnp.complex64
  out = {}
  rng = np.random.default_rng(1)
  for n_data, n_seq in ((1, 8), (2, 4)):
    mesh = make_mesh(dict(data=n_data, fsdp=1, tensor=1, sequence=n_seq))
    b, n, h, d = 4, n_seq * 5, 3, 2
    v = jnp.asarray(rng.normal(size=(b, n, h)) * 2.0, fdt)
    hop = jnp.asarray(rng.uniform(0.1, 2.0, (n, h)), fdt)  # per position, broadcast over batch
    z = jnp.asarray(rng.uniform(-3, 0.5, (b, n, h)) + 1j * rng.uniform(0.1, 1.0, (b, n, h)), cdt)
    x = jnp.asarray(rng.normal(size=(b, n, h, d)), fdt)
    g0 = jnp.asarray(rng.normal(size=(b, h)) * 0.2 + 0.3j, cdt)
    carry = g0 if op == "diag" else (g0, jnp.asarray(rng.normal(size=(b, h, d)) + 0j, cdt))
    w = jnp.asarray(rng.normal(size=(n, h)) + 1j * rng.normal(size=(n, h)), cdt)
    for method in ("scan", "associative"):
      for c in (None, carry):
        def loss(v, hop, z, x, c, method=method):
          if op == "diag":
            y, last = resolvent.causal_diag(v, hopping=hop, z=z, carry=c, method=method)
            lasts = (last,)
          else:
            y, last = resolvent.causal_green(v, x, hopping=hop, z=z, carry=c, method=method)
            y, lasts = y[..., 0], tuple(last)
          tail = sum(jnp.sum(jnp.imag(l) * 3.0) for l in lasts)
          return jnp.sum(jnp.real(y * w)) + tail, (y, lasts)

        argn = (0, 1, 2) + ((3,) if op == "green" else ()) + (() if c is None else (4,))
        f = jax.jit(jax.value_and_grad(loss, argnums=argn, has_aux=True))
        (_, (y0, l0)), gr0 = f(v, hop, z, x, c)
        with jax.set_mesh(mesh):
          jaxpr = str(jax.make_jaxpr(lambda *a: loss(*a)[0])(v, hop, z, x, c))
          assert "shard_map" in jaxpr, "did not dispatch to the sequence-parallel path"
          (_, (y1, l1)), gr1 = jax.jit(jax.value_and_grad(loss, argnums=argn, has_aux=True))(
              v, hop, z, x, c)
        assert "sequence" in str(y1.sharding.spec), y1.sharding
        scale = max(float(np.max(np.abs(np.asarray(t)))) for t in jax.tree.leaves(gr0))
        key = f"S{n_seq}_{method}_{'carry' if c is not None else 'fresh'}"
        out[key] = dict(g=float(np.max(np.abs(y0 - y1))), carry=_max_tree_diff(l0, l1),
                        grad=_max_tree_diff(gr0, gr1) / scale)
  _result(**out)


def check_train_meshes(*meshes):
  """One training run per mesh (3 steps) vs the single-device run: losses and parameters."""
  _result(**_train_meshes(meshes, dropout=0.0))


def check_train_meshes_dropout(*meshes):
  """As check_train_meshes with model.dropout 0.2 (the masks do not depend on the mesh), plus
  the single-device losses without dropout (the masks are on)."""
  out = _train_meshes(meshes, dropout=0.2)
  out["no_dropout_reference_losses"] = _train_meshes((), dropout=0.0)["reference_losses"]
  _result(**out)


def _train_meshes(meshes, dropout):
  import jax

  from bk_jax.ops import sharded_scan
  from bk_jax.sharding import make_mesh

  calls = []  # traces that went through the sequence-parallel scan
  orig = sharded_scan.sequence_parallel_causal_diag
  sharded_scan.sequence_parallel_causal_diag = lambda *a, **k: calls.append(1) or orig(*a, **k)
  batches = random_batches(3, batch=8, seq_len=64, vocab=64)
  cfg = tiny_config()
  cfg.model.dropout = dropout
  ref_mesh = make_mesh(cfg.mesh, devices=jax.devices()[:1])
  ref_losses, ref_state = train_losses(cfg, ref_mesh, batches)
  ref_params = jax.device_get(ref_state.params)
  out = {}
  for spec in meshes:
    shape = tuple(int(x) for x in spec.split(","))
    cfg = tiny_config(mesh=shape)
    cfg.model.dropout = dropout
    mesh = make_mesh(cfg.mesh)
    calls.clear()
    losses, state = train_losses(cfg, mesh, batches)
    sharded = sorted({str(x.sharding.spec) for x in jax.tree.leaves(state.params)})
    out[spec] = dict(loss=max(abs(a - b) for a, b in zip(losses, ref_losses)),
                     params=_max_tree_diff(jax.device_get(state.params), ref_params),
                     losses=losses, specs=sharded, sequence_parallel_calls=len(calls))
  out["reference_losses"] = ref_losses
  sharded_scan.sequence_parallel_causal_diag = orig
  return out


def reduced_1b_config(mesh=(1, 1, 1, 1)):
  """configs/bk_1b.py at 1/8 width (d_model 256, 8 BK heads, d_ff 1280, vocab 4096), 2 layers.

  Same structure: scanned, fully rematerialised layers, resolvent "auto", the activation rules.
  Compute is float32 (the config's bf16 would make the comparison measure bf16 rounding of
  differently ordered reductions, not the sharding), warm-up 2 steps so 3 steps move the weights.
  """
  from bk_jax.train.cli import load_config

  c = load_config(os.path.join(ROOT, "configs", "bk_1b.py"))
  m = c.model
  m.d_model, m.n_heads, m.d_ff, m.n_layers = 2048 // 8, 64 // 8, 10240 // 8, 2
  m.vocab_size = c.data.vocab_size // 8
  m.dtype = "float32"
  c.train.lr, c.train.warmup_steps = 3e-3, 2
  c.train.adam_eps = 1e-6  # as tiny_config: parameters compare the sharding, not Adam's eps
  c.mesh.data, c.mesh.fsdp, c.mesh.tensor, c.mesh.sequence = mesh
  return c


def check_reduced_1b(mesh_spec):
  """The reduced 1B config: 3 steps on `mesh_spec` vs one device (losses, parameters)."""
  import jax

  from bk_jax.ops import sharded_scan
  from bk_jax.sharding import make_mesh

  calls = []
  orig = sharded_scan.sequence_parallel_causal_diag
  sharded_scan.sequence_parallel_causal_diag = lambda *a, **k: calls.append(1) or orig(*a, **k)
  ref_cfg = reduced_1b_config()
  # one batch three times: the loss must fall (memorisation), so the steps really train
  batches = random_batches(1, batch=8, seq_len=256, vocab=ref_cfg.model.vocab_size, seed=3) * 3
  ref_losses, ref_state = train_losses(ref_cfg, make_mesh(ref_cfg.mesh, jax.devices()[:1]), batches)
  shape = tuple(int(x) for x in mesh_spec.split(","))
  cfg = reduced_1b_config(mesh=shape)
  losses, state = train_losses(cfg, make_mesh(cfg.mesh), batches)
  _result(loss=max(abs(a - b) for a, b in zip(losses, ref_losses)),
          params=_max_tree_diff(jax.device_get(state.params), jax.device_get(ref_state.params)),
          losses=losses, reference_losses=ref_losses, sequence_parallel_calls=len(calls),
          specs=sorted({str(x.sharding.spec) for x in jax.tree.leaves(state.params)}),
          devices=jax.device_count())


def check_save(ckpt_dir):
  """8 devices, mesh (2,2,2,1): 2 steps, checkpoint, 2 more steps (reference losses)."""
  import jax

  from bk_jax.sharding import make_mesh
  from bk_jax.train.checkpoint import Checkpoints

  cfg = tiny_config(mesh=(2, 2, 2, 1))
  mesh = make_mesh(cfg.mesh)
  batches = random_batches(4, batch=8, seq_len=64, vocab=64, seed=1)
  _, state = train_losses(cfg, mesh, batches[:2])
  ck = Checkpoints(ckpt_dir, keep=2)
  ck.save(2, state, None, dict(note="sharding test"), force=True)
  ck.close()
  losses, _ = train_losses(cfg, mesh, batches[2:], state=state)
  _result(losses=losses, devices=jax.device_count())


def check_restore(ckpt_dir, mesh_spec):
  """Restores the 8-device checkpoint onto this process's mesh and continues 2 steps."""
  import jax

  from bk_jax.sharding import make_mesh
  from bk_jax.train.checkpoint import Checkpoints
  from bk_jax.train.step import build_sharded_step

  shape = tuple(int(x) for x in mesh_spec.split(","))
  cfg = tiny_config(mesh=shape)
  mesh = make_mesh(cfg.mesh)
  batches = random_batches(4, batch=8, seq_len=64, vocab=64, seed=1)
  _, _, abstract = build_sharded_step(cfg, mesh, 20)
  ck = Checkpoints(ckpt_dir, keep=2)
  state, meta = ck.restore(2, abstract, None)
  ck.close()
  assert meta["note"] == "sharding test"
  on_mesh = all(x.sharding.mesh.devices.size == jax.device_count()
                for x in jax.tree.leaves(state.params))
  losses, _ = train_losses(cfg, mesh, batches[2:], state=state)
  _result(losses=losses, devices=jax.device_count(), on_mesh=on_mesh)


def check_multiprocess_step(out_path, mesh_spec="-1,1,1,1"):
  """Worker of the 2-process tests: the global batch is split by process (shard_batch) along B;
  with a sequence axis each process feeds whole rows to its own devices' (fsdp, sequence)
  shards."""
  import jax

  from bk_jax import distributed
  from bk_jax.ops import sharded_scan
  from bk_jax.sharding import make_mesh

  calls = []
  orig = sharded_scan.sequence_parallel_causal_diag
  sharded_scan.sequence_parallel_causal_diag = lambda *a, **k: calls.append(1) or orig(*a, **k)
  distributed.maybe_initialize(None)
  n_proc, pid = jax.process_count(), jax.process_index()
  cfg = tiny_config(mesh=tuple(int(x) for x in mesh_spec.split(",")))
  mesh = make_mesh(cfg.mesh)
  batches = random_batches(3, batch=8, seq_len=64, vocab=64, seed=2)
  per = 8 // n_proc
  local = [{k: v[pid * per:(pid + 1) * per] for k, v in b.items()} for b in batches]
  losses, _ = train_losses(cfg, mesh, local if n_proc > 1 else batches)
  _result(losses=losses, processes=n_proc, process=pid, devices=jax.device_count(),
          sequence_parallel_calls=len(calls))
  if out_path != "-":
    with open(f"{out_path}.{pid}", "w") as f:
      json.dump(dict(losses=losses, processes=n_proc), f)
  if n_proc > 1:
    jax.distributed.shutdown()


def check_multiprocess_trainer(save_dir, corpus, cache_dir):
  """Worker: the full Trainer (process-0 outputs, collective checkpoints) for a few steps."""
  import jax

  from bk_jax.train.loop import run
  from tiny_configs import tiny_config as train_tiny_config

  c = train_tiny_config(save_dir, corpus, cache_dir, lengths=(32,), steps=3, batch_size=2)
  c.logging.console = False
  c.checkpoint.every_steps = 2
  res = run(c)
  losses = [r["loss"] for r in res["metrics_history"]]
  _result(losses=losses, processes=jax.process_count(), process=jax.process_index(),
          status=res["status"])
  if jax.process_count() > 1:
    jax.distributed.shutdown()


def check_chunkwise(dtype="float64"):
  """Sequence-sharded chunkwise kernel == one device: rotating (complex) and real decays, fresh
  and carried, meshes (sequence 8) and (data 2 x sequence 4); values, state and gradients."""
  import jax

  if dtype == "float64":
    jax.config.update("jax_enable_x64", True)
  import jax.numpy as jnp
  import numpy as np

  from bk_jax.ops.chunkwise import chunkwise
  from bk_jax.sharding import make_mesh

  rng = np.random.default_rng(3)
  out = {}
  for n_data, n_seq in ((1, 8), (2, 4)):
    mesh = make_mesh(dict(data=n_data, fsdp=1, tensor=1, sequence=n_seq))
    b, n, h, kd, d = 4, n_seq * 6, 3, 2, 3
    q, k = (jnp.asarray(rng.normal(size=(b, n, h, kd))) for _ in range(2))
    v = jnp.asarray(rng.normal(size=(b, n, h, d)))
    mod = rng.uniform(0.2, 1.0, (b, n, h))
    mod[:, 7] = 1e-30
    for rotating in (True, False):
      phase = np.exp(1j * rng.uniform(-np.pi, 0, (b, n, h))) if rotating else 1.0
      lc = jnp.asarray(np.log(mod * phase))
      w = jnp.asarray(rng.normal(size=(b, n, h)) * phase)
      s0 = jnp.asarray(rng.normal(size=(b, h, kd, d)) * (1 + 1j if rotating else 1))
      for s in (None, s0):
        def loss(q, k, v, lc, w, s):
          o, last = chunkwise(q, k, v, lc, w, s, chunk=4)
          return jnp.sum(jnp.abs(o) ** 2) + jnp.sum(jnp.real(last)), (o, last)

        argn = (0, 1, 2, 3, 4) + (() if s is None else (5,))
        f = jax.value_and_grad(loss, argnums=argn, has_aux=True)
        (_, (o0, l0)), gr0 = jax.jit(f)(q, k, v, lc, w, s)
        with jax.set_mesh(mesh):
          jaxpr = str(jax.make_jaxpr(lambda *a: loss(*a)[0])(q, k, v, lc, w, s))
          assert "shard_map" in jaxpr, "did not dispatch to the sequence-parallel path"
          (_, (o1, l1)), gr1 = jax.jit(f)(q, k, v, lc, w, s)
        scale = max(float(np.max(np.abs(np.asarray(t)))) for t in jax.tree.leaves(gr0))
        key = f"S{n_seq}_{'complex' if rotating else 'real'}_{'carry' if s is not None else 'fresh'}"
        out[key] = dict(o=float(np.max(np.abs(o0 - o1)) / np.max(np.abs(o0))),
                        carry=_max_tree_diff(l0, l1), grad=_max_tree_diff(gr0, gr1) / scale)
  _result(**out)


def check_train_variant_meshes(overrides, *meshes):
  """check_train_meshes for a model variant (model overrides as JSON, dotted keys for nested
  fields), e.g. the Green's-function mixer or Mamba-2 on a sequence-parallel mesh: losses and
  parameters vs one device, and how many traces ran `ops.chunkwise` sequence-parallel."""
  import jax

  from bk_jax.ops import chunkwise
  from bk_jax.sharding import make_mesh

  calls = []  # traces that went through the sequence-parallel chunkwise kernel
  orig = chunkwise.sequence_parallel_chunkwise
  chunkwise.sequence_parallel_chunkwise = lambda *a, **k: calls.append(1) or orig(*a, **k)
  ov = json.loads(overrides)
  batches = random_batches(3, batch=8, seq_len=64, vocab=64)

  def cfg_for(shape):
    c = tiny_config(mesh=shape)
    for k, v in ov.items():
      *path, leaf = k.split(".")
      node = c.model
      for q in path:
        node = node[q]
      node[leaf] = v
    return c

  cfg = cfg_for((1, 1, 1, 1))
  ref_losses, ref_state = train_losses(cfg, make_mesh(cfg.mesh, devices=jax.devices()[:1]), batches)
  ref_params = jax.device_get(ref_state.params)
  out = {}
  for spec in meshes:
    cfg = cfg_for(tuple(int(x) for x in spec.split(",")))
    calls.clear()
    losses, state = train_losses(cfg, make_mesh(cfg.mesh), batches)
    out[spec] = dict(loss=max(abs(a - b) for a, b in zip(losses, ref_losses)),
                     params=_max_tree_diff(jax.device_get(state.params), ref_params), losses=losses,
                     chunkwise_sequence_parallel_calls=len(calls))
  out["reference_losses"] = ref_losses
  chunkwise.sequence_parallel_chunkwise = orig
  _result(**out)


CHECKS = {name[len("check_"):]: fn for name, fn in globals().items() if name.startswith("check_")}

if __name__ == "__main__":
  sys.path.insert(0, ROOT)
  CHECKS[sys.argv[1]](*sys.argv[2:])

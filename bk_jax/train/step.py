"""The optimizer and the pure, jitted train step with the monitors folded in."""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import nnx

from bk_jax.models import build_model
from bk_jax.models.kinds import reduce_aux
from bk_jax.sharding import batch_sharding, constrain, jit_sharded, replicated, state_shardings
from bk_jax.train import monitors as mon_lib
from bk_jax.train.schedule import learning_rate_schedule
from bk_jax.train.state import TrainState, create_sharded_train_state


def make_optimizer(train_cfg: ml_collections.ConfigDict) -> optax.GradientTransformation:
  """clip_by_global_norm -> adamw at unit learning rate (the step multiplies by the schedule).

  adamw(lr) == lr * adamw(1): keeping the rate outside lets divergence recovery lower it
  (TrainState.lr_scale) without rebuilding the optimizer. Weight decay skips vectors/scalars.
  """
  parts = []
  if train_cfg.grad_clip > 0:
    parts.append(optax.clip_by_global_norm(float(train_cfg.grad_clip)))
  parts.append(optax.adamw(1.0, b1=float(train_cfg.adam_b1), b2=float(train_cfg.adam_b2),
                           eps=float(train_cfg.adam_eps), weight_decay=float(train_cfg.weight_decay),
                           mask=lambda p: jax.tree.map(lambda x: jnp.ndim(x) >= 2, p)))
  return optax.chain(*parts)


def masked_cross_entropy(logits, targets, mask):
  """Mask-weighted mean token cross entropy (float32)."""
  ce = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), targets)
  mask = mask.astype(jnp.float32)
  return jnp.sum(ce * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def _select(pred, new, old):
  return jax.tree.map(lambda a, b: jnp.where(pred, a, b), new, old)


def make_train_step(graphdef, tx: optax.GradientTransformation, lr_schedule: Callable,
                    config: ml_collections.ConfigDict, *, inject_nonfinite_all: bool = False):
  """Returns the pure `train_step(state, batch) -> (state, metrics)`.

  batch: dict(inputs int32 (B, N), targets int32 (B, N), mask float32 (B, N)).
  metrics (device scalars) under the seed's names (`metrics.LongContextMetrics`): loss
  (mask-weighted CE), perplexity, gradient_norm (pre-clip), learning_rate, is_nan, is_inf,
  is_spike, spike_ratio, spike_count (so far in this length); under namespaces the figures the
  seed does not define: train/param_norm (after the update), train/skipped_steps (so far in this
  length), train/aux_loss (the MoE's and the step lasso's), every model aux figure ("bk/..." with monitors on,
  "moe/..." with the MoE); and the loop's control flags control/finite, control/diverged (not
  logged).
  A non-finite loss or gradient leaves params and optimizer state unchanged (counted in
  monitors.*.skipped). With `train.grad_accum_steps` = k > 1 the batch is split into k
  microbatches inside the step (lax.scan): one optimizer update from the summed, mask-weighted
  gradients, equal to the full-batch step up to float32 summation order; activation memory is
  that of B / k rows.
  With `model.dropout` > 0 every step drops with its own key, fold_in(key(config.seed), step)
  (and the microbatch's index): a function of the step alone, so a resumed or restored run
  draws the same masks as one that never stopped.
  """
  t = config.train
  bad_steps = tuple(int(s) for s in config.debug.nonfinite_grad_steps)
  accum = int(t.grad_accum_steps)
  dropout = float(config.model.dropout) > 0

  def loss_fn(params, model_state, mb, weight, key):
    model = nnx.merge(graphdef, params, model_state)
    logits, _, aux = model.forward(mb["inputs"], dropout_key=key)
    ce = masked_cross_entropy(logits, mb["targets"], mb["mask"])
    new_model_state = nnx.state(model, nnx.Not(nnx.Param))
    if weight is None:  # the whole batch at once
      return ce + aux["aux_loss"], (ce, aux, new_model_state)
    # microbatch: its share of the batch's masked mean, and 1/accum of the (per-batch) aux loss
    return weight * ce + aux["aux_loss"] / accum, (weight * ce, aux, new_model_state)

  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

  def accumulated(params, model_state, batch, key):
    """Microbatches of B / accum rows (row r goes to microbatch r % accum, so every device keeps
    its own rows), run by lax.scan; gradients are summed in float32. Each microbatch's CE is
    weighted by its share of the batch's mask, so loss and gradients equal the full batch's."""
    b = batch["inputs"].shape[0]
    if b % accum:
      raise ValueError(f"batch size {b} is not divisible by train.grad_accum_steps={accum}")
    micro = jax.tree.map(lambda x: constrain(
        jnp.swapaxes(x.reshape(b // accum, accum, *x.shape[1:]), 0, 1),
        (None, "activation_batch", "activation_length")), batch)
    total_mask = jnp.sum(batch["mask"].astype(jnp.float32))
    weights = jnp.where(total_mask > 0,
                        jnp.sum(micro["mask"].astype(jnp.float32), axis=(1, 2)) / total_mask,
                        1.0 / accum)

    def one(carry, xs):
      gsum, mstate = carry
      mb, w, i = xs
      (obj, (ce, aux, mstate)), g = grad_fn(params, mstate, mb, w,
                                            None if key is None else jax.random.fold_in(key, i))
      gsum = jax.tree.map(lambda a, b: a + b.astype(a.dtype), gsum, g)
      return (gsum, mstate), (obj, ce, aux)

    g0 = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), params)
    (grads, mstate), (objs, ces, auxes) = jax.lax.scan(
        one, (g0, model_state), (micro, weights, jnp.arange(accum)))
    grads = jax.tree.map(lambda g, p: g.astype(p.dtype), grads, params)
    # each figure combines over microbatches as over layers, but the aux loss is averaged
    aux = reduce_aux(config.model.kind, auxes, loss_reduce=jnp.mean)
    return (jnp.sum(objs), (jnp.sum(ces), aux, mstate)), grads

  def train_step(state: TrainState, batch: dict) -> tuple[TrainState, dict]:
    key = jax.random.fold_in(jax.random.key(int(config.seed)), state.step) if dropout else None
    if accum == 1:
      (total, (ce, aux, model_state)), grads = grad_fn(state.params, state.model_state, batch,
                                                       None, key)
    else:
      (total, (ce, aux, model_state)), grads = accumulated(state.params, state.model_state,
                                                           batch, key)
    if inject_nonfinite_all or bad_steps:
      poison = jnp.asarray(inject_nonfinite_all) | jnp.isin(state.step, jnp.asarray(bad_steps or (-1,)))
      grads = jax.tree.map(lambda g: g * jnp.where(poison, jnp.nan, 1.0).astype(g.dtype), grads)
    grad_norm = optax.tree.norm(grads)
    lr = lr_schedule(state.step) * state.lr_scale
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    updates = jax.tree.map(lambda u: lr * u, updates)  # adamw(1.0) already negates
    params = optax.apply_updates(state.params, updates)
    upgrades = aux.get("bk/precision_upgrades", 0)
    monitors, flags = mon_lib.update_monitors(
        state.monitors, loss=ce, grad_norm=jnp.where(jnp.isfinite(total), grad_norm, total),
        upgrades=upgrades, spike_factor=float(t.spike_factor),
        divergence_factor=float(t.divergence_factor), patience=int(t.divergence_patience),
        divergence_min_loss=float(t.divergence_min_loss))
    ok = flags["finite"]
    new_state = state.replace(
        params=_select(ok, params, state.params),
        opt_state=_select(ok, opt_state, state.opt_state),
        model_state=model_state,
        step=state.step + 1,
        monitors=monitors,
    )
    # One metric path (bk_jax.train.metrics): the seed's names, other figures namespaced; a
    # feature that is off contributes no key.
    metrics = {"loss": ce, "perplexity": jnp.exp(ce), "gradient_norm": grad_norm,
               "learning_rate": lr, "is_nan": flags["is_nan"], "is_inf": flags["is_inf"],
               "is_spike": flags["is_spike"], "spike_ratio": flags["spike_ratio"],
               "spike_count": monitors.length.spikes,
               "train/param_norm": optax.tree.norm(new_state.params),
               "train/skipped_steps": monitors.length.skipped}
    for k, v in aux.items():
      if k != "aux_loss":
        metrics[k] = v
    if "moe/expert_load" in aux or "bk/step_mean" in aux:  # the MoE's or the step's lasso
      metrics["train/aux_loss"] = aux["aux_loss"]
    metrics["control/finite"] = flags["finite"]  # control flags for the loop: never logged
    metrics["control/diverged"] = monitors.diverged
    return new_state, metrics

  return train_step


def jit_train_step(train_step, state: TrainState, mesh) -> Callable:
  """jax.jit with explicit in/out shardings and the state donated.

  Traced under `mesh` (bk_jax.sharding.jit_sharded), so with mesh.sequence > 1 the BK core runs
  sequence-parallel; metrics come back replicated (readable on every process).
  """
  s_sh = state_shardings(state, mesh)
  return jit_sharded(train_step, mesh, in_shardings=(s_sh, batch_sharding(mesh)),
                     out_shardings=(s_sh, replicated(mesh)), donate_argnums=0)


def build_sharded_step(config: ml_collections.ConfigDict, mesh, total_steps: int):
  """The trainer's fresh state and jitted step for `config` on `mesh`.

  The same optimizer, schedule, monitors and shardings as the training loop, for the callers
  that time or check one step outside it (the throughput benchmark, the sharding checks).

  Args:
    config: a full run config (model, train, debug sections).
    mesh: the device mesh (`bk_jax.sharding.make_mesh`).
    total_steps: the learning-rate schedule's length.

  Returns:
    (state, step, abstract): the sharded TrainState, the jitted `step(state, batch)` (state
    donated) and the abstract state (the checkpoint-restore target on this mesh).
  """
  tx = make_optimizer(config.train)
  graphdef, state, _, abstract = create_sharded_train_state(
      lambda: build_model(config.model, rngs=nnx.Rngs(config.seed)), tx, mesh)
  step = make_train_step(graphdef, tx, learning_rate_schedule(config.train, total_steps), config)
  return state, jit_train_step(step, state, mesh), abstract

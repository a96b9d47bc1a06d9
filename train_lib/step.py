"""The pure train and eval steps, compiled once over the mesh.

    train_step = step.compile_train_step(model, task, tx, schedule, accum, state_sh, batch_sh)
    state, metrics = train_step(state, batch)     # state is donated
    stats, count = eval_step(state, batch, j)     # the task's stats of eval batch j

The task (train_lib/tasks/base.py) owns the loss and declares its metrics; this file
only differentiates, averages, applies updates and aggregates by the declared kinds.
With grad_accum_steps=k the global batch is split into k micro-batches whose
gradients are averaged (lax.scan), so one step is always one optimizer update. Each
micro-batch gets the key step_key(state.rng, step, i).

Instruments computed inside the step: the RMS of gradients, parameters (before the
update) and updates, over all parameters ("grad_rms") and per top-level submodule
("grad_rms/Dense_0"), next to the loss in the metrics dict.
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from models.layers.fp8 import COLLECTION as SCALES, MAX_DTYPE
from train_lib import metrics as metrics_lib, optim, tasks


EVAL_KEY = 0x65766C   # eval batch j's task key: fold_in(fold_in(state.rng, EVAL_KEY), j)


def step_key(state_rng, step, micro: int = 0, group: int = 0):
  """The key of (seed, step, micro-batch[, parameter group]): the same however many devices
  or processes run the step, and after a resume."""
  key = jax.random.fold_in(jax.random.fold_in(state_rng, step), micro)
  return jax.random.fold_in(key, group) if group else key


def loss_and_stats(model, task, params, model_state, batch, key, train: bool, group=None):
  """The task's (loss, (new model state, stats)) for one (micro-)batch; `key` is split
  into the model's dropout key and the task's own."""
  dropout_key, task_key = (None, None) if key is None else jax.random.split(key)
  apply, new_model_state = tasks.base.make_apply(model, params, model_state, dropout_key,
                                                 train)
  loss, stats = task.loss(apply, batch, task_key, train=train, group=group)
  return loss, (new_model_state(), stats)


def _group_loss(model, task, group, params, group_params, model_state, batch, key):
  full = group_params if group is None else {**params, group: group_params}
  return loss_and_stats(model, task, full, model_state, batch, key, True, group)


def _with_scales(loss_fn):
  """loss_fn(sub, model_state, batch, key) as fn(sub, scales, the rest of the model state,
  batch, key), for differentiating fp8 scales too; None: no fp8 in the model."""
  def fn(sub, scales, rest, batch, key):
    if scales is None:
      return loss_fn(sub, rest, batch, key)
    # as MAX_DTYPE: several uses of one scale combine by max, not sum
    to_max = lambda x: jax.lax.convert_element_type(x, MAX_DTYPE)
    loss, (new_state, stats) = loss_fn(sub, {**rest, SCALES: jax.tree.map(to_max, scales)},
                                       batch, key)
    return loss, ({k: v for k, v in new_state.items() if k != SCALES}, stats)
  return fn


def _split_microbatches(batch, k: int):
  # (B, ...) -> (k, B/k, ...), micro-batch i = examples i::k, so each keeps its
  # even share of every device's rows and no data moves between devices.
  def split(x):
    return x.reshape(x.shape[0] // k, k, *x.shape[1:]).swapaxes(0, 1)
  return jax.tree.map(split, batch)


def _rms(leaves):
  squares = sum(jnp.sum(jnp.square(x.astype(jnp.float32))) for x in leaves)
  return jnp.sqrt(squares / float(max(sum(x.size for x in leaves), 1)))  # > 2**31 in 7B


def rms_instruments(name: str, tree) -> dict:
  """{name: RMS over every leaf, name/module: RMS over each top-level submodule}."""
  out = {name: _rms(jax.tree.leaves(tree))}
  if hasattr(tree, "items"):
    for module, subtree in tree.items():
      out[f"{name}/{module}"] = _rms(jax.tree.leaves(subtree))
  return out


def gradients(model, task, group, params, model_state, batch, state_rng, step,
              accum_steps: int, group_index: int = 0):
  """(mean gradient of the group's parameters over the micro-batches, model state, stats).
  fp8 scales (models/layers/fp8.py) are differentiated too: their "gradient" is their next
  value (the max over micro-batches), written back into the model state, never trained."""
  sub = params if group is None else params[group]
  scales = model_state.get(SCALES)
  rest = {k: v for k, v in model_state.items() if k != SCALES}
  grad_fn = jax.value_and_grad(
      _with_scales(functools.partial(_group_loss, model, task, group, params)),
      argnums=(0, 1), has_aux=True)
  key = lambda i: step_key(state_rng, step, i, group_index)
  rejoin = lambda state, new: state if new is None else {**state, SCALES: new}
  if accum_steps == 1:
    (_, (rest, stats)), (grads, new_scales) = grad_fn(sub, scales, rest, batch, key(0))
    return grads, rejoin(rest, new_scales), stats

  def micro(carry, xs):
    grads_acc, scales_acc, rest, stats_acc = carry
    i, mb = xs
    (_, (rest, stats)), (g, s) = grad_fn(sub, scales, rest, mb, key(i))
    return (jax.tree.map(jnp.add, grads_acc, g), jax.tree.map(jnp.maximum, scales_acc, s),
            rest, metrics_lib.combine(kinds, stats_acc, stats)), None
  micro_batches = _split_microbatches(batch, accum_steps)
  first = jax.tree.map(lambda x: x[0], micro_batches)
  shapes = jax.eval_shape(grad_fn, sub, scales, rest, first, key(0))[0][1][1]
  kinds = {k: task.metrics[k] for k in shapes}
  zeros = jax.tree.map(jnp.zeros_like, sub)
  lowest = jax.tree.map(lambda x: jnp.full_like(x, -jnp.inf), scales)
  (grads, new_scales, rest, stats), _ = jax.lax.scan(
      micro, (zeros, lowest, rest, metrics_lib.zeros(kinds)),
      (jnp.arange(accum_steps), micro_batches))
  return jax.tree.map(lambda g: g / accum_steps, grads), rejoin(rest, new_scales), stats


def _learning_rates(schedule, step) -> dict:
  """learning_rate, or learning_rate/<group> for per-group optimizers."""
  if isinstance(schedule, dict):
    return {f"learning_rate/{group}": fn(step) for group, fn in schedule.items()}
  return {"learning_rate": schedule(step)}


def train_step(state, batch, *, model, task, tx, schedule, accum_steps: int):
  """One update of each parameter group in turn (one group for most tasks)."""
  params, opt_state, model_state = state.params, state.opt_state, state.model_state
  single = tuple(task.groups) == (None,)
  all_grads, all_updates, stats = {}, {}, {}
  for gi, group in enumerate(task.groups):
    grads, model_state, group_stats = gradients(model, task, group, params, model_state,
                                                batch, state.rng, state.step, accum_steps, gi)
    stats.update(group_stats)
    if single:
      updates, opt_state = tx.update(grads, opt_state, params)
      params = optax.apply_updates(params, updates)
      all_grads, all_updates = grads, updates
    else:
      updates, new_opt = optim.for_group(tx, group).update(grads, opt_state[group],
                                                           params[group])
      opt_state = {**opt_state, group: new_opt}
      params = {**params, group: optax.apply_updates(params[group], updates)}
      all_grads[group], all_updates[group] = grads, updates
  metrics_lib.check_stats(task.metrics, stats, type(task).__name__, exact=single)
  kinds = {k: task.metrics[k] for k in stats}
  metrics = {**metrics_lib.finalize(kinds, stats),
             "grad_norm": optax.tree.norm(all_grads), **_learning_rates(schedule, state.step),
             **rms_instruments("grad_rms", all_grads),
             **rms_instruments("param_rms", state.params),
             **rms_instruments("update_rms", all_updates)}
  new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                            model_state=model_state,
                            extra=task.update_extra(state.extra, params, state.step + 1))
  return new_state, metrics


def eval_step(state, batch, index, *, model, task):
  """(stats, number of valid items) of one eval batch; padding has mask 0."""
  key = jax.random.fold_in(jax.random.fold_in(state.rng, EVAL_KEY), index)
  _, (_, stats) = loss_and_stats(model, task, task.eval_params(state), state.model_state,
                                 batch, key, False)
  metrics_lib.check_stats(task.metrics, stats, type(task).__name__)
  if "mask" in batch:
    count = batch["mask"].sum()
  else:
    count = jnp.float32(jax.tree.leaves(batch)[0].shape[0])
  return stats, count


def _traced_in_mesh(fn, mesh, rules):
  """Traces `fn` with the mesh and logical rules in scope, so that a model's
  nn.with_logical_constraint on activations takes effect (a no-op without rules)."""
  @functools.wraps(fn)
  def wrapped(*args):
    with jax.sharding.use_abstract_mesh(mesh.abstract_mesh), nn.logical_axis_rules(rules):
      return fn(*args)
  return wrapped


def compile_train_step(model, task, tx, schedule, accum_steps, state_sharding, batch_sharding,
                       rules=()):
  fn = functools.partial(train_step, model=model, task=task, tx=tx, schedule=schedule,
                         accum_steps=accum_steps)
  return jax.jit(_traced_in_mesh(fn, batch_sharding.mesh, rules),
                 in_shardings=(state_sharding, batch_sharding),
                 out_shardings=(state_sharding, None), donate_argnums=0)


def compile_eval_step(model, task, state_sharding, batch_sharding, rules=()):
  fn = functools.partial(eval_step, model=model, task=task)
  return jax.jit(_traced_in_mesh(fn, batch_sharding.mesh, rules),
                 in_shardings=(state_sharding, batch_sharding, None))

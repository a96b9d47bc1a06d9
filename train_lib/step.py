"""The pure train and eval steps, compiled once over the mesh.

    train_step = step.compile_train_step(model, task, tx, schedule, accum, state_sh, batch_sh)
    state, metrics = train_step(state, batch)     # state is donated
    sums = eval_step(state, batch)                # {"loss", "correct", "count"} sums

With grad_accum_steps=k the global batch is split into k micro-batches whose
gradients are averaged (lax.scan), so one step is always one optimizer update.

Instruments computed inside the step: the RMS of gradients, parameters (before the
update) and updates, over all parameters ("grad_rms") and per top-level submodule
("grad_rms/Dense_0"), next to the loss in the metrics dict.
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax


def _forward(model, task, params, model_state, batch, rng, train: bool):
  variables = {"params": params, **model_state}
  args, kwargs = task.model_inputs(batch)
  rngs = {"dropout": rng} if rng is not None else {}
  if train and model_state:
    output, new_state = model.apply(variables, *args, train=True, rngs=rngs,
                                    mutable=list(model_state), **kwargs)
  else:
    output = model.apply(variables, *args, train=train, rngs=rngs, **kwargs)
    new_state = model_state
  loss, sums = task.loss_and_metrics(output, batch)
  return loss, (new_state, sums)


def _split_microbatches(batch, k: int):
  # (B, ...) -> (k, B/k, ...), micro-batch i = examples i::k, so each keeps its
  # even share of every device's rows and no data moves between devices.
  def split(x):
    return x.reshape(x.shape[0] // k, k, *x.shape[1:]).swapaxes(0, 1)
  return jax.tree.map(split, batch)


def _rms(leaves):
  squares = sum(jnp.sum(jnp.square(x.astype(jnp.float32))) for x in leaves)
  return jnp.sqrt(squares / max(sum(x.size for x in leaves), 1))


def rms_instruments(name: str, tree) -> dict:
  """{name: RMS over every leaf, name/module: RMS over each top-level submodule}."""
  out = {name: _rms(jax.tree.leaves(tree))}
  if hasattr(tree, "items"):
    for module, subtree in tree.items():
      out[f"{name}/{module}"] = _rms(jax.tree.leaves(subtree))
  return out


def train_step(state, batch, *, model, task, tx, schedule, accum_steps: int):
  rng = jax.random.fold_in(state.rng, state.step)
  grad_fn = jax.value_and_grad(functools.partial(_forward, model, task), has_aux=True)

  if accum_steps == 1:
    (_, (model_state, sums)), grads = grad_fn(state.params, state.model_state, batch, rng,
                                              True)
  else:
    def micro(carry, xs):
      grads_acc, model_state, sums_acc = carry
      i, mb = xs
      (_, (model_state, sums)), g = grad_fn(state.params, model_state, mb,
                                            jax.random.fold_in(rng, i), True)
      add = lambda a, b: jax.tree.map(jnp.add, a, b)
      return (add(grads_acc, g), model_state, add(sums_acc, sums)), None
    zeros = jax.tree.map(jnp.zeros_like, state.params)
    zero_sums = {"loss": 0.0, "correct": 0.0, "count": 0.0}
    (grads, model_state, sums), _ = jax.lax.scan(
        micro, (zeros, state.model_state, jax.tree.map(jnp.float32, zero_sums)),
        (jnp.arange(accum_steps), _split_microbatches(batch, accum_steps)))
    grads = jax.tree.map(lambda g: g / accum_steps, grads)

  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  count = jnp.maximum(sums["count"], 1.0)
  metrics = {"loss": sums["loss"] / count, "accuracy": sums["correct"] / count,
             "grad_norm": optax.tree.norm(grads), "learning_rate": schedule(state.step),
             **rms_instruments("grad_rms", grads), **rms_instruments("param_rms", state.params),
             **rms_instruments("update_rms", updates)}
  new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                            model_state=model_state)
  return new_state, metrics


def eval_step(state, batch, *, model, task):
  _, (_, sums) = _forward(model, task, state.params, state.model_state, batch, None, False)
  return sums


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
                 in_shardings=(state_sharding, batch_sharding))

"""The train state: everything a step reads and writes, and what a checkpoint holds.

    state_shardings, state = state.create_sharded(model, tx, task, dummy_batch, seed, mesh,
                                                  rules=config.mesh.rules)

The state is created directly in its sharded layout (eval_shape, then jit with
out_shardings), never materialised whole on one device. Parameters that a model
annotates with logical axis names (and their optimizer moments) are sharded by `rules`.
"""

from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp

from train_lib import optim, partitioning


@flax.struct.dataclass
class TrainState:
  step: jax.Array        # int32 scalar: optimizer updates applied so far
  params: Any            # float32 parameters
  opt_state: Any
  model_state: Any       # non-trained collections, e.g. {"batch_stats": ...}
  rng: jax.Array         # base key; step keys are step.step_key(rng, step, micro-batch)
  extra: Any = None      # the task's own state (an EMA of the parameters, say); {} if none


def init_fn(model, tx, task, dummy_batch, seed: int, boxed: bool = False):
  """The state's initialiser; with boxed=True, annotated leaves stay nn.Partitioned boxes
  (for their logical names), also in the optimizer state that mirrors the parameters."""
  args, kwargs = task.init_inputs(dummy_batch)

  def init():
    rng = jax.random.PRNGKey(seed)
    init_rng, dropout_rng, state_rng = jax.random.split(rng, 3)
    variables = model.init({"params": init_rng, "dropout": dropout_rng}, *args, train=False,
                           **kwargs)
    variables = flax.core.unfreeze(variables)
    params = variables.pop("params")
    if tuple(task.groups) == (None,):
      opt_state = tx.init(params)
    else:  # one optimizer state per parameter group (a GAN's generator and discriminator)
      missing = [g for g in task.groups if g not in params]
      if missing:
        raise ValueError(f"task groups {missing} are not top-level parameter names of the "
                         f"model ({sorted(params)})")
      opt_state = {g: optim.for_group(tx, g).init(params[g]) for g in task.groups}
    state = TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=opt_state,
                       model_state=variables, rng=state_rng, extra=task.init_extra(params))
    return state if boxed else nn.meta.unbox(state)
  return init


def abstract_state(model, tx, task, dummy_batch, seed: int, boxed: bool = False):
  return jax.eval_shape(init_fn(model, tx, task, dummy_batch, seed, boxed))


def create(model, tx, task, dummy_batch, seed: int, shardings):
  """The initial state, created directly in `shardings` (e.g. setup.Setup.state_sharding)."""
  return jax.jit(init_fn(model, tx, task, dummy_batch, seed), out_shardings=shardings)()


def create_sharded(model, tx, task, dummy_batch, seed: int, mesh, rules=()):
  boxed = abstract_state(model, tx, task, dummy_batch, seed, boxed=True)
  shardings = partitioning.state_sharding(mesh, boxed, rules)
  return shardings, create(model, tx, task, dummy_batch, seed, shardings)


def num_params(params) -> int:
  return sum(x.size for x in jax.tree.leaves(params))

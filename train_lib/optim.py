"""config.optim -> an optax GradientTransformation and its learning-rate schedule.

    tx, schedule = optim.build(config.optim, total_steps=config.train.num_steps)

Weight decay skips parameters with fewer than two dimensions (biases, norm scales).
Gradient accumulation happens in the train step (train_lib.step), not here.
"""

import jax
import optax

from train_lib.errors import UserError

SCHEDULES = ("constant", "warmup_cosine", "warmup_linear")
OPTIMIZERS = ("adamw", "sgd")


def build_schedule(config, total_steps: int):
  peak, warmup = config.learning_rate, config.warmup_steps
  end = peak * config.end_learning_rate_factor
  if config.schedule not in SCHEDULES:
    raise UserError(f"optim.schedule={config.schedule!r} is unknown; use one of {SCHEDULES}")
  if warmup < 0 or (warmup >= total_steps and config.schedule != "constant"):
    raise UserError(f"optim.warmup_steps={warmup} must be in [0, train.num_steps={total_steps})")
  warm = optax.linear_schedule(0.0, peak, warmup) if warmup else None
  if config.schedule == "constant":
    rest = optax.constant_schedule(peak)
  elif config.schedule == "warmup_cosine":
    rest = optax.cosine_decay_schedule(peak, total_steps - warmup, alpha=end / peak if peak else 0)
  else:
    rest = optax.linear_schedule(peak, end, total_steps - warmup)
  return optax.join_schedules([warm, rest], [warmup]) if warm else rest


def decay_mask(params):
  return jax.tree.map(lambda p: p.ndim > 1, params)


def build(config, total_steps: int, schedule=None):
  """`schedule` (a step -> learning rate function) replaces config's, e.g. for tools."""
  schedule = schedule or build_schedule(config, total_steps)
  if config.name == "adamw":
    tx = optax.adamw(schedule, b1=config.b1, b2=config.b2, eps=config.eps,
                     weight_decay=config.weight_decay, mask=decay_mask)
  elif config.name == "sgd":
    # Coupled L2 (added to the gradient before momentum), as in the ResNet papers.
    tx = optax.chain(optax.add_decayed_weights(config.weight_decay, mask=decay_mask),
                     optax.sgd(schedule, momentum=config.momentum or None,
                               nesterov=config.nesterov))
  else:
    raise UserError(f"optim.name={config.name!r} is unknown; use one of {OPTIMIZERS}")
  if config.clip_norm < 0:
    raise UserError(f"optim.clip_norm={config.clip_norm} must be >= 0 (0 turns clipping off)")
  if config.clip_norm:
    tx = optax.chain(optax.clip_by_global_norm(config.clip_norm), tx)
  return tx, schedule

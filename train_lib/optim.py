"""config.optim -> an optax GradientTransformation and its learning-rate schedule.

    tx, schedule = optim.build(config.optim, total_steps=config.train.num_steps)
    txs, schedules = optim.build_groups(config.optim, ("generator", "discriminator"), steps)
    optim.for_group(txs, "generator")   # a group's transformation (the one, if shared)

Weight decay skips parameters with fewer than two dimensions (biases, norm scales).
Gradient accumulation happens in the train step (train_lib.step), not here.
"""

import math

import jax
import ml_collections
import numpy as np
import optax

from train_lib import config_reads
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


def schedule_change(old, old_steps: int, new, new_steps: int, start: int) -> str:
  """"" if the learning rates of the steps a resumed run still trains, start..new_steps-1,
  are the same under the saved optimizer config `old` (a dict) and `new`; else the first
  step that differs with both rates. Per-group rates (optim.groups) are compared too."""
  if new_steps <= start:
    return ""
  steps = np.unique(np.linspace(start, new_steps - 1, min(new_steps - start, 4096)).astype(int))
  old_groups, new_groups = dict(old.get("groups") or {}), dict(new.get("groups") or {})
  for group in [None, *sorted(set(old_groups) | set(new_groups))]:
    configs = []
    for config, groups, total in ((old, old_groups, old_steps), (new, new_groups, new_steps)):
      fields = {k: config.get(k) for k in ("learning_rate", "warmup_steps", "schedule",
                                             "end_learning_rate_factor")}
      fields.update({k: v for k, v in dict(groups.get(group) or {}).items() if k in fields})
      configs.append((ml_collections.ConfigDict(fields), total))
    try:
      rates = [np.asarray(build_schedule(c, max(t, 1))(steps)) for c, t in configs]
    except (UserError, TypeError, ValueError):
      return "the saved optimizer config has no schedule this version can rebuild"
    differ = np.flatnonzero(~np.isclose(rates[0], rates[1], rtol=1e-6, atol=0))
    if differ.size:
      i = differ[0]
      where = f"optim.groups.{group}: " if group else ""
      return (f"{where}learning rate {rates[0][i]:.3g} at step {steps[i]} when saved, "
              f"{rates[1][i]:.3g} now")
  return ""


def decay_mask(params):
  return jax.tree.map(lambda p: p.ndim > 1, params)


def check(config, where: str = "optim"):
  """Finite values in range: a learning rate >= 0, betas and momentum in [0, 1), eps > 0,
  weight decay and clipping >= 0."""
  def bad(name, value, rule):
    raise UserError(f"{where}.{name}={value!r} is out of range; it must be {rule}")
  for name in ("learning_rate", "end_learning_rate_factor", "weight_decay", "clip_norm"):
    value = config[name]
    if not math.isfinite(value) or value < 0:
      bad(name, value, "finite and >= 0")
  for name in ("b1", "b2", "momentum"):
    if not 0 <= config[name] < 1:
      bad(name, config[name], "in [0, 1)")
  if not (math.isfinite(config.eps) and config.eps > 0):
    bad("eps", config.eps, "finite and > 0")


def build(config, total_steps: int, schedule=None, where: str = "optim"):
  """`schedule` (a step -> learning rate function) replaces config's, e.g. for tools."""
  check(config, where)
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
  if config.clip_norm:
    tx = optax.chain(optax.clip_by_global_norm(config.clip_norm), tx)
  return tx, schedule


GROUP_FIELDS = ("name", "learning_rate", "schedule", "warmup_steps", "end_learning_rate_factor",
                "weight_decay", "b1", "b2", "eps", "momentum", "nesterov", "clip_norm")


def build_groups(config, groups, total_steps: int):
  """(tx, schedule) for a task's parameter groups: one shared pair where config.groups is
  empty, else ({group: tx}, {group: schedule}), each from config with config.groups[group]'s
  fields in place of config's."""
  overrides = config.get("groups") or {}
  if not overrides:
    return build(config, total_steps)
  unknown = sorted(set(overrides) - set(groups))
  if unknown:
    raise UserError(f"optim.groups names {unknown}, which the task does not have; its "
                    f"parameter groups are {[g for g in groups if g is not None]}")
  txs, schedules = {}, {}
  for group in groups:
    merged = config_reads.copy(config)   # what a group's optimizer reads, optim's run read
    for key, value in (overrides.get(group) or {}).items():
      if key not in GROUP_FIELDS:
        raise UserError(f"optim.groups.{group}.{key} cannot differ per group; a group may "
                        f"set {GROUP_FIELDS}")
      merged[key] = value
    txs[group], schedules[group] = build(merged, total_steps, where=f"optim[{group}]")
  return txs, schedules


def for_group(tx, group):
  """The transformation of one parameter group: tx[group] for per-group optimizers."""
  return tx[group] if isinstance(tx, dict) else tx

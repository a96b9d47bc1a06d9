"""Metrics a task declares, and how each aggregates over micro-batches, batches and hosts.

    kinds = {"loss": MEAN, "accuracy": MEAN, "max_norm": MAX, "tokens": SUM}
    stats = {"loss": mean(nll_sum, count), "max_norm": norm, "tokens": count}  # in a step
    total = combine(kinds, total, stats)     # micro-batches, eval batches (jnp or numpy)
    values = finalize(kinds, total)          # {"loss": nll_sum / count, ...}

A MEAN is carried as [sum, weight] so that batches of any size and hosts add exactly.
Arrays in a step are global, so one step's stats already cover every host.
"""

import jax
import jax.numpy as jnp
import numpy as np

MEAN, SUM, MAX = "mean", "sum", "max"
KINDS = (MEAN, SUM, MAX)


def mean(total, weight):
  """A MEAN metric's stat: the sum of the values and their total weight."""
  return jnp.stack([jnp.asarray(total, jnp.float32), jnp.asarray(weight, jnp.float32)])


def check_declaration(kinds: dict, who: str):
  bad = {k: v for k, v in kinds.items() if v not in KINDS}
  if bad or "loss" not in kinds:
    raise ValueError(f"{who}: metrics must declare 'loss' and each metric as one of {KINDS}; "
                     f"got {kinds}")


def check_stats(kinds: dict, stats: dict, who: str, exact: bool = True):
  """The stats of one step match the declaration (called while tracing); exact=False
  allows a subset that has the loss (a step that updates only some parameter groups)."""
  if (set(stats) != set(kinds)) if exact else not ("loss" in stats and set(stats) <= set(kinds)):
    raise ValueError(f"{who}: the loss returned stats {sorted(stats)} but the task declares "
                     f"metrics {sorted(kinds)}; return exactly the declared ones")
  for k in stats:
    kind = kinds[k]
    want = (2,) if kind == MEAN else ()
    if tuple(jnp.shape(stats[k])) != want:
      raise ValueError(f"{who}: stat {k!r} ({kind}) has shape {jnp.shape(stats[k])}, needs "
                       f"{want}" + (" (use metrics.mean(sum, weight))" if kind == MEAN else ""))


def zeros(kinds: dict) -> dict:
  return {k: jnp.zeros((2,) if kind == MEAN else (), jnp.float32) - (jnp.inf if kind == MAX
                                                                        else 0.0)
          for k, kind in kinds.items()}


def combine(kinds: dict, a: dict, b: dict) -> dict:
  xp = jnp if any(isinstance(v, jax.Array) for v in (*a.values(), *b.values())) else np
  return {k: xp.maximum(a[k], b[k]) if kind == MAX else a[k] + b[k]
          for k, kind in kinds.items()}


def finalize(kinds: dict, stats: dict) -> dict:
  """Each metric's value; a MEAN of zero weight is NaN (nothing was measured)."""
  out = {}
  for k, kind in kinds.items():
    if kind == MEAN:
      total, weight = stats[k][0], stats[k][1]
      if not isinstance(total, jax.Array):  # host values
        out[k] = float(total) / float(weight) if float(weight) else float("nan")
      else:
        out[k] = jnp.where(weight > 0, total / jnp.where(weight > 0, weight, 1.0), jnp.nan)
    else:
      out[k] = stats[k] if isinstance(stats[k], jax.Array) else float(stats[k])
  return out

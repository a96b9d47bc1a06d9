"""--mode=lr_range: the learning-rate range test (Smith, 2017, "Cyclical Learning Rates").

    python main.py --config=configs/digits_mlp.py --workdir=/tmp/lr --mode=lr_range
    result = lr_range.run(config, workdir)   # {"suggested_learning_rate": 0.0031}
    # writes workdir/lr_range.csv (step, learning_rate, loss, smoothed_loss) and
    # workdir/plots/lr_range.png; the last stdout line is the JSON result

The learning rate grows exponentially from lr_range.min_lr to lr_range.max_lr over
lr_range.num_steps real training steps (fresh batches, the config's optimizer with its
schedule replaced); the sweep stops once the smoothed loss exceeds lr_range.diverge_factor
times its minimum. The suggestion is where the smoothed loss falls fastest against
log(learning rate), below the learning rate of its minimum, where the loss turns up.
"""

import csv
import math
import os

import jax
import jax.numpy as jnp
import numpy as np

from train_lib import optim, partitioning, setup, state as state_lib, step
from train_lib.tools import capsule, plots
from train_lib import writers
from train_lib.errors import UserError

EMA = 0.9  # smoothing of the loss that decides when the sweep has diverged


def exponential_schedule(min_lr: float, max_lr: float, num_steps: int):
  """Step i -> min_lr * (max_lr / min_lr) ** (i / (num_steps - 1))."""
  log_min, log_ratio = math.log(min_lr), math.log(max_lr / min_lr)
  return lambda i: jnp.exp(log_min + log_ratio * jnp.minimum(i, num_steps - 1) /
                           (num_steps - 1))


def run(config, workdir: str, devices=None) -> dict:
  lc = config.lr_range
  if not 0 < lc.min_lr < lc.max_lr:
    raise UserError(f"lr_range.min_lr={lc.min_lr} and max_lr={lc.max_lr} must satisfy "
                    "0 < min_lr < max_lr")
  if lc.num_steps < 10:
    raise UserError(f"lr_range.num_steps={lc.num_steps} must be >= 10")
  if lc.diverge_factor <= 1:
    raise UserError(f"lr_range.diverge_factor={lc.diverge_factor} must be > 1")
  workdir = setup.prepare_workdir(workdir)
  s = setup.build(config, devices)
  capsule.write(workdir, config)
  schedule = exponential_schedule(lc.min_lr, lc.max_lr, lc.num_steps)
  tx, _ = optim.build(config.optim, lc.num_steps, schedule=schedule)
  state_sharding, state = state_lib.create_sharded(s.model, tx, s.task, s.dummy_batch,
                                                   config.seed, s.mesh, s.rules)
  train_step = step.compile_train_step(s.model, s.task, tx, schedule,
                                       config.optim.grad_accum_steps, state_sharding,
                                       partitioning.batch_sharding(s.mesh), s.rules)
  writers.console(f"lr_range: {lc.num_steps} steps from {lc.min_lr:g} to {lc.max_lr:g}")

  lrs, losses, average, best, stop = [], [], 0.0, math.inf, ""
  for i in range(lc.num_steps):
    state, metrics = train_step(state, s.data.next_train())
    loss, lr = float(metrics["loss"]), float(metrics["learning_rate"])
    lrs.append(lr)
    losses.append(loss)
    average = EMA * average + (1 - EMA) * loss
    smooth = average / (1 - EMA ** (i + 1))
    if not math.isfinite(loss):
      stop = f"non-finite loss at step {i}, learning rate {lr:.3g}"
      break
    best = min(best, smooth)
    if smooth > lc.diverge_factor * best:
      stop = (f"diverged at step {i}, learning rate {lr:.3g} (smoothed loss {smooth:.4g} > "
              f"{lc.diverge_factor:g} x minimum {best:.4g})")
      break

  lrs, losses = np.array(lrs), np.array(losses)
  steps_per_decade = (lc.num_steps - 1) / math.log10(lc.max_lr / lc.min_lr)
  smoothed = centered_average(losses, window=max(3, int(steps_per_decade / 4) | 1))
  suggested, why = suggest(lrs, smoothed)
  writers.console(f"lr_range: {stop or f'reached max_lr after {len(losses)} steps'}; {why}")
  if jax.process_index() == 0:
    with open(os.path.join(workdir, "lr_range.csv"), "w", newline="") as f:
      out = csv.writer(f)
      out.writerow(["step", "learning_rate", "loss", "smoothed_loss"])
      for i, (lr, loss, sm) in enumerate(zip(lrs, losses, smoothed)):
        out.writerow([i, f"{lr:.6g}", f"{loss:.6g}", f"{sm:.6g}"])
    plots.lr_range(os.path.join(workdir, "plots", "lr_range.png"), lrs, losses, smoothed,
                   suggested, f"lr range test: {config.model.name} on {config.data.name}")
  return {"suggested_learning_rate": float(f"{suggested:.3g}")}


def centered_average(x, window: int):
  """A running median (which drops single spikes), then a running mean, both over `window`
  points centred on each; non-finite points stay non-finite."""
  x = np.asarray(x, np.float64)
  finite = np.isfinite(x)
  out = np.full_like(x, np.nan)
  values = x[finite]
  if not len(values):
    return out
  windows = lambda v: np.lib.stride_tricks.sliding_window_view(
      np.pad(v, window // 2, mode="edge"), window)
  out[finite] = windows(np.median(windows(values), axis=-1)).mean(axis=-1)
  return out


def suggest(lrs, smoothed):
  """(learning rate, reason): steepest descent of the smoothed loss against log(lr),
  among the points below the learning rate of its minimum."""
  finite = np.isfinite(smoothed)
  lrs, smoothed = lrs[finite], smoothed[finite]
  if len(smoothed) < 3:
    return float(lrs[0]) if len(lrs) else 0.0, "too few finite points; lower min_lr"
  lowest = int(np.argmin(smoothed))
  if lowest < 2:
    return float(lrs[0]), (f"the loss never fell (lowest at {lrs[0]:.3g}); lower "
                           "lr_range.min_lr")
  slope = np.gradient(smoothed[:lowest + 1], np.log10(lrs[:lowest + 1]))
  steepest = int(np.argmin(slope[:lowest]))
  return float(lrs[steepest]), (
      f"loss lowest ({smoothed[lowest]:.4g}) at {lrs[lowest]:.3g}, falling fastest "
      f"({slope[steepest]:.3g} per decade) at {lrs[steepest]:.3g}: suggested "
      f"{lrs[steepest]:.3g}")

"""--mode=lr_range: the learning-rate range test (Smith, 2017, "Cyclical Learning Rates").

    python main.py --config=configs/digits_mlp.py --workdir=/tmp/lr --mode=lr_range
    result = lr_range.run(config, workdir)
    # {"suggested_learning_rate": 0.00608, "lowest_loss": 0.1659,
    #  "lowest_loss_learning_rate": 0.00608, "reason": "loss lowest (0.1659) at ..."}
    # writes workdir/lr_range.csv (step, learning_rate, loss, smoothed_loss) and
    # workdir/plots/lr_range.png; the last stdout line is the JSON result
    result = lr_range.suggest(lrs, smoothed, losses)   # the same dict, for a curve you have

The learning rate grows exponentially from lr_range.min_lr to lr_range.max_lr over
lr_range.num_steps real training steps (fresh batches, the config's optimizer with its
schedule replaced); the sweep stops once the smoothed loss exceeds lr_range.diverge_factor
times its minimum. The suggestion is the learning rate at which the smoothed loss turns
up (its minimum), unless the loss blows up less than a factor BELOW_BLOWUP past it: then
that factor below the blow-up. `suggest` says why this rule and not the steepest descent,
which the early fall at tiny learning rates fools.
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
BLOWUP = 0.25        # the loss has blown up once it is this fraction of its fall above the minimum
BELOW_BLOWUP = 3.0   # the suggestion stays this factor below the blow-up
FLOOR = 0.15         # the valley floor: within this fraction of the fall from the minimum
NOISE = 8.0          # a fall within this many times the noise of one step is no fall
TURN = 0.5           # the turn: the last point within this many times that noise of the minimum


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
  result = suggest(lrs, smoothed, losses)
  writers.console(f"lr_range: {stop or f'reached max_lr after {len(losses)} steps'}; "
                  f"{result['reason']}")
  if jax.process_index() == 0:
    with open(os.path.join(workdir, "lr_range.csv"), "w", newline="") as f:
      out = csv.writer(f)
      out.writerow(["step", "learning_rate", "loss", "smoothed_loss"])
      for i, (lr, loss, sm) in enumerate(zip(lrs, losses, smoothed)):
        out.writerow([i, f"{lr:.6g}", f"{loss:.6g}", f"{sm:.6g}"])
    plots.lr_range(os.path.join(workdir, "plots", "lr_range.png"), lrs, losses, smoothed,
                   result["suggested_learning_rate"],
                   f"lr range test: {config.model.name} on {config.data.name}")
  return result


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


def suggest(lrs, smoothed, losses=None) -> dict:
  """The suggestion and why: the learning rate at which the smoothed loss turns up (the
  minimum), or BELOW_BLOWUP (3x) below the point where it blows up if that comes sooner.

  Why not the steepest descent (Smith's and fastai's "steep")? The loss first falls at
  learning rates far too small to train with: Adam moves every parameter by about the
  learning rate from its first step, so the easy, coherent directions (a language model's
  unigram statistics, a classifier's class bias and linear features) are learnt within a
  few dozen steps at 1e-6..1e-4. That early fall is often the steepest part of the curve:
  shakespeare_char at full size (one H200): falling fastest at 4.9e-6, minimum at 1.05e-3,
  the config trains at 1e-3; fashion_mnist_cnn (CPU): fastest at 1.3e-4, minimum at 6.1e-3,
  and 1,000-step runs train best at 6e-3 (2e-3..1e-2 within 10% of it, 1e-3 20% worse). A
  level rule that skips the transient (the first point within 15% of the fall from the
  minimum) still lands 6x low on these curves (1.8e-4 and 1.05e-3): after the transient
  the loss falls gradually, over a decade or more. The minimum is where the loss stops
  improving and turns up: the largest learning rate that still trains in the sweep, which
  Smith's one-cycle schedule takes its peak from. No early fall can move it, nor can one
  spike (the curve is a running median, then a mean). Warmup + cosine runs train at it or
  above: full shakespeare_char's 1,000-step runs are best at 2.4x its minimum (one H200),
  and half the minimum is 10% worse (bench/RESULTS.md run 13). Where the loss blows up
  (rises BLOWUP of its fall above the minimum) soon after the turn, the turn sits at a
  cliff's edge: default's sweep (digits CNN) turns at 0.013 on CPU and 0.027 on an H200,
  both within 0.035 of the cliff, and real runs at 0.03 vary 5x between seeds; a third of
  the blow-up, 0.012 on both, trains as well as the best. On digits (1,797 images, 1,500
  steps) the held-out loss is best at 3e-4..1e-3, where larger learning rates overfit
  sooner: no curve of the training loss sees that.

  The reason also gives where the loss came within FLOOR (15%) of its fall from the
  minimum, the low end of the valley floor. A floor of more than a decade says the sweep
  cannot tell those learning rates apart (a small model that stalls: shakespeare_char:
  runlocal, floor from 4.6e-3, minimum 0.17, 200-step runs best at 3e-3): try runs from
  the floor's low end up.

  `losses` (the raw curve) gives the noise of one step (the median absolute deviation
  from `smoothed`); a fall within NOISE times it is no fall, and "lowest" is the largest
  learning rate whose smoothed loss is within TURN times it of the minimum: on a flat,
  noisy valley floor the argmin lands anywhere over a decade, the turn does not. Returns
  {suggested_learning_rate, lowest_loss, lowest_loss_learning_rate, reason}."""
  lrs, smoothed = np.asarray(lrs, np.float64), np.asarray(smoothed, np.float64)
  finite = np.isfinite(smoothed)
  noise = 0.0
  if losses is not None and finite.any():
    raw = np.asarray(losses, np.float64)[finite]
    noise = 1.4826 * float(np.median(np.abs(raw - smoothed[finite])))
  lrs, smoothed = lrs[finite], smoothed[finite]
  if len(smoothed) < 3:
    first = float(lrs[0]) if len(lrs) else 0.0
    return _result(first, math.nan, first, "too few finite points; lower lr_range.min_lr")
  # The turn, not the argmin: on a flat valley floor the noise decides where the argmin
  # falls, anywhere over a decade; the last point level with the minimum is where the loss
  # turns up.
  level = smoothed <= smoothed.min() + TURN * noise
  lowest = int(np.nonzero(level)[0][-1])
  top = float(np.max(smoothed[:lowest + 1]))
  fall = top - smoothed[lowest]
  if lowest < 2 or fall <= NOISE * noise:
    lowest = int(np.argmin(smoothed))
    return _result(lrs[0], smoothed[lowest], lrs[lowest], (
        f"the loss never fell (lowest {smoothed[lowest]:.4g} at {lrs[lowest]:.3g}, "
        f"{fall:.3g} below its highest, noise {noise:.3g} per step); lower "
        "lr_range.min_lr, or check the model learns (--mode=sanity)"))
  blown = np.nonzero(smoothed[lowest:] > smoothed[lowest] + BLOWUP * fall)[0]
  blowup = float(lrs[lowest + blown[0]]) if len(blown) else math.inf
  suggested = min(float(lrs[lowest]), blowup / BELOW_BLOWUP)
  floor = int(np.argmax(smoothed[:lowest + 1] <= smoothed[lowest] + FLOOR * fall))
  why = (f"loss lowest ({smoothed[lowest]:.4g}) at {lrs[lowest]:.3g}" + (
      f", blown up at {blowup:.3g}: suggested {suggested:.3g}, 1/{BELOW_BLOWUP:g} of that"
      if suggested < lrs[lowest] else f": suggested it") +
      f"; the loss fell from {top:.4g} and was within {FLOOR:.0%} of the fall from its "
      f"minimum from {lrs[floor]:.3g} on")
  if lrs[lowest] > 10 * lrs[floor]:
    why += (f" (a floor of {math.log10(lrs[lowest] / lrs[floor]):.1f} decades, where the sweep "
            f"cannot tell learning rates apart: try runs from {lrs[floor]:.3g} up)")
  if lowest == len(smoothed) - 1:
    why += " (the loss still fell at the last point: raise lr_range.max_lr to see it turn)"
  return _result(suggested, smoothed[lowest], lrs[lowest], why)


def _result(suggested, lowest_loss, lowest_lr, reason) -> dict:
  return {"suggested_learning_rate": float(f"{suggested:.3g}"),
          "lowest_loss": float(f"{lowest_loss:.4g}") if math.isfinite(lowest_loss)
                         else None,
          "lowest_loss_learning_rate": float(f"{lowest_lr:.3g}"), "reason": reason}

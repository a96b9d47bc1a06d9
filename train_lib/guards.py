"""Divergence guards: a non-finite loss, gradient or state stops the run (exit code 3) and
never reaches a checkpoint.

    guard = guards.Guard(config.train.skip_nonfinite_steps, ckpt.directory)
    train_step = guards.skipping(train_step, state_sharding, batch_sharding)  # only if N > 0
    finite = guard.screen([(step, metrics), ...], last_saved)  # host metrics of finite steps
    guard.check_state(state, step, last_saved)                 # before every save

A finite explosion stops the run too: the logged train loss above train.divergence_factor x
the loss measured at initialisation for train.divergence_patience log intervals in a row
(guard.check_loss). While the loss is above that line no periodic checkpoint is saved
(guard.exploding), so the newest checkpoint is the last good one.

With train.skip_nonfinite_steps=N > 0 a step whose loss or gradient norm is non-finite
leaves the parameters, optimizer and model state as they were; it is counted, and the run
stops at the (N+1)-th.
"""

import jax
import jax.numpy as jnp
import numpy as np

from train_lib import writers
from train_lib.checkpointing import flatten
from train_lib.errors import Diverged

QUANTITIES = ("loss", "grad_norm")


def skipping(train_step, state_sharding, batch_sharding):
  """`train_step` that keeps the old params, optimizer and model state where it went non-finite."""
  def guarded(state, batch):
    new, metrics = train_step(state, batch)
    ok = jnp.all(jnp.stack([jnp.isfinite(metrics[q]) for q in QUANTITIES]))
    keep = lambda n, o: jnp.where(ok, n, o)
    return new.replace(params=jax.tree.map(keep, new.params, state.params),
                       opt_state=jax.tree.map(keep, new.opt_state, state.opt_state),
                       model_state=jax.tree.map(keep, new.model_state, state.model_state)), metrics
  return jax.jit(guarded, in_shardings=(state_sharding, batch_sharding),
                 out_shardings=(state_sharding, None), donate_argnums=0)


@jax.jit
def _finite_leaves(tree):
  return jax.tree.map(lambda x: jnp.all(jnp.isfinite(x)) if jnp.issubdtype(x.dtype, jnp.inexact)
                      else jnp.bool_(True), tree)


class Guard:

  def __init__(self, max_skips: int, directory: str, divergence_factor: float = 0.0,
               patience: int = 1, initial_loss=None):
    self.max_skips, self.directory, self.skipped = max_skips, directory, []
    self.last_bad = None   # (step, host metrics) of the newest non-finite step
    self.factor, self.patience, self.initial_loss = divergence_factor, patience, initial_loss
    self.above = []        # (step, loss) of the latest log intervals above the line

  @property
  def exploding(self) -> bool:
    return bool(self.above)

  def check_loss(self, step: int, loss: float, last_saved):
    """Stops the run (Diverged) once `patience` logged losses in a row exceed factor x the
    initial loss. Off where the factor is 0 or the initial loss is unknown or not positive."""
    if not (self.factor and self.initial_loss and self.initial_loss > 0):
      return
    line = self.factor * self.initial_loss
    self.above = self.above + [(step, loss)] if loss > line else []
    if len(self.above) >= self.patience:
      good = (f"step {last_saved} in {self.directory} (roll back with "
              f"--config.train.restore_step={last_saved})" if last_saved is not None
              else "none")
      raise Diverged(
          f"diverged: train loss {loss:.4g} at step {step} is over train.divergence_factor="
          f"{self.factor:g} x the initial loss {self.initial_loss:.4g} for {len(self.above)} "
          f"log intervals (since step {self.above[0][0]}); last good checkpoint: {good}; "
          "lower optim.learning_rate or set optim.clip_norm")

  def _stop(self, what: str, step: int, last_saved):
    good = f"step {last_saved} in {self.directory}" if last_saved is not None else "none"
    skips = (f" ({len(self.skipped)} non-finite steps, more than "
             f"train.skip_nonfinite_steps={self.max_skips})"
             if self.max_skips and len(self.skipped) > self.max_skips else "")
    raise Diverged(f"diverged: non-finite {what} at step {step}{skips}; last good "
                   f"checkpoint: {good}")

  def screen(self, pending, last_saved) -> list:
    """(step, metrics) pairs -> the host metrics of the finite steps; stops the run at a
    non-finite one unless it may be skipped."""
    finite = []
    for step, metrics in jax.device_get(pending):
      bad = next((q for q in QUANTITIES if q in metrics and not np.isfinite(metrics[q])), None)
      if bad is None:
        finite.append(metrics)
        continue
      self.skipped.append(step)
      self.last_bad = (step, metrics)
      if len(self.skipped) > self.max_skips:
        self._stop(bad, step, last_saved)
      writers.console(f"step {step}: non-finite {bad}, update skipped ({len(self.skipped)} "
                      f"of at most train.skip_nonfinite_steps={self.max_skips})")
    return finite

  def check_state(self, state, step: int, last_saved):
    """Stops the run, before a save, if any array of the state holds a non-finite value."""
    bad = [path for path, ok in flatten(jax.device_get(_finite_leaves(state))).items()
           if not ok]
    if bad:
      self._stop(f"values in {', '.join(bad)} (not saved)", step, last_saved)

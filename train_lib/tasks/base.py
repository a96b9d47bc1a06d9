"""The task contract: a task owns the objective, and the core reads only what it declares.

    class MyTask(Task):
      metrics = {"loss": MEAN, "mae": MEAN}          # each metric and how it aggregates
      def loss(self, apply, batch, rng, *, train):
        pred_B = apply(batch["x"], train=train)      # the model's forward pass
        err_B = pred_B - batch["y"]
        n = batch["y"].size
        return (err_B ** 2).mean(), {"loss": mean((err_B ** 2).sum(), n),
                                     "mae": mean(jnp.abs(err_B).sum(), n)}

`apply(*args, method=None, **kwargs)` runs the model on the step's parameters (dropout
keys and mutable collections such as batch statistics are handled); `rng` is the task's
own key for this (seed, step, micro-batch), for noise, masks and augmentation. The step
averages the gradient of the returned loss over micro-batches and aggregates the stats
by their declared kind (train_lib/metrics.py).

A task with several optimizers (a GAN) lists its parameter groups in `groups`: top-level
keys of the model's parameters, each with an optimizer of its own, updated in that order,
each by the gradient of `loss(..., group=name)`. A task may keep state of its own
beside the parameters (an EMA copy of the weights) with `init_extra` / `update_extra`.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np

from train_lib.errors import UserError
from train_lib.metrics import MAX, MEAN, SUM, mean  # noqa: F401  (re-exported for tasks)


class Task:
  unit = "examples"          # what items_per_batch counts: "examples" or "tokens"
  metrics = {"loss": MEAN}   # name -> MEAN | SUM | MAX; "loss" is always declared
  console = ()               # metrics shown on the progress line after the loss
  groups = (None,)           # None: one optimizer over all parameters
  loss_floor = 0.0           # the least loss possible (sanity's overfit target)
  overfit_with_fixed_key = False  # sanity: overfit one batch with the step's key held fixed
  overfit_groups = None      # sanity: the parameter groups that overfit one batch; None = all
  sample_outputs = ()        # what --mode=sample writes, if the task can sample

  def __init__(self, config, data, model):
    self.config, self.data, self.model = config, data, model

  # -- the objective ------------------------------------------------------------------
  def init_inputs(self, batch):
    """(args, kwargs) for model.init on a dummy batch: every parameter must be created."""
    raise NotImplementedError(f"{type(self).__name__} must define init_inputs(batch)")

  def loss(self, apply, batch, rng, *, train: bool, group=None):
    """(scalar loss to differentiate, {metric: stat}) for one (micro-)batch."""
    raise NotImplementedError(f"{type(self).__name__} must define loss(apply, batch, rng, "
                              "train=...)")

  def summarize(self, values: dict) -> dict:
    """Derived metrics from the aggregated ones (perplexity from the loss, ...)."""
    return values

  def items_per_batch(self, batch_size: int) -> int:
    return batch_size

  # -- state of the task's own ----------------------------------------------------------
  def init_extra(self, params):
    return {}

  def update_extra(self, extra, params, step):
    return extra

  def eval_params(self, state):
    """The parameters that evaluation and sampling use (an EMA copy, say)."""
    return state.params

  # -- what sanity and diagnosis expect ---------------------------------------------------
  def initial_loss(self):
    """The loss expected at initialisation, or None where there is no such expectation."""
    return None

  def input_free_loss(self, host_batch):
    """The least loss a model that ignores its input reaches on this batch (the baseline
    that overfitting one batch must beat), or None."""
    return None

  def targets(self, host_batch):
    """(name, integer targets, number of values) for the data check's histogram, or None."""
    return None

  def shuffle_targets(self, batch, rng):
    """The batch with its targets permuted across its examples by a permutation drawn from
    the key `rng` (traced under jit): each input is paired with another example's target,
    the targets' distribution stays (sanity's label_signal check trains on both).
    rng=None: the batch in the same structure with the targets in place, so that one
    compiled step trains on both. None: the task has no targets to shuffle (a generative or
    self-supervised objective); sanity then skips the check and says so."""
    return None

  def check_output(self, output, batch) -> str:
    """What is wrong with the model's output for this task, or ""."""
    return ""

  def examples(self, host_batch) -> dict:
    """A few training examples as the model sees them, for sanity's data check to show:
    {"images": [N, H, W, C], "labels": [N] or None}, {"text": [str, ...]}, or {}."""
    return {}


class ImageTask(Task):
  """A task on images [B, H, W, C]: refuses other data, knows the pixel range [0, 255] in
  the data's normalised units (self.low, self.high), shows examples as a grid."""

  def __init__(self, config, data, model):
    super().__init__(config, data, model)
    if getattr(data, "example_shape", None) is None or len(data.example_shape) != 3:
      raise UserError(f"data.name={data.config.name!r} is not an image dataset; task "
                      f"{config.name!r} needs images")
    m, s = getattr(data, "mean", 0.0), getattr(data, "std", 1.0)
    self.low, self.high = (0.0 - m) / s, (255.0 - m) / s

  def examples(self, host_batch):
    return image_examples(host_batch["image"], host_batch.get("label"))


def sample_in_batches(sample_batch, key, num: int, batch_size: int):
  """num samples as one numpy array, drawn batch_size at a time by sample_batch(key, n);
  the batch that starts at sample i draws from fold_in(key, i)."""
  return np.concatenate([
      np.asarray(sample_batch(jax.random.fold_in(key, i), min(batch_size, num - i)))
      for i in range(0, num, batch_size)])


def to_pixels(data, images_BxHxWxC):
  """Images in the data's normalised units -> its raw pixel units, clipped to [0, 255]."""
  raw = np.asarray(images_BxHxWxC) * getattr(data, "std", 1.0) + getattr(data, "mean", 0.0)
  return np.clip(raw, 0.0, 255.0)


def image_examples(images, labels=None) -> dict:
  return {"images": images[:32], "labels": None if labels is None else labels[:32]}


def text_examples(windows, decode) -> dict:
  return {"text": [decode(w) for w in windows[:4]]} if decode is not None else {}


def entropy_of(labels, num_values: int, smoothing: float = 0.0) -> float:
  """Entropy (nats) of the empirical distribution of integer labels, optionally smoothed:
  the loss of the best constant prediction."""
  labels = np.asarray(labels).ravel()
  p = np.bincount(labels[(labels >= 0) & (labels < num_values)], minlength=num_values)
  p = p / max(p.sum(), 1)
  q = (1 - smoothing) * p + smoothing / num_values
  q = q[q > 0]
  return float(-(q * np.log(q)).sum())


def permute_rows(rng, batch: dict, keys) -> dict:
  """batch with the arrays named in `keys` (those present) permuted along axis 0 by one
  permutation drawn from `rng`; rng=None: batch unchanged."""
  if rng is None:
    return batch
  perm_B = jax.random.permutation(rng, jax.tree.leaves(batch)[0].shape[0])
  return {k: v[perm_B] if k in keys else v for k, v in batch.items()}


def permute_where(rng, values, mask):
  """values with the entries where mask > 0 permuted among themselves (over every axis),
  the others in place; rng=None: values unchanged."""
  if rng is None:
    return values
  flat, picked = values.reshape(-1), mask.reshape(-1) > 0
  in_order = jnp.argsort(jnp.where(picked, 0, 1), stable=True)   # picked first, in order
  shuffled = jnp.argsort(jnp.where(picked, jax.random.uniform(rng, picked.shape), 2.0),
                         stable=True)                             # picked first, shuffled
  return flat.at[in_order].set(flat[shuffled]).reshape(values.shape)


def uniform_loss(num_values) -> float:
  return math.log(num_values) if num_values else None


def make_apply(model, params, model_state, rng, train: bool):
  """(apply, new_model_state()) for one forward pass of the step: each call gets its own
  dropout key, and updates of mutable collections chain from call to call."""
  state = {"model_state": model_state, "calls": 0}

  def apply(*args, method=None, **kwargs):
    rngs = {}
    if rng is not None:
      rngs = {"dropout": jax.random.fold_in(rng, state["calls"])}
    state["calls"] += 1
    variables = {"params": params, **state["model_state"]}
    kwargs.setdefault("train", train)
    if train and state["model_state"]:
      out, new = model.apply(variables, *args, rngs=rngs, method=method,
                             mutable=list(state["model_state"]), **kwargs)
      state["model_state"] = {**state["model_state"], **new}
      return out
    return model.apply(variables, *args, rngs=rngs, method=method, **kwargs)

  return apply, lambda: state["model_state"]

"""Tasks: what the model's output is scored against (loss and metrics).

    task = tasks.build(config.task, num_classes=10)
    loss, sums = task.loss_and_metrics(logits, batch)  # sums: {"loss", "correct", "count"}
    task.summarize(sums) -> {"loss": ..., "accuracy": ...}

Metrics are sums over the (masked) examples so that batches and hosts add up exactly.
"""

import jax
import jax.numpy as jnp
import optax

from train_lib.errors import UserError


class Classification:
  input_key = "image"

  def __init__(self, config, num_classes: int):
    if not 0.0 <= config.label_smoothing < 1.0:
      raise UserError(f"task.label_smoothing={config.label_smoothing} must be in [0, 1)")
    self.label_smoothing, self.num_classes = config.label_smoothing, num_classes

  def loss_and_metrics(self, logits_BxC, batch):
    labels_B = batch["label"]
    mask_B = batch.get("mask", jnp.ones(labels_B.shape, jnp.float32))
    logits_BxC = logits_BxC.astype(jnp.float32)
    targets_BxC = optax.smooth_labels(jax.nn.one_hot(labels_B, self.num_classes),
                                      self.label_smoothing)
    loss_B = optax.softmax_cross_entropy(logits_BxC, targets_BxC)
    count = mask_B.sum()
    sums = {"loss": (loss_B * mask_B).sum(),
            "correct": ((logits_BxC.argmax(-1) == labels_B) * mask_B).sum(),
            "count": count}
    return sums["loss"] / jnp.maximum(count, 1.0), sums

  @staticmethod
  def summarize(sums):
    count = max(float(sums["count"]), 1.0)
    return {"loss": float(sums["loss"]) / count, "accuracy": float(sums["correct"]) / count}


TASKS = {"classification": Classification}


def build(config, **info):
  if config.name not in TASKS:
    raise UserError(f"task.name={config.name!r} is unknown; use one of {sorted(TASKS)}")
  return TASKS[config.name](config, **info)

"""Supervised classification: an image (or any input) -> logits over classes.

    config.task.name = "classification"; config.task.label_smoothing = 0.1
"""

import math

import jax
import jax.numpy as jnp
import optax

from train_lib.errors import UserError
from train_lib.tasks import register
from train_lib.tasks.base import MEAN, Task, entropy_of, mean, image_examples, permute_rows
from train_lib.tasks.base import uniform_loss


@register("classification")
class Classification(Task):
  metrics = {"loss": MEAN, "accuracy": MEAN}
  console = ("accuracy",)

  def __init__(self, config, data, model):
    super().__init__(config, data, model)
    if not 0.0 <= config.label_smoothing < 1.0:
      raise UserError(f"task.label_smoothing={config.label_smoothing} must be in [0, 1)")
    if not data.num_classes:
      raise UserError(f"data.name={data.config.name!r} has no classes; classification needs "
                      "an image dataset (use task.name='lm' for text)")
    self.label_smoothing, self.num_classes = config.label_smoothing, data.num_classes

  @property
  def loss_floor(self) -> float:
    """The least loss possible: the entropy of the smoothed targets (0 without smoothing)."""
    e, c = self.label_smoothing, self.num_classes
    if not e:
      return 0.0
    on, off = 1 - e + e / c, e / c
    return -(on * math.log(on) + (c - 1) * off * math.log(off))

  def init_inputs(self, batch):
    return (batch["image"],), {}

  def loss(self, apply, batch, rng, *, train, group=None):
    labels_B = batch["label"]
    mask_B = batch.get("mask", jnp.ones(labels_B.shape, jnp.float32))
    logits_BxC = apply(batch["image"]).astype(jnp.float32)
    targets_BxC = optax.smooth_labels(jax.nn.one_hot(labels_B, self.num_classes),
                                      self.label_smoothing)
    loss_B = optax.softmax_cross_entropy(logits_BxC, targets_BxC)
    count = mask_B.sum()
    total = (loss_B * mask_B).sum()
    correct = ((logits_BxC.argmax(-1) == labels_B) * mask_B).sum()
    return total / jnp.maximum(count, 1.0), {"loss": mean(total, count),
                                              "accuracy": mean(correct, count)}

  def initial_loss(self):
    return uniform_loss(self.num_classes)

  def input_free_loss(self, host_batch):
    return entropy_of(host_batch["label"], self.num_classes, self.label_smoothing)

  def targets(self, host_batch):
    return "label", host_batch["label"], self.num_classes

  def shuffle_targets(self, batch, rng):
    return permute_rows(rng, batch, ("label", "mask"))

  def check_output(self, output, batch) -> str:
    want = (batch["label"].shape[0], self.num_classes)
    got = getattr(output, "shape", None)
    return "" if tuple(got or ()) == want else \
        f"output {got}, the task needs logits of shape {want}"

  def examples(self, host_batch):
    return image_examples(host_batch["image"], host_batch["label"])

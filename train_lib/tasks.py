"""Tasks: what the model is given and what its output is scored against.

    task = tasks.build(config.task, data)      # data: input_pipeline.Data (its sizes)
    args, kwargs = task.model_inputs(batch)    # model.apply(variables, *args, **kwargs)
    loss, sums = task.loss_and_metrics(output, batch)  # sums: {"loss", "correct", "count"}
    task.summarize(sums) -> {"loss": ..., "accuracy": ...}

Metrics are sums over the (masked) examples so that batches and hosts add up exactly.
"""

import jax
import jax.numpy as jnp
import optax

from train_lib.errors import UserError


import math


class Classification:
  unit = "examples"

  def __init__(self, config, data):
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

  def model_inputs(self, batch):
    return (batch["image"],), {}

  def items_per_batch(self, batch_size: int) -> int:
    return batch_size

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


class LanguageModeling:
  """Next-token prediction: tokens[:, :-1] predict tokens[:, 1:] where mask is 1.

  The model returns per-position {"nll", "correct"} (its fused head and loss).
  Metrics: loss (nats per token), perplexity, bits per byte, accuracy.
  """
  unit = "tokens"
  loss_floor = 0.0

  def __init__(self, config, data):
    if not data.vocab_size:
      raise UserError(f"data.name={data.config.name!r} is not a text dataset; the lm task "
                      "needs one (shakespeare, text, synthetic_tokens)")
    self.bytes_per_token, self.seq_len = data.bytes_per_token, data.seq_len

  def model_inputs(self, batch):
    return (batch["tokens"][:, :-1],), {"targets": batch["tokens"][:, 1:]}

  def items_per_batch(self, batch_size: int) -> int:
    return batch_size * self.seq_len

  def loss_and_metrics(self, output, batch):
    nll_BxT, correct_BxT = output["nll"], output["correct"]
    mask_BxT = batch.get("mask", jnp.ones(nll_BxT.shape, jnp.float32))
    count = mask_BxT.sum()
    sums = {"loss": (nll_BxT * mask_BxT).sum(), "correct": (correct_BxT * mask_BxT).sum(),
            "count": count}
    return sums["loss"] / jnp.maximum(count, 1.0), sums

  def summarize(self, sums):
    count = max(float(sums["count"]), 1.0)
    loss = float(sums["loss"]) / count
    out = {"loss": loss, "perplexity": math.exp(min(loss, 700.0)),
           "accuracy": float(sums["correct"]) / count}
    if self.bytes_per_token:
      out["bits_per_byte"] = loss / math.log(2) / self.bytes_per_token
    return out


TASKS = {"classification": Classification, "lm": LanguageModeling}


def build(config, data):
  if config.name not in TASKS:
    raise UserError(f"task.name={config.name!r} is unknown; use one of {sorted(TASKS)}")
  return TASKS[config.name](config, data)

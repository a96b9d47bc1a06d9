"""Next-token prediction: tokens[:, :-1] predict tokens[:, 1:] where mask is 1.

    config.task.name = "lm"

A model that offers a fused head+loss (`fused_nll(tokens, targets) -> (nll, correct)`,
as the Transformer does) is called through it, so the [B,T,V] logits never exist
whole; any other model's logits are scored here. Metrics: loss (nats per token),
accuracy, perplexity and bits per byte.
"""

import math

import jax.numpy as jnp
import optax

from train_lib.errors import UserError
from train_lib.tasks import register
from train_lib.tasks.base import MEAN, Task, entropy_of, mean, text_examples
from train_lib.tasks.base import uniform_loss


def token_nll(apply, model, inputs_BxT, targets_BxT):
  """(nll, correct) per position, through the model's fused head+loss where it has one."""
  if hasattr(model, "fused_nll"):
    return apply(inputs_BxT, targets_BxT, method="fused_nll")
  logits_BxTxV = apply(inputs_BxT).astype(jnp.float32)
  nll_BxT = optax.softmax_cross_entropy_with_integer_labels(logits_BxTxV, targets_BxT)
  return nll_BxT, (logits_BxTxV.argmax(-1) == targets_BxT).astype(jnp.float32)


def vocabulary(model, data) -> int:
  """The model's output size (which may exceed the data's vocabulary)."""
  return getattr(model, "vocab_size", None) or data.vocab_size


@register("lm")
class LanguageModeling(Task):
  unit = "tokens"
  metrics = {"loss": MEAN, "accuracy": MEAN}
  console = ("accuracy",)

  def __init__(self, config, data, model):
    super().__init__(config, data, model)
    if not data.vocab_size:
      raise UserError(f"data.name={data.config.name!r} is not a text dataset; the lm task "
                      "needs one (shakespeare, text, synthetic_tokens)")
    self.bytes_per_token, self.seq_len = data.bytes_per_token, data.seq_len

  def init_inputs(self, batch):
    return (batch["tokens"][:, :-1],), {}

  def items_per_batch(self, batch_size: int) -> int:
    return batch_size * self.seq_len

  def loss(self, apply, batch, rng, *, train, group=None):
    targets_BxT = batch["tokens"][:, 1:]
    nll_BxT, correct_BxT = token_nll(apply, self.model, batch["tokens"][:, :-1], targets_BxT)
    mask_BxT = batch.get("mask", jnp.ones(nll_BxT.shape, jnp.float32))
    count = mask_BxT.sum()
    total = (nll_BxT * mask_BxT).sum()
    return total / jnp.maximum(count, 1.0), {
        "loss": mean(total, count), "accuracy": mean((correct_BxT * mask_BxT).sum(), count)}

  def summarize(self, values):
    out = {**values, "perplexity": math.exp(min(values["loss"], 700.0))}
    if self.bytes_per_token:
      out["bits_per_byte"] = values["loss"] / math.log(2) / self.bytes_per_token
    return out

  def initial_loss(self):
    return uniform_loss(vocabulary(self.model, self.data))

  def input_free_loss(self, host_batch):
    return entropy_of(host_batch["tokens"][:, 1:], vocabulary(self.model, self.data))

  def targets(self, host_batch):
    return "token", host_batch["tokens"][:, 1:], vocabulary(self.model, self.data)

  def check_output(self, output, batch) -> str:
    B, T = batch["tokens"][:, 1:].shape
    shapes = [tuple(getattr(x, "shape", ())) for x in
              (output if isinstance(output, (tuple, list)) else (output,))]
    if shapes in ([(B, T), (B, T)], [(B, T, vocabulary(self.model, self.data))]):
      return ""
    return (f"output {shapes}, the lm task needs logits [{B}, {T}, vocab] or, from a fused "
            f"head, (nll, correct) of shape ({B}, {T})")

  def examples(self, host_batch):
    return text_examples(host_batch["tokens"], getattr(self.data, "decode", None))

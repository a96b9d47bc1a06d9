"""Next-token prediction: tokens[:, :-1] predict tokens[:, 1:] where mask is 1.

    config.task.name = "lm"

A batch may carry its targets apart, "targets": i32[B, T] in place of tokens[:, 1:]
(sanity's label_signal check permutes them across the batch: shuffle_targets).

A model that offers a fused head+loss (`fused_nll(tokens, targets) -> (nll, correct)`,
as the Transformer does) is called through it, so the [B,T,V] logits never exist
whole; any other model's logits are scored here. Metrics: loss (nats per token),
accuracy, perplexity and bits per byte (the targets' nats over the bytes they cover,
data.token_bytes: comparable across tokenizers).

A model with auxiliary losses (a mixture of experts: models/moe.py) names them in
`aux_metrics` (a tuple of names) and, called with `with_aux=True`, returns `(output, aux)`:
aux["loss"] is added to the objective (the `loss` metric stays the NLL) and each named
scalar is logged as a MEAN metric over tokens.
"""

import math

import jax.numpy as jnp
import numpy as np
import optax

from train_lib.errors import UserError
from train_lib.tasks import register
from train_lib.tasks.base import MEAN, Task, entropy_of, mean, text_examples
from train_lib.tasks.base import permute_rows, uniform_loss


def token_nll(apply, model, inputs_BxT, targets_BxT, with_aux: bool = False):
  """(nll, correct) per position, through the model's fused head+loss where it has one;
  with_aux: ((nll, correct), aux) from a model that declares aux_metrics."""
  kwargs = {"with_aux": True} if with_aux else {}
  if hasattr(model, "fused_nll"):
    return apply(inputs_BxT, targets_BxT, method="fused_nll", **kwargs)
  out = apply(inputs_BxT, **kwargs)
  logits_BxTxV, aux = out if with_aux else (out, None)
  logits_BxTxV = logits_BxTxV.astype(jnp.float32)
  nll_BxT = optax.softmax_cross_entropy_with_integer_labels(logits_BxTxV, targets_BxT)
  result = nll_BxT, (logits_BxTxV.argmax(-1) == targets_BxT).astype(jnp.float32)
  return (result, aux) if with_aux else result


def aux_metrics(model) -> tuple:
  """The names of the model's auxiliary metrics (empty for most models)."""
  return tuple(getattr(model, "aux_metrics", ()))


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
                      "needs one (shakespeare, text, tfds:NAME, synthetic_tokens)")
    self.seq_len = data.seq_len
    token_bytes = getattr(data, "token_bytes", None)   # bits per byte: the bytes targets cover
    self.token_bytes = None if token_bytes is None else np.asarray(token_bytes, np.float32)
    if self.token_bytes is not None:
      self.metrics = {**self.metrics, "bits_per_byte": MEAN}
    self.aux_names = aux_metrics(model)
    if self.aux_names:   # declared per instance: the model decides which metrics exist
      self.metrics = {**self.metrics, **{name: MEAN for name in self.aux_names}}

  def init_inputs(self, batch):
    return (batch["tokens"][:, :-1],), {}

  def items_per_batch(self, batch_size: int) -> int:
    return batch_size * self.seq_len

  def loss(self, apply, batch, rng, *, train, group=None):
    targets_BxT = batch.get("targets", batch["tokens"][:, 1:])
    out = token_nll(apply, self.model, batch["tokens"][:, :-1], targets_BxT,
                    with_aux=bool(self.aux_names))
    (nll_BxT, correct_BxT), aux = out if self.aux_names else (out, {})
    mask_BxT = batch.get("mask", jnp.ones(nll_BxT.shape, jnp.float32))
    count = mask_BxT.sum()
    total = (nll_BxT * mask_BxT).sum()
    stats = {"loss": mean(total, count), "accuracy": mean((correct_BxT * mask_BxT).sum(), count)}
    if self.token_bytes is not None:   # nats -> bits, over the bytes the targets stand for
      covered = (jnp.take(self.token_bytes, targets_BxT, mode="clip") * mask_BxT).sum()
      stats["bits_per_byte"] = mean(total / math.log(2), covered)
    stats.update({name: mean(aux[name] * count, count) for name in self.aux_names})
    loss = total / jnp.maximum(count, 1.0)
    return (loss + aux["loss"] if self.aux_names else loss), stats

  def summarize(self, values):
    return {**values, "perplexity": math.exp(min(values["loss"], 700.0))}

  def initial_loss(self):
    return uniform_loss(vocabulary(self.model, self.data))

  def input_free_loss(self, host_batch):
    return entropy_of(host_batch["tokens"][:, 1:], vocabulary(self.model, self.data))

  def targets(self, host_batch):
    return "token", host_batch["tokens"][:, 1:], vocabulary(self.model, self.data)

  def shuffle_targets(self, batch, rng):
    """Each window's next-token targets are another window's (with its mask)."""
    return permute_rows(rng, {**batch, "targets": batch["tokens"][:, 1:]}, ("targets", "mask"))

  def check_output(self, output, batch) -> str:
    B, T = batch["tokens"][:, 1:].shape
    if self.aux_names and isinstance(output, tuple) and isinstance(output[-1], dict):
      output = output[0]   # (output, aux) of a model with auxiliary losses
    shapes = [tuple(getattr(x, "shape", ())) for x in
              (output if isinstance(output, (tuple, list)) else (output,))]
    if shapes in ([(B, T), (B, T)], [(B, T, vocabulary(self.model, self.data))]):
      return ""
    return (f"output {shapes}, the lm task needs logits [{B}, {T}, vocab] or, from a fused "
            f"head, (nll, correct) of shape ({B}, {T})")

  def examples(self, host_batch):
    return text_examples(host_batch["tokens"], getattr(self.data, "decode", None))

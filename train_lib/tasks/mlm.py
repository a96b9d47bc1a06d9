"""Masked language modelling (BERT): predict the tokens hidden from a bidirectional encoder.

    config.task.name = "mlm"; config.task.mask_rate = 0.15
    config.model.causal = False; config.model.vocab_size = 257   # 256 bytes + [MASK]

Each step draws, from the task's key, `mask_rate` of the positions; of those, 80% are
replaced by the mask token, 10% by a random token of the data's vocabulary and 10% are
kept (Devlin et al., 2019). The loss and accuracy are over the drawn positions only.
Held-out batches draw from a fixed key per batch, so every evaluation hides the same
positions. A batch may carry its targets apart, "targets": i32[B, T] in place of the
tokens themselves (sanity's label_signal check permutes them across the batch).
"""

import jax
import jax.numpy as jnp

from train_lib.errors import UserError
from train_lib.tasks import register
from train_lib.tasks.base import MEAN, Task, entropy_of, mean, permute_rows, text_examples
from train_lib.tasks.base import uniform_loss
from train_lib.tasks.lm import token_nll


def mask_tokens(key, tokens_BxT, rate: float, mask_id: int, vocab_size: int,
                replace_fractions=(0.8, 0.1)):
  """(inputs, selected): `selected` marks the drawn positions; of those, a fraction
  replace_fractions[0] become mask_id, replace_fractions[1] a uniformly random token in
  [0, vocab_size), and the rest keep their token."""
  k_pick, k_how, k_token = jax.random.split(key, 3)
  selected_BxT = jax.random.uniform(k_pick, tokens_BxT.shape) < rate
  how_BxT = jax.random.uniform(k_how, tokens_BxT.shape)
  to_mask, to_random = replace_fractions
  random_BxT = jax.random.randint(k_token, tokens_BxT.shape, 0, vocab_size, tokens_BxT.dtype)
  inputs_BxT = jnp.where(selected_BxT & (how_BxT < to_mask), mask_id, tokens_BxT)
  inputs_BxT = jnp.where(selected_BxT & (how_BxT >= to_mask) & (how_BxT < to_mask + to_random),
                         random_BxT, inputs_BxT)
  return inputs_BxT.astype(tokens_BxT.dtype), selected_BxT


@register("mlm")
class MaskedLanguageModeling(Task):
  unit = "tokens"
  metrics = {"loss": MEAN, "accuracy": MEAN}
  console = ("accuracy",)
  # Overfitting one batch: memorising its tokens under one fixed draw of hidden positions.
  overfit_with_fixed_key = True

  def __init__(self, config, data, model):
    super().__init__(config, data, model)
    if not data.vocab_size:
      raise UserError(f"data.name={data.config.name!r} is not a text dataset; the mlm task "
                      "needs one (shakespeare, text, synthetic_tokens)")
    self.rate = config.get("mask_rate", 0.15)
    if not 0 < self.rate < 1:
      raise UserError(f"task.mask_rate={self.rate} must be in (0, 1)")
    self.mask_id = config.get("mask_token", -1)
    if self.mask_id < 0:
      self.mask_id = data.vocab_size      # the first id after the data's vocabulary
    vocab = getattr(model, "vocab_size", None)
    if vocab is not None and vocab <= self.mask_id:
      raise UserError(f"model.vocab_size={vocab} has no room for the mask token "
                      f"{self.mask_id}; set model.vocab_size={self.mask_id + 1}")
    if getattr(model, "causal", False):
      raise UserError("the mlm task needs a bidirectional encoder; set model.causal=False")
    self.vocab_size, self.seq_len = vocab or data.vocab_size + 1, data.seq_len

  def init_inputs(self, batch):
    return (batch["tokens"][:, :-1],), {}

  def items_per_batch(self, batch_size: int) -> int:
    return batch_size * self.seq_len

  def loss(self, apply, batch, rng, *, train, group=None):
    tokens_BxT = batch["tokens"][:, :-1]
    inputs_BxT, selected_BxT = mask_tokens(rng, tokens_BxT, self.rate, self.mask_id,
                                           self.data.vocab_size)
    targets_BxT = batch.get("targets", tokens_BxT)
    nll_BxT, correct_BxT = token_nll(apply, self.model, inputs_BxT, targets_BxT)
    weight_BxT = selected_BxT.astype(jnp.float32)
    if "mask" in batch:   # held-out padding
      weight_BxT = weight_BxT * batch["mask"]
    count = weight_BxT.sum()
    total = (nll_BxT * weight_BxT).sum()
    return total / jnp.maximum(count, 1.0), {
        "loss": mean(total, count), "accuracy": mean((correct_BxT * weight_BxT).sum(), count)}

  def initial_loss(self):
    return uniform_loss(self.vocab_size)

  def input_free_loss(self, host_batch):
    return entropy_of(host_batch["tokens"][:, :-1], self.vocab_size)

  def targets(self, host_batch):
    return "token", host_batch["tokens"][:, :-1], self.vocab_size

  def shuffle_targets(self, batch, rng):
    """Each window's hidden tokens are scored against another window's tokens there."""
    return permute_rows(rng, {**batch, "targets": batch["tokens"][:, :-1]}, ("targets", "mask"))

  def examples(self, host_batch):
    return text_examples(host_batch["tokens"], getattr(self.data, "decode", None))

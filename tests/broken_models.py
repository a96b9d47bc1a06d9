"""Deliberately broken models for tests/test_sanity.py, loaded as a user's model would be:
config.model.name = "tests.broken_models:UnusedParam" (each breaks one sanity check).
"""

from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp

from models.mlp import MLP


class UnusedParam(nn.Module):
  """An MLP plus one parameter that the loss never sees (gradient_flow must name it)."""
  num_classes: int
  hidden: Sequence[int] = (64,)

  @nn.compact
  def __call__(self, x_BxHxWxC, train: bool = False):
    self.param("unused", nn.initializers.normal(1.0), (4,))
    return MLP(self.num_classes, self.hidden, name="mlp")(x_BxHxWxC)


class IgnoresInput(nn.Module):
  """A dense layer applied to a constant instead of the image (overfit_one_batch fails)."""
  num_classes: int
  hidden: Sequence[int] = (64,)

  @nn.compact
  def __call__(self, x_BxHxWxC, train: bool = False):
    return nn.Dense(self.num_classes)(jnp.ones((x_BxHxWxC.shape[0], 1)))


class Overconfident(nn.Module):
  """An MLP whose logits are scaled 30x: its initial loss is far above ln(classes)."""
  num_classes: int
  hidden: Sequence[int] = (64,)

  @nn.compact
  def __call__(self, x_BxHxWxC, train: bool = False):
    return 30.0 * MLP(self.num_classes, self.hidden, name="mlp")(x_BxHxWxC)


class RolledRows(nn.Module):
  """An MLP that reads its neighbour's input: every example is paired with the wrong target
  (one batch can still be memorised; label_signal must fail)."""
  num_classes: int
  hidden: Sequence[int] = (64,)

  @nn.compact
  def __call__(self, x_BxHxWxC, train: bool = False):
    return MLP(self.num_classes, self.hidden, name="mlp")(jnp.roll(x_BxHxWxC, 1, axis=0))

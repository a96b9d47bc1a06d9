"""A multi-layer perceptron: the baseline every image model must beat."""

from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from models import register
from models.layers.named import DENSE


@register("mlp")
class MLP(nn.Module):
  num_classes: int
  hidden: Sequence[int] = (256, 256)
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x_BxHxWxC, train: bool = False):
    x_BxD = x_BxHxWxC.reshape(x_BxHxWxC.shape[0], -1).astype(self.dtype)
    for width in self.hidden:
      x_BxD = nn.relu(nn.Dense(width, dtype=self.dtype, kernel_init=DENSE)(x_BxD))
    return nn.Dense(self.num_classes, dtype=self.dtype, kernel_init=DENSE)(x_BxD)

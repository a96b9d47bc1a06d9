"""A small CNN: conv-relu-pool blocks, then a dense layer and the classifier."""

from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from models import register
from models.layers.named import CONV, DENSE


@register("cnn")
class CNN(nn.Module):
  num_classes: int
  features: Sequence[int] = (32, 64)
  dense: int = 128
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x_BxHxWxC, train: bool = False):
    x = x_BxHxWxC.astype(self.dtype)
    for width in self.features:
      x = nn.relu(nn.Conv(width, (3, 3), dtype=self.dtype, kernel_init=CONV)(x))
      if min(x.shape[1:3]) >= 2:
        x = nn.max_pool(x, (2, 2), strides=(2, 2))
    x_BxD = x.reshape(x.shape[0], -1)
    x_BxD = nn.relu(nn.Dense(self.dense, dtype=self.dtype, kernel_init=DENSE)(x_BxD))
    return nn.Dense(self.num_classes, dtype=self.dtype, kernel_init=DENSE)(x_BxD)

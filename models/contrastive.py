"""A convolutional encoder with a projection head, for contrastive learning (SimCLR).

    model = ContrastiveCNN(widths=(32, 64, 128), projection=(256, 128))
    z_BxP = model.apply(v, x_BxHxWxC)                    # projections, for the NT-Xent loss
    h_BxD = model.apply(v, x_BxHxWxC, method="embed")    # encoder features, for a probe

GroupNorm (per example, no batch statistics) keeps the two views of a batch independent
of how the batch is split over devices or micro-batches.
"""

from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from models import register
from models.layers.named import CONV, DENSE


class ConvEncoder(nn.Module):
  widths: Sequence[int]
  dtype: Any

  @nn.compact
  def __call__(self, x_BxHxWxC):
    x = x_BxHxWxC.astype(self.dtype)
    for i, width in enumerate(self.widths):
      for _ in range(2):
        x = nn.Conv(width, (3, 3), dtype=self.dtype, kernel_init=CONV)(x)
        x = nn.relu(nn.GroupNorm(num_groups=min(8, width), dtype=self.dtype)(x))
      if i < len(self.widths) - 1 and min(x.shape[1:3]) >= 2:
        x = nn.max_pool(x, (2, 2), strides=(2, 2))
    return x.mean(axis=(1, 2))   # global average pool: [B, D]


@register("contrastive_cnn")
class ContrastiveCNN(nn.Module):
  widths: Sequence[int] = (32, 64, 128)
  projection: Sequence[int] = (256, 128)   # hidden widths, then the output width
  dtype: Any = jnp.float32

  def setup(self):
    self.encoder = ConvEncoder(self.widths, self.dtype)
    self.head = [nn.Dense(w, dtype=self.dtype, kernel_init=DENSE) for w in self.projection]

  def embed(self, x_BxHxWxC, train: bool = False):
    return self.encoder(x_BxHxWxC).astype(jnp.float32)

  def __call__(self, x_BxHxWxC, train: bool = False):
    z = self.encoder(x_BxHxWxC)
    for i, dense in enumerate(self.head):
      z = dense(z)
      if i < len(self.head) - 1:
        z = nn.relu(z)
    return z.astype(jnp.float32)

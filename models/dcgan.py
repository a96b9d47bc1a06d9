"""DCGAN (Radford et al., 2016) for 28x28 images: a generator and a discriminator in one
module, so that their parameters are two top-level groups with an optimizer each.

    model = DCGAN(latent_dim=64, width=64)
    x_BxHxWxC = model.apply(v, z_BxZ, method="generate")      # in [-1, 1]
    logits_B = model.apply(v, x_BxHxWxC, method="discriminate")
    params = {"generator": ..., "discriminator": ...}

GroupNorm in the generator (no batch statistics: sampling in eval mode draws the same
distribution as training) and LeakyReLU in the discriminator.
"""

from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from models import register
from models.layers.named import CONV, DENSE


class Generator(nn.Module):
  shape: Sequence[int]   # (H, W, C) of the images, H and W divisible by 4
  width: int
  dtype: Any

  @nn.compact
  def __call__(self, z_BxZ):
    H, W, C = self.shape
    h = nn.Dense(H // 4 * W // 4 * 2 * self.width, dtype=self.dtype, kernel_init=DENSE)(z_BxZ)
    h = h.reshape(z_BxZ.shape[0], H // 4, W // 4, 2 * self.width)
    h = nn.relu(nn.GroupNorm(8, dtype=self.dtype)(h))
    h = nn.ConvTranspose(self.width, (4, 4), (2, 2), dtype=self.dtype, kernel_init=CONV)(h)
    h = nn.relu(nn.GroupNorm(8, dtype=self.dtype)(h))
    h = nn.ConvTranspose(self.width // 2, (4, 4), (2, 2), dtype=self.dtype, kernel_init=CONV)(h)
    h = nn.relu(nn.GroupNorm(8, dtype=self.dtype)(h))
    return jnp.tanh(nn.Conv(C, (3, 3), dtype=self.dtype, kernel_init=CONV)(h)).astype(
        jnp.float32)


class Discriminator(nn.Module):
  width: int
  dtype: Any

  @nn.compact
  def __call__(self, x_BxHxWxC):
    h = x_BxHxWxC.astype(self.dtype)
    for w in (self.width // 2, self.width, 2 * self.width):
      h = nn.leaky_relu(nn.Conv(w, (4, 4), (2, 2), dtype=self.dtype, kernel_init=CONV)(h), 0.2)
    h = h.reshape(h.shape[0], -1)
    return nn.Dense(1, dtype=self.dtype, kernel_init=DENSE)(h)[:, 0].astype(jnp.float32)


@register("dcgan")
class DCGAN(nn.Module):
  image_shape: Sequence[int] = (28, 28, 1)
  latent_dim: int = 64
  width: int = 64
  dtype: Any = jnp.float32

  def setup(self):
    if self.image_shape[0] % 4 or self.image_shape[1] % 4:
      raise ValueError(f"image_shape {tuple(self.image_shape)}: height and width must be "
                       "divisible by 4")
    self.generator = Generator(tuple(self.image_shape), self.width, self.dtype)
    self.discriminator = Discriminator(self.width, self.dtype)

  def generate(self, z_BxZ, train: bool = False):
    return self.generator(z_BxZ)

  def discriminate(self, x_BxHxWxC, train: bool = False):
    return self.discriminator(x_BxHxWxC)

  def __call__(self, x_BxHxWxC, z_BxZ, train: bool = False):
    """Both networks once (what init needs): (D(x), D(G(z)))."""
    return self.discriminator(x_BxHxWxC), self.discriminator(self.generator(z_BxZ))

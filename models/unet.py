"""A small U-Net for denoising diffusion (Ho et al., 2020): (x_t, t) -> predicted noise.

    model = UNet(channels=(32, 64, 64))
    eps_BxHxWxC = model.apply(v, x_t_BxHxWxC, t_B)

Residual blocks with GroupNorm and SiLU, the timestep's sinusoidal embedding added in
every block, a down path that halves the resolution between levels, an up path with
skip connections, and a zero-initialised output convolution (the initial prediction is
0, so the initial loss is E[eps^2] = 1).
"""

import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from models import register
from models.layers.named import CONV, DENSE


def timestep_embedding(t_B, dim: int):
  half = dim // 2
  freqs = jnp.exp(-math.log(10000.0) * jnp.arange(half, dtype=jnp.float32) / half)
  angles = t_B.astype(jnp.float32)[:, None] * freqs[None]
  return jnp.concatenate([jnp.sin(angles), jnp.cos(angles)], axis=-1)


class ResBlock(nn.Module):
  width: int
  dtype: Any

  @nn.compact
  def __call__(self, x, emb_BxE):
    groups = lambda c: min(8, c)
    h = nn.silu(nn.GroupNorm(groups(x.shape[-1]), dtype=self.dtype)(x))
    h = nn.Conv(self.width, (3, 3), dtype=self.dtype, kernel_init=CONV)(h)
    h = h + nn.Dense(self.width, dtype=self.dtype, kernel_init=DENSE)(nn.silu(emb_BxE))[:, None,
                                                                                        None]
    h = nn.silu(nn.GroupNorm(groups(self.width), dtype=self.dtype)(h))
    h = nn.Conv(self.width, (3, 3), dtype=self.dtype, kernel_init=CONV)(h)
    if x.shape[-1] != self.width:
      x = nn.Conv(self.width, (1, 1), dtype=self.dtype, kernel_init=CONV)(x)
    return x + h


@register("unet")
class UNet(nn.Module):
  channels: Sequence[int] = (32, 64, 64)   # per resolution level
  embed_dim: int = 128
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x_BxHxWxC, t_B, train: bool = False):
    C = x_BxHxWxC.shape[-1]
    emb = timestep_embedding(t_B, self.embed_dim)
    emb = nn.Dense(self.embed_dim * 2, dtype=self.dtype, kernel_init=DENSE)(emb)
    emb = nn.Dense(self.embed_dim * 2, dtype=self.dtype, kernel_init=DENSE)(nn.silu(emb))
    h = nn.Conv(self.channels[0], (3, 3), dtype=self.dtype, kernel_init=CONV)(
        x_BxHxWxC.astype(self.dtype))
    skips = []
    for i, width in enumerate(self.channels):
      h = ResBlock(width, self.dtype)(h, emb)
      skips.append(h)
      if i < len(self.channels) - 1:
        h = nn.avg_pool(h, (2, 2), strides=(2, 2), padding="SAME")
    h = ResBlock(self.channels[-1], self.dtype)(h, emb)
    for i, width in reversed(list(enumerate(self.channels))):
      skip = skips[i]
      if h.shape[1:3] != skip.shape[1:3]:
        h = jax.image.resize(h, (h.shape[0], *skip.shape[1:3], h.shape[-1]), "nearest")
      h = ResBlock(width, self.dtype)(jnp.concatenate([h, skip], axis=-1), emb)
    h = nn.silu(nn.GroupNorm(min(8, h.shape[-1]), dtype=self.dtype)(h))
    out = nn.Conv(C, (3, 3), dtype=self.dtype, kernel_init=nn.initializers.zeros)(h)
    return out.astype(jnp.float32)

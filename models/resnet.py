"""ResNet (He et al., 2015) with basic blocks; ResNet-18 is stage_sizes=(2, 2, 2, 2).

BatchNorm statistics live in the "batch_stats" collection, which the train
state carries. The stem is a 3x3 conv (small images) or the 7x7/2 conv plus
max-pool of the ImageNet model.
"""

from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from models import register
from models.layers.named import CONV, DENSE


class BasicBlock(nn.Module):
  features: int
  strides: int
  dtype: Any

  @nn.compact
  def __call__(self, x_BxHxWxC, train: bool):
    norm = lambda name, **kw: nn.BatchNorm(
        use_running_average=not train, momentum=0.9, dtype=self.dtype, name=name, **kw)
    y = nn.Conv(self.features, (3, 3), (self.strides,) * 2, use_bias=False,
                dtype=self.dtype, kernel_init=CONV, name="conv1")(x_BxHxWxC)
    y = nn.relu(norm("bn1")(y))
    y = nn.Conv(self.features, (3, 3), use_bias=False, dtype=self.dtype, kernel_init=CONV,
                name="conv2")(y)
    # Zero-init the last scale of each block so it starts as the identity (Goyal et al.).
    y = norm("bn2", scale_init=nn.initializers.zeros)(y)
    shortcut = x_BxHxWxC
    if shortcut.shape != y.shape:
      shortcut = nn.Conv(self.features, (1, 1), (self.strides,) * 2, use_bias=False,
                         dtype=self.dtype, kernel_init=CONV, name="proj")(shortcut)
      shortcut = norm("proj_bn")(shortcut)
    return nn.relu(y + shortcut)


@register("resnet")
class ResNet(nn.Module):
  num_classes: int
  stage_sizes: Sequence[int] = (2, 2, 2, 2)
  width: int = 64
  stem: str = "small"   # small (3x3, stride 1) | imagenet (7x7/2 + max-pool)
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x_BxHxWxC, train: bool = False):
    x = x_BxHxWxC.astype(self.dtype)
    if self.stem == "imagenet":
      x = nn.Conv(self.width, (7, 7), (2, 2), use_bias=False, dtype=self.dtype,
                  kernel_init=CONV, name="stem")(x)
    elif self.stem == "small":
      x = nn.Conv(self.width, (3, 3), use_bias=False, dtype=self.dtype, kernel_init=CONV,
                  name="stem")(x)
    else:
      raise ValueError(f"unknown stem {self.stem!r}; use 'small' or 'imagenet'")
    x = nn.BatchNorm(use_running_average=not train, momentum=0.9, dtype=self.dtype,
                     name="stem_bn")(x)
    x = nn.relu(x)
    if self.stem == "imagenet":
      x = nn.max_pool(x, (3, 3), strides=(2, 2), padding="SAME")
    for i, num_blocks in enumerate(self.stage_sizes):
      for j in range(num_blocks):
        strides = 2 if i > 0 and j == 0 else 1
        x = BasicBlock(self.width * 2**i, strides, self.dtype, name=f"stage{i}_block{j}")(x, train)
    x_BxC = jnp.mean(x, axis=(1, 2))
    return nn.Dense(self.num_classes, dtype=self.dtype, kernel_init=DENSE, name="head")(x_BxC)

"""ResNet (He et al., 2015) in torchvision's layout: ResNet-18/34 with basic blocks,
ResNet-50/101/152 with bottleneck blocks.

    ResNet(num_classes=10, stage_sizes=(2, 2, 2, 2))                         # ResNet-18
    ResNet(num_classes=1000, stage_sizes=(3, 4, 6, 3), block="bottleneck",
           stem="imagenet")                                                  # ResNet-50

BatchNorm statistics live in the "batch_stats" collection, which the train state
carries. The stem is a 3x3 conv (small images) or the 7x7/2 conv plus max-pool of the
ImageNet model. Padding is torchvision's (k // 2 on each side, not XLA's "SAME", which
pads strided convs on one side only), and the bottleneck strides in its 3x3 conv
(torchvision's "v1.5"), so torchvision weights load unchanged
(train_lib/weights/torchvision_resnet.py).
"""

from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from models import register
from models.layers.named import CONV, DENSE


def _conv(features, size, strides, dtype, name):
  return nn.Conv(features, (size, size), (strides, strides), padding=size // 2,
                 use_bias=False, dtype=dtype, kernel_init=CONV, name=name)


def _norm(train, dtype, name, **kw):
  # flax momentum 0.9 is torch's momentum 0.1; epsilon 1e-5 as torch.
  return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                      dtype=dtype, name=name, **kw)


def _shortcut(x_BxHxWxC, features, strides, train, dtype):
  """The identity, or a strided 1x1 conv + BN where the shape changes."""
  if x_BxHxWxC.shape[-1] == features and strides == 1:
    return x_BxHxWxC
  return _norm(train, dtype, "proj_bn")(_conv(features, 1, strides, dtype, "proj")(x_BxHxWxC))


class BasicBlock(nn.Module):
  features: int
  strides: int
  dtype: Any

  @nn.compact
  def __call__(self, x_BxHxWxC, train: bool):
    y = _conv(self.features, 3, self.strides, self.dtype, "conv1")(x_BxHxWxC)
    y = nn.relu(_norm(train, self.dtype, "bn1")(y))
    y = _conv(self.features, 3, 1, self.dtype, "conv2")(y)
    # Zero-init the last scale of each block so it starts as the identity (Goyal et al.).
    y = _norm(train, self.dtype, "bn2", scale_init=nn.initializers.zeros)(y)
    return nn.relu(y + _shortcut(x_BxHxWxC, self.features, self.strides, train, self.dtype))


class BottleneckBlock(nn.Module):
  """1x1 down to `features`, 3x3 (strided), 1x1 up to 4 * `features`."""
  features: int
  strides: int
  dtype: Any

  @nn.compact
  def __call__(self, x_BxHxWxC, train: bool):
    y = _conv(self.features, 1, 1, self.dtype, "conv1")(x_BxHxWxC)
    y = nn.relu(_norm(train, self.dtype, "bn1")(y))
    y = _conv(self.features, 3, self.strides, self.dtype, "conv2")(y)
    y = nn.relu(_norm(train, self.dtype, "bn2")(y))
    y = _conv(4 * self.features, 1, 1, self.dtype, "conv3")(y)
    y = _norm(train, self.dtype, "bn3", scale_init=nn.initializers.zeros)(y)
    return nn.relu(y + _shortcut(x_BxHxWxC, 4 * self.features, self.strides, train,
                                 self.dtype))


BLOCKS = {"basic": BasicBlock, "bottleneck": BottleneckBlock}


@register("resnet")
class ResNet(nn.Module):
  num_classes: int
  stage_sizes: Sequence[int] = (2, 2, 2, 2)
  width: int = 64
  block: str = "basic"  # basic (ResNet-18/34) | bottleneck (ResNet-50/101/152)
  stem: str = "small"   # small (3x3, stride 1) | imagenet (7x7/2 + max-pool)
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x_BxHxWxC, train: bool = False):
    if self.block not in BLOCKS:
      raise ValueError(f"unknown block {self.block!r}; use one of {sorted(BLOCKS)}")
    if self.stem not in ("small", "imagenet"):
      raise ValueError(f"unknown stem {self.stem!r}; use 'small' or 'imagenet'")
    imagenet = self.stem == "imagenet"
    x = x_BxHxWxC.astype(self.dtype)
    x = _conv(self.width, 7 if imagenet else 3, 2 if imagenet else 1, self.dtype, "stem")(x)
    x = nn.relu(_norm(train, self.dtype, "stem_bn")(x))
    if imagenet:
      x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    for i, num_blocks in enumerate(self.stage_sizes):
      for j in range(num_blocks):
        strides = 2 if i > 0 and j == 0 else 1
        x = BLOCKS[self.block](self.width * 2**i, strides, self.dtype,
                               name=f"stage{i}_block{j}")(x, train)
    x_BxC = jnp.mean(x, axis=(1, 2))
    return nn.Dense(self.num_classes, dtype=self.dtype, kernel_init=DENSE, name="head")(x_BxC)

"""torchvision's ResNet (resnet18/34/50/101/152 state_dicts) <-> models/resnet.py.

    --config.model.stem=imagenet --config.init_from=torchvision_resnet:resnet50.safetensors
    --config.init_skip='("head",)'      # a 1000-class file into a 10-class model
    --config.init_skip='("stem","head")'   # and into grey images (Fashion-MNIST): the
                                           # stem conv has 1 input channel, not 3
    weights.save("torchvision_resnet", variables, config.model, "out/resnet50.safetensors")

The mapping is read from `variables`, so the depth and block kind are the model's; the
file must match them. Names: conv1/bn1 are our stem/stem_bn, layerN.M our
stage{N-1}_block{M} (conv1..3, bn1..3; downsample.0/.1 are proj/proj_bn), fc our head.
Conv weights OIHW <-> kernels HWIO, fc weight [out, in] <-> kernel [in, out], BN
weight/bias into params scale/bias and running_mean/var into batch_stats mean/var.
models/resnet.py pads as torch does, so the logits match (tests/test_parity_resnet.py).
num_batches_tracked carries nothing and is not written back: torchvision's
load_state_dict(strict=True) fills it in. torchvision's width_per_group (wide_resnet50_2)
and groups (resnext) have no counterpart in models/resnet.py.
"""

import re

from train_lib.errors import UserError
from train_lib.weights import Rule, register


def conv(w_OxIxHxW):
  return w_OxIxHxW.transpose(2, 3, 1, 0)


def conv_back(k_HxWxIxO):
  return k_HxWxIxO.transpose(3, 2, 0, 1)


def linear(w):
  return w.T


def _conv_rule(theirs, ours):
  return [Rule(f"{theirs}.weight", ("params", *ours, "kernel"), conv, conv_back)]


def _bn_rules(theirs, ours):
  return [Rule(f"{theirs}.weight", ("params", *ours, "scale")),
          Rule(f"{theirs}.bias", ("params", *ours, "bias")),
          Rule(f"{theirs}.running_mean", ("batch_stats", *ours, "mean")),
          Rule(f"{theirs}.running_var", ("batch_stats", *ours, "var"))]


def _block_rules(theirs, ours, block_params):
  out = []
  for name in block_params:
    if re.fullmatch(r"conv\d", name):
      out += _conv_rule(f"{theirs}.{name}", (*ours, name))
    elif re.fullmatch(r"bn\d", name):
      out += _bn_rules(f"{theirs}.{name}", (*ours, name))
    elif name == "proj":
      out += _conv_rule(f"{theirs}.downsample.0", (*ours, name))
    elif name == "proj_bn":
      out += _bn_rules(f"{theirs}.downsample.1", (*ours, name))
    else:
      raise UserError(f"torchvision_resnet: no torchvision name for {'/'.join(ours)}/{name}")
  return out


@register("torchvision_resnet")
def rules(model_config, variables):
  if model_config.get("stem", "small") != "imagenet":
    raise UserError("torchvision_resnet: torchvision's ResNet has the 7x7 ImageNet stem; "
                    "set config.model.stem='imagenet'")
  out = []
  for name, params in variables["params"].items():
    stage = re.fullmatch(r"stage(\d+)_block(\d+)", name)
    if name == "stem":
      out += _conv_rule("conv1", ("stem",))
    elif name == "stem_bn":
      out += _bn_rules("bn1", ("stem_bn",))
    elif name == "head":
      out += [Rule("fc.weight", ("params", "head", "kernel"), linear, linear),
              Rule("fc.bias", ("params", "head", "bias"))]
    elif stage:
      out += _block_rules(f"layer{int(stage[1]) + 1}.{stage[2]}", (name,), params)
    else:
      raise UserError(f"torchvision_resnet: no torchvision name for {name}; is "
                      f"config.model.name={model_config.name!r} a ResNet?")
  return out


rules.ignore = r".*\.num_batches_tracked"

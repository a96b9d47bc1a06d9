"""timm's VisionTransformer <-> models/vit.py.

    --config.model.name=vit --config.init_from=timm_vit:vit_small.safetensors
    --config.init_from=timm_vit:in1k.safetensors --config.init_skip='("head",)'  # 10 classes
    python tools/export.py --workdir=runs/vit --format=timm_vit --out=vit.safetensors
    timm.models.vision_transformer.VisionTransformer(**timm_kwargs(config.model, variables))

The model's shape (depth, heads, class token or not) is read from `variables`; the file
must match it: a timm model with class_token=True, global_pool="token" (timm's default)
is pool="token"; one with class_token=False, global_pool="avg" is pool="avg", whose final
norm, after the mean, timm calls fc_norm (its default for "avg"; gap models built with
fc_norm=False normalise before the mean and do not fit). timm keeps nn.GELU exact and
LayerNorm eps 1e-6, as models/vit.py does by default; qkv and every Linear have biases.
Layer scale, register tokens, qk-norm and pre-norm variants carry tensors this model does
not have and are named as extra.

Position embeddings are not interpolated: a file for another image size (or patch size)
is one error naming pos_embed with both shapes. Resize it before loading (timm's
resample_abs_pos_embed), or train at the file's resolution.
"""

import math

import numpy as np

from train_lib.errors import UserError
from train_lib.weights import Rule, register


def linear(w_OxI):
  """torch Linear weight [out, in] <-> our Dense kernel [in, out]."""
  return w_OxI.T


def conv(w_OxIxHxW):
  """torch Conv2d weight [out, in, h, w] -> flax Conv kernel [h, w, in, out]."""
  return w_OxIxHxW.transpose(2, 3, 1, 0)


def conv_back(k_HxWxIxO):
  return k_HxWxIxO.transpose(3, 2, 0, 1)


def reshape(x, *shape):
  """x.reshape(shape), or x as it is where its size does not fit: the loader then names
  the mis-shaped tensor instead of numpy failing here."""
  try:
    return x.reshape(shape)
  except ValueError:
    return x


def split_heads(w_OxI, num_heads):
  """torch Linear into heads, weight [N*H, D] -> our kernel [D, N, H] (bias [N*H] -> [N, H])."""
  if w_OxI.ndim == 1:
    return reshape(w_OxI, num_heads, -1)
  return reshape(w_OxI.T, w_OxI.shape[1], num_heads, -1)


def merge_heads(k_DxNxH):
  if k_DxNxH.ndim == 2:
    return k_DxNxH.reshape(-1)
  return k_DxNxH.reshape(k_DxNxH.shape[0], -1).T


def out_rules(theirs: str, ours: tuple, num_heads: int) -> list:
  """torch Linear out of heads, weight [D, N*H] <-> our kernel [N, H, D]."""
  return [Rule(f"{theirs}.weight", ("params", *ours, "kernel"),
               lambda w_DxF: reshape(w_DxF.T, num_heads, -1, w_DxF.shape[0]),
               lambda k_NxHxD: k_NxHxD.reshape(-1, k_NxHxD.shape[-1]).T),
          Rule(f"{theirs}.bias", ("params", *ours, "bias"))]


def embedding_rules(params, theirs: dict) -> list:
  """Patch embedding, class token and positions: theirs = {ours name: their name}."""
  rules = [Rule(theirs["patch_embed"] + ".weight", ("params", "patch_embed", "kernel"),
                conv, conv_back),
           Rule(theirs["patch_embed"] + ".bias", ("params", "patch_embed", "bias")),
           Rule(theirs["pos_embed"], ("params", "pos_embed"),
                lambda p_1xTxD: p_1xTxD[0], lambda p_TxD: p_TxD[None])]
  if "cls_token" in params:
    rules.append(Rule(theirs["cls_token"], ("params", "cls_token"),
                      lambda c_1x1xD: c_1x1xD.reshape(-1), lambda c_D: c_D.reshape(1, 1, -1)))
  return rules


def norm_rules(theirs: str, ours: tuple) -> list:
  return [Rule(f"{theirs}.weight", ("params", *ours, "scale")),
          Rule(f"{theirs}.bias", ("params", *ours, "bias"))]


def dense_rules(theirs: str, ours: tuple) -> list:
  return [Rule(f"{theirs}.weight", ("params", *ours, "kernel"), linear, linear),
          Rule(f"{theirs}.bias", ("params", *ours, "bias"))]


def num_layers(params) -> int:
  return sum(1 for name in params if name.startswith("layer_"))


def fused_qkv_rules(theirs: str, attn: dict, ours: tuple) -> list:
  """timm's one qkv Linear ([3*N*H, D], q then k then v) <-> our query, key and value.
  Each of the three rules slices its part on the way in; on the way out each rebuilds
  the whole tensor from `attn` (the variables being exported), so it is written once."""
  num_heads = num_heads_of(attn)
  rules = []
  for suffix, leaf in (("weight", "kernel"), ("bias", "bias")):
    whole = lambda _, leaf=leaf: np.concatenate(
        [merge_heads(np.asarray(attn[p][leaf])) for p in ("query", "key", "value")])
    for i, part in enumerate(("query", "key", "value")):
      take = lambda w, i=i: split_heads(np.array_split(w, 3)[i], num_heads)
      rules.append(Rule(f"{theirs}.{suffix}", ("params", *ours, part, leaf), take, whole))
  return rules


def num_heads_of(attn) -> int:
  return attn["query"]["kernel"].shape[1]


@register("timm_vit")
def rules(model_config, variables) -> list:
  params = variables["params"]
  out = embedding_rules(params, {"patch_embed": "patch_embed.proj", "pos_embed": "pos_embed",
                                 "cls_token": "cls_token"})
  for i in range(num_layers(params)):
    t, o = f"blocks.{i}", (f"layer_{i}",)
    out += norm_rules(f"{t}.norm1", (*o, "attn_norm"))
    attn = params[f"layer_{i}"]["attn"]
    out += fused_qkv_rules(f"{t}.attn.qkv", attn, (*o, "attn"))
    out += out_rules(f"{t}.attn.proj", (*o, "attn", "out"), num_heads_of(attn))
    out += norm_rules(f"{t}.norm2", (*o, "mlp_norm"))
    out += dense_rules(f"{t}.mlp.fc1", (*o, "mlp", "wi"))
    out += dense_rules(f"{t}.mlp.fc2", (*o, "mlp", "wo"))
  out += norm_rules("norm" if "cls_token" in params else "fc_norm", ("final_norm",))
  out += dense_rules("head", ("head",))
  return out


def sizes(params, fmt: str) -> dict:
  """The sizes a library needs to build this model, read from its variables."""
  p, _, channels, width = params["patch_embed"]["kernel"].shape
  patches = params["pos_embed"].shape[0] - ("cls_token" in params)
  side = math.isqrt(patches)
  if side * side != patches:
    raise UserError(f"{fmt}: {patches} patches is not a square image; export takes square "
                    "images only (one image size)")
  return dict(image=side * p, patch=p, channels=channels, width=width,
              depth=num_layers(params), heads=num_heads_of(params["layer_0"]["attn"]),
              mlp=params["layer_0"]["mlp"]["wi"]["kernel"].shape[1],
              classes=params["head"]["kernel"].shape[1])


def timm_kwargs(model_config, variables) -> dict:
  """timm's VisionTransformer(**kwargs) that an exported file loads into strictly (timm's
  LayerNorm eps is 1e-6 whatever model.norm_epsilon says)."""
  params = variables["params"]
  s = sizes(params, "timm_vit")
  token = "cls_token" in params
  return dict(img_size=s["image"], patch_size=s["patch"], in_chans=s["channels"],
              num_classes=s["classes"], embed_dim=s["width"], depth=s["depth"],
              num_heads=s["heads"], mlp_ratio=s["mlp"] / s["width"],
              global_pool="token" if token else "avg", class_token=token)

"""Vision Transformer (Dosovitskiy et al., 2021): patches -> pre-norm encoder -> classifier.

    model = ViT(num_classes=10, patch=4, width=192, depth=6, num_heads=3)
    logits_BxC = model.apply(v, images_BxHxWxC, train=False)
    ViT(..., pool="avg")          # mean over the patch tokens (no class token)

pool="token" prepends a learned class token and classifies its final state; pool="avg"
averages the patch tokens and normalises the mean (timm's global_pool="avg", fc_norm).
The position embeddings are learned, one per token (class token first), sized at init
from the image (no interpolation to another size). Attention is models/layers' Attention
(bidirectional, with biases). Names follow the Transformer's blocks (layer_i/attn_norm,
attn/query, ...), so train_lib/weights/timm_vit.py and hf_vit.py map each tensor by one rule.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from models import register
from models.layers.attention import Attention
from models.layers.named import named

POOLS = ("token", "avg")
ACTIVATION = ("batch", "length", "act_embed")   # as the Transformer's residual stream


class Mlp(nn.Module):
  """Dense -> exact (erf) GELU -> dense, as timm's, Hugging Face's and the paper's MLP.
  Not models/layers/mlp.py's FeedForward: its "gelu" is GPT-2's tanh form, which would
  move the logits off the references'. Same names (wi, wo) and axes as FeedForward."""
  hidden: int
  dtype: Any

  @nn.compact
  def __call__(self, x_BxTxD):
    init = nn.initializers.xavier_uniform()
    h_BxTxF = nn.Dense(self.hidden, dtype=self.dtype, name="wi",
                       kernel_init=named(init, "embed", "mlp"))(x_BxTxD)
    h_BxTxF = jax.nn.gelu(h_BxTxF, approximate=False)
    return nn.Dense(x_BxTxD.shape[-1], dtype=self.dtype, name="wo",
                    kernel_init=named(init, "mlp", "embed"))(h_BxTxF)


class Block(nn.Module):
  """x + attn(norm(x)), then x + mlp(norm(x)); attention is bidirectional."""
  num_heads: int
  mlp_dim: int
  norm_epsilon: float
  dropout: float
  attention_dropout: float
  attention_impl: str
  train: bool
  dtype: Any

  @nn.compact
  def __call__(self, x_BxTxD):
    D = x_BxTxD.shape[-1]
    norm = lambda name: nn.LayerNorm(self.norm_epsilon, dtype=self.dtype, name=name)
    drop = nn.Dropout(self.dropout, deterministic=not self.train)
    attn = Attention(self.num_heads, self.num_heads, D // self.num_heads, position="none",
                     implementation=self.attention_impl, use_bias=True, causal=False,
                     dropout=self.attention_dropout, deterministic=not self.train,
                     dtype=self.dtype, name="attn",
                     kernel_init=nn.initializers.xavier_uniform(in_axis=0, out_axis=(1, 2)),
                     out_init=nn.initializers.xavier_uniform(in_axis=(0, 1), out_axis=2))
    x_BxTxD = x_BxTxD + drop(attn(norm("attn_norm")(x_BxTxD), None))
    x_BxTxD = x_BxTxD + drop(Mlp(self.mlp_dim, self.dtype, name="mlp")(norm("mlp_norm")(x_BxTxD)))
    return nn.with_logical_constraint(x_BxTxD, ACTIVATION)


@register("vit")
class ViT(nn.Module):
  num_classes: int
  patch: int = 4
  width: int = 192
  depth: int = 6
  num_heads: int = 3
  mlp_dim: int = 0                 # 0 = 4 * width
  pool: str = "token"              # token (class token) | avg (mean of the patch tokens)
  dropout: float = 0.0             # after the position embeddings and each residual branch
  attention_dropout: float = 0.0   # attention probabilities (see models/layers/attention.py)
  norm_epsilon: float = 1e-6       # timm's; Hugging Face's ViT uses 1e-12
  attention_impl: str = "auto"     # auto (cuDNN on GPU where possible) | cudnn | xla | pallas
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x_BxHxWxC, train: bool = False):
    if self.pool not in POOLS:
      raise ValueError(f"pool {self.pool!r} unknown; use one of {POOLS}")
    if self.width % self.num_heads:
      raise ValueError(f"width={self.width} is not divisible by num_heads={self.num_heads}")
    B, H, W, _ = x_BxHxWxC.shape
    if H % self.patch or W % self.patch:
      raise ValueError(f"image {H}x{W} is not a whole number of {self.patch}x{self.patch} "
                       "patches; choose model.patch to divide both sides")
    x = nn.Conv(self.width, (self.patch, self.patch), strides=(self.patch, self.patch),
                padding="VALID", dtype=self.dtype, name="patch_embed",
                kernel_init=named(nn.initializers.lecun_normal(), None, None, None, "embed"))(
                    x_BxHxWxC.astype(self.dtype))
    x_BxTxD = x.reshape(B, -1, self.width)          # patches in row-major order
    if self.pool == "token":
      cls_D = self.param("cls_token", named(nn.initializers.zeros, "embed"), (self.width,))
      cls_Bx1xD = jnp.broadcast_to(cls_D.astype(self.dtype), (B, 1, self.width))
      x_BxTxD = jnp.concatenate([cls_Bx1xD, x_BxTxD], axis=1)
    pos_TxD = self.param("pos_embed", named(nn.initializers.normal(0.02), None, "embed"),
                         x_BxTxD.shape[1:])
    x_BxTxD = x_BxTxD + pos_TxD.astype(self.dtype)
    x_BxTxD = nn.Dropout(self.dropout, deterministic=not train)(x_BxTxD)
    x_BxTxD = nn.with_logical_constraint(x_BxTxD, ACTIVATION)

    for i in range(self.depth):
      x_BxTxD = Block(self.num_heads, self.mlp_dim or 4 * self.width, self.norm_epsilon,
                      self.dropout, self.attention_dropout, self.attention_impl, train,
                      self.dtype, name=f"layer_{i}")(x_BxTxD)

    final_norm = nn.LayerNorm(self.norm_epsilon, dtype=self.dtype, name="final_norm")
    if self.pool == "token":
      x_BxD = final_norm(x_BxTxD[:, 0])
    else:
      x_BxD = final_norm(x_BxTxD.mean(axis=1))
    # A zero-initialised head (the paper's): every class starts at the same logit.
    return nn.Dense(self.num_classes, dtype=self.dtype, name="head",
                    kernel_init=named(nn.initializers.zeros, "embed", None))(x_BxD)

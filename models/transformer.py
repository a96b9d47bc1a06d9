"""A Transformer whose components are config switches: causal (GPT) or bidirectional
(an encoder, for masked language modelling).

    model = Transformer(vocab_size=256, num_layers=6, num_heads=6, d_model=384, max_len=256)
    logits_BxTxV = model.apply(v, tokens_BxT)                       # full logits
    nll_BxT, correct_BxT = model.apply(v, tokens_BxT, targets_BxT, method="fused_nll")
    logits, vars = model.apply(v, tokens, decode=True, mutable=["cache"])  # KV-cached step
    logits = model.apply(v, tokens, mask=mask_BxT)   # padding: masked keys are not attended

`fused_nll` is the head and cross-entropy fused over chunks of `loss_chunk` positions
(models/layers/head_loss.py), so the [B,T,V] logits never exist whole; the task that
calls it decides what the loss is.
"""

import functools
import math
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from models import register
from models.layers import kernels
from models.layers.attention import Attention
from models.layers.fp8 import COLLECTION as FP8_COLLECTION
from models.layers.head_loss import fused_head_loss, lookup
from models.layers.mlp import FeedForward
from models.layers.named import named
from models.layers.norm import add_and_norm, make_norm

POSITIONS = ("learned", "sinusoidal", "rope", "alibi", "none")
# The residual stream's sharding: batch over the data axes, the rest whole (a no-op
# unless the train step traces the model under config.mesh.rules).
ACTIVATION = ("batch", "length", "act_embed")
REMAT = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


def sinusoidal(positions_BxT, d: int):
  inv_freq = 1.0 / (10000.0 ** (np.arange(0, d, 2, dtype=np.float32) / d))
  angles = positions_BxT[..., None].astype(jnp.float32) * inv_freq
  return jnp.concatenate([jnp.sin(angles), jnp.cos(angles)], axis=-1)


def embed_tokens(module, tokens_BxT, positions, *, train: bool, decode: bool):
  """(the embedding module, the embedded tokens [B, T, D] with positions and dropout, the
  positions [B, T]) for a decoder in `module`'s compact method: its fields vocab_size,
  d_model, dtype, position, max_len and dropout. With decode=True and no positions given,
  they continue from the cache's write position."""
  B, T = tokens_BxT.shape
  if positions is None:
    if decode:
      pos = module.variable("cache", "position", lambda: jnp.zeros((), jnp.int32))
      positions = jnp.broadcast_to(pos.value + jnp.arange(T), (B, T))
      if not module.is_initializing():
        pos.value = pos.value + T
    else:
      positions = jnp.broadcast_to(jnp.arange(T), (B, T))
  embed = nn.Embed(module.vocab_size, module.d_model, dtype=module.dtype, name="embed",
                   embedding_init=named(nn.initializers.normal(0.02), "vocab", "embed"))
  x_BxTxD = lookup(embed.embedding.astype(module.dtype), tokens_BxT)
  if module.position == "learned":
    pos_embed = module.param("pos_embed", named(nn.initializers.normal(0.01), None, "embed"),
                             (module.max_len, module.d_model))
    x_BxTxD = x_BxTxD + jnp.take(pos_embed, positions, axis=0).astype(module.dtype)
  elif module.position == "sinusoidal":
    x_BxTxD = x_BxTxD + sinusoidal(positions, module.d_model).astype(module.dtype)
  x_BxTxD = nn.Dropout(module.dropout, deterministic=not train)(x_BxTxD)
  return embed, nn.with_logical_constraint(x_BxTxD, ACTIVATION), positions


class Block(nn.Module):
  """One residual block; (carry, positions) -> (carry, None) so that nn.scan can stack it."""
  num_heads: int
  num_kv_heads: int
  head_dim: int
  mlp_dim: int
  activation: str
  norm: str
  norm_impl: str
  pre_norm: bool
  position: str
  attention_impl: str
  use_bias: bool
  dropout: float
  attention_dropout: float
  max_len: int
  residual_std: float
  causal: bool
  train: bool
  decode: bool
  dtype: Any
  fp8: bool = False

  @nn.compact
  def __call__(self, carry, positions_BxT, mask_BxT=None):
    """carry = (x, delta): the residual stream and the last branch's output not yet added
    to it; the add happens in the next norm (one kernel with the fused LayerNorm)."""
    x_BxTxD, delta_BxTxD = carry
    init, out_init = nn.initializers.normal(0.02), nn.initializers.normal(self.residual_std)
    norm = lambda name: make_norm(self.norm, dtype=self.dtype, use_bias=self.use_bias,
                                  name=name, implementation=self.norm_impl)
    drop = nn.Dropout(self.dropout, deterministic=not self.train)
    attn = Attention(self.num_heads, self.num_kv_heads, self.head_dim, position=self.position,
                     implementation=self.attention_impl, use_bias=self.use_bias,
                     max_len=self.max_len, causal=self.causal, dropout=self.attention_dropout,
                     deterministic=not self.train, dtype=self.dtype,
                     kernel_init=init, out_init=out_init, fp8=self.fp8, name="attn")
    mlp = FeedForward(self.mlp_dim, self.activation, self.use_bias, self.dtype, init, out_init,
                      fp8=self.fp8, name="mlp")

    if self.pre_norm:
      x_BxTxD, h = add_and_norm(norm("attn_norm"), x_BxTxD, delta_BxTxD)
      h = attn(h, positions_BxT, decode=self.decode, mask_BxT=mask_BxT)
      x_BxTxD, h = add_and_norm(norm("mlp_norm"), x_BxTxD, drop(h))
      delta_BxTxD = drop(mlp(h))
    else:
      x_BxTxD = x_BxTxD + delta_BxTxD
      x_BxTxD = norm("attn_norm")(x_BxTxD + drop(attn(x_BxTxD, positions_BxT,
                                                        decode=self.decode,
                                                        mask_BxT=mask_BxT)))
      x_BxTxD = norm("mlp_norm")(x_BxTxD + drop(mlp(x_BxTxD)))
      delta_BxTxD = jnp.zeros_like(x_BxTxD)
    return (nn.with_logical_constraint(x_BxTxD, ACTIVATION),
            nn.with_logical_constraint(delta_BxTxD, ACTIVATION)), None


@register("transformer")
class Transformer(nn.Module):
  vocab_size: int = 256
  num_layers: int = 6
  num_heads: int = 6
  num_kv_heads: int = 0            # 0 = num_heads (multi-head); 1 = multi-query
  d_model: int = 384
  mlp_dim: int = 0                 # 0 = 4 * d_model
  max_len: int = 256
  position: str = "learned"        # learned | sinusoidal | rope | alibi | none
  rope_base: float = 10000.0
  norm: str = "layernorm"          # layernorm | rmsnorm
  norm_impl: str = "auto"          # auto (Pallas LayerNorm on GPU where possible) | pallas | xla
  pre_norm: bool = True
  activation: str = "gelu"         # gelu | relu | sq_relu | swiglu
  loss_impl: str = "auto"          # auto (Pallas softmax statistics on GPU) | pallas | xla
  attention_impl: str = "auto"     # auto (cuDNN on GPU where possible) | cudnn | xla | pallas
  tie_embeddings: bool = True
  use_bias: bool = False
  dropout: float = 0.0             # embeddings and both residual branches
  attention_dropout: float = 0.0   # attention probabilities (Pallas flash on GPU, else XLA)
  scaled_residual_init: bool = True  # GPT-2: residual projections ~ N(0, 0.02/sqrt(2L))
  scan_layers: bool = True
  remat: str = "none"              # none | full | dots | dots_no_batch
  loss_chunk: int = 0              # positions per fused head+loss chunk; 0 = whole logits
  causal: bool = True              # False: bidirectional attention (an encoder)
  dtype: Any = jnp.float32
  fp8: bool = False                # attention and MLP matmuls in fp8 (config.dtype="fp8")
  num_classes: Optional[int] = None  # unused; accepted so image-style callers fail clearly

  def _check(self):
    if self.position not in POSITIONS:
      raise ValueError(f"position {self.position!r} unknown; use one of {POSITIONS}")
    if self.remat not in REMAT:
      raise ValueError(f"remat {self.remat!r} unknown; use one of {sorted(REMAT)}")
    if self.d_model % self.num_heads:
      raise ValueError(f"d_model={self.d_model} is not divisible by num_heads={self.num_heads}")

  def __call__(self, tokens_BxT, *, train: bool = False, decode: bool = False,
               positions=None, mask=None):
    """Logits [B, T, V] in float32; `mask` [B, T] (1 = a real token) hides padding keys."""
    x_BxTxD, w_DxV = self.features(tokens_BxT, train=train, decode=decode,
                                   positions=positions, mask=mask)
    return jnp.einsum("btd,dv->btv", x_BxTxD, w_DxV).astype(jnp.float32)

  def fused_nll(self, tokens_BxT, targets_BxT, *, train: bool = False, positions=None,
                mask=None):
    """(nll, correct) per position [B, T]: the head and its cross-entropy fused."""
    x_BxTxD, w_DxV = self.features(tokens_BxT, train=train, positions=positions, mask=mask)
    loss_impl = kernels.choose("loss_impl", self.loss_impl, fits=True, needs="",
                               dtype=self.dtype, split_axes=("vocab",))
    return fused_head_loss(x_BxTxD, w_DxV, targets_BxT, self.loss_chunk, loss_impl)

  @nn.compact
  def features(self, tokens_BxT, *, train: bool = False, decode: bool = False,
               positions=None, mask=None):
    """The final hidden states [B, T, D] and the head's weights [D, V], in the compute dtype."""
    self._check()
    if decode and not self.causal:
      raise ValueError("decode=True needs a causal model (model.causal=True)")
    embed, x_BxTxD, positions = embed_tokens(self, tokens_BxT, positions, train=train,
                                             decode=decode)

    residual_std = 0.02 / math.sqrt(2 * self.num_layers) if self.scaled_residual_init else 0.02
    block_args = dict(
        num_heads=self.num_heads, num_kv_heads=self.num_kv_heads or self.num_heads,
        head_dim=self.d_model // self.num_heads, mlp_dim=self.mlp_dim or 4 * self.d_model,
        activation=self.activation, norm=self.norm, norm_impl=self.norm_impl,
        pre_norm=self.pre_norm,
        position=self.position if self.position in ("rope", "alibi") else "none",
        attention_impl=self.attention_impl, use_bias=self.use_bias, dropout=self.dropout,
        attention_dropout=self.attention_dropout, max_len=self.max_len,
        residual_std=residual_std, causal=self.causal, train=train,
        decode=decode, dtype=self.dtype, fp8=self.fp8)
    block = Block
    if REMAT[self.remat] is not None and not decode:
      block = nn.remat(Block, policy=REMAT[self.remat], prevent_cse=not self.scan_layers)
    carry = (x_BxTxD, jnp.zeros_like(x_BxTxD))
    if self.scan_layers:
      carry, _ = nn.scan(block, variable_axes={"params": 0, "cache": 0, FP8_COLLECTION: 0},
                         split_rngs={"params": True, "dropout": True},
                         in_axes=(nn.broadcast, nn.broadcast), length=self.num_layers,
                         metadata_params={nn.PARTITION_NAME: "layers"})(
                             **block_args, name="layers")(carry, positions, mask)
    else:
      for i in range(self.num_layers):
        carry, _ = block(**block_args, name=f"layer_{i}")(carry, positions, mask)
    x_BxTxD, delta_BxTxD = carry
    if self.pre_norm:
      _, x_BxTxD = add_and_norm(make_norm(self.norm, dtype=self.dtype, use_bias=self.use_bias,
                                          name="final_norm", implementation=self.norm_impl),
                                x_BxTxD, delta_BxTxD)
    else:
      x_BxTxD = x_BxTxD + delta_BxTxD

    if self.tie_embeddings:
      w_DxV = embed.embedding.T
    else:
      w_DxV = self.param("head", named(nn.initializers.normal(0.02), "embed", "vocab"),
                         (self.d_model, self.vocab_size))
    return x_BxTxD, w_DxV.astype(self.dtype)

  def flops_per_token(self, num_params: int, seq_len: int) -> float:
    """Training FLOPs per token: 6N (N without position embeddings) + 12 L D T (attention)."""
    pos = self.max_len * self.d_model if self.position == "learned" else 0
    return 6 * (num_params - pos) + 12 * self.num_layers * self.d_model * seq_len

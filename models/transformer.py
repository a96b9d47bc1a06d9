"""A decoder-only Transformer whose components are config switches.

    model = Transformer(vocab_size=256, num_layers=6, num_heads=6, d_model=384, max_len=256)
    logits_BxTxV = model.apply(v, tokens_BxT)                       # full logits
    out = model.apply(v, tokens_BxT, targets=targets_BxT)          # {"nll", "correct"}: [B,T]
    logits, vars = model.apply(v, tokens, decode=True, mutable=["cache"])  # KV-cached step

With targets, the output head and cross-entropy run fused over chunks of
`loss_chunk` positions (rematerialised), so the [B,T,V] logits never exist whole.
"""

import functools
import math
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from models import register
from models.layers import fused_softmax, kernels
from models.layers.attention import Attention
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
  max_len: int
  residual_std: float
  train: bool
  decode: bool
  dtype: Any

  @nn.compact
  def __call__(self, carry, positions_BxT):
    """carry = (x, delta): the residual stream and the last branch's output not yet added
    to it; the add happens in the next norm (one kernel with the fused LayerNorm)."""
    x_BxTxD, delta_BxTxD = carry
    init, out_init = nn.initializers.normal(0.02), nn.initializers.normal(self.residual_std)
    norm = lambda name: make_norm(self.norm, dtype=self.dtype, use_bias=self.use_bias,
                                  name=name, implementation=self.norm_impl)
    drop = nn.Dropout(self.dropout, deterministic=not self.train)
    attn = Attention(self.num_heads, self.num_kv_heads, self.head_dim, position=self.position,
                     implementation=self.attention_impl, use_bias=self.use_bias,
                     max_len=self.max_len, dtype=self.dtype, kernel_init=init,
                     out_init=out_init, name="attn")
    mlp = FeedForward(self.mlp_dim, self.activation, self.use_bias, self.dtype, init, out_init,
                      name="mlp")

    if self.pre_norm:
      x_BxTxD, h = add_and_norm(norm("attn_norm"), x_BxTxD, delta_BxTxD)
      h = attn(h, positions_BxT, decode=self.decode)
      x_BxTxD, h = add_and_norm(norm("mlp_norm"), x_BxTxD, drop(h))
      delta_BxTxD = drop(mlp(h))
    else:
      x_BxTxD = x_BxTxD + delta_BxTxD
      x_BxTxD = norm("attn_norm")(x_BxTxD + drop(attn(x_BxTxD, positions_BxT,
                                                        decode=self.decode)))
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
  attention_impl: str = "auto"     # auto (cuDNN on GPU where possible) | cudnn | xla
  tie_embeddings: bool = True
  use_bias: bool = False
  dropout: float = 0.0
  scaled_residual_init: bool = True  # GPT-2: residual projections ~ N(0, 0.02/sqrt(2L))
  scan_layers: bool = True
  remat: str = "none"              # none | full | dots | dots_no_batch
  loss_chunk: int = 0              # positions per fused head+loss chunk; 0 = whole logits
  dtype: Any = jnp.float32
  num_classes: Optional[int] = None  # unused; accepted so image-style callers fail clearly

  def _check(self):
    if self.position not in POSITIONS:
      raise ValueError(f"position {self.position!r} unknown; use one of {POSITIONS}")
    if self.remat not in REMAT:
      raise ValueError(f"remat {self.remat!r} unknown; use one of {sorted(REMAT)}")
    if self.d_model % self.num_heads:
      raise ValueError(f"d_model={self.d_model} is not divisible by num_heads={self.num_heads}")

  @nn.compact
  def __call__(self, tokens_BxT, targets=None, *, train: bool = False, decode: bool = False,
               positions=None):
    self._check()
    B, T = tokens_BxT.shape
    if positions is None:
      if decode:  # continue from the cache's write position
        pos = self.variable("cache", "position", lambda: jnp.zeros((), jnp.int32))
        positions = jnp.broadcast_to(pos.value + jnp.arange(T), (B, T))
        if not self.is_initializing():
          pos.value = pos.value + T
      else:
        positions = jnp.broadcast_to(jnp.arange(T), (B, T))
    embed = nn.Embed(self.vocab_size, self.d_model, dtype=self.dtype, name="embed",
                     embedding_init=named(nn.initializers.normal(0.02), "vocab", "embed"))
    x_BxTxD = lookup(embed.embedding.astype(self.dtype), tokens_BxT)
    if self.position == "learned":
      pos_embed = self.param("pos_embed", named(nn.initializers.normal(0.01), None, "embed"),
                             (self.max_len, self.d_model))
      x_BxTxD = x_BxTxD + jnp.take(pos_embed, positions, axis=0).astype(self.dtype)
    elif self.position == "sinusoidal":
      x_BxTxD = x_BxTxD + sinusoidal(positions, self.d_model).astype(self.dtype)
    x_BxTxD = nn.Dropout(self.dropout, deterministic=not train)(x_BxTxD)
    x_BxTxD = nn.with_logical_constraint(x_BxTxD, ACTIVATION)

    residual_std = 0.02 / math.sqrt(2 * self.num_layers) if self.scaled_residual_init else 0.02
    block_args = dict(
        num_heads=self.num_heads, num_kv_heads=self.num_kv_heads or self.num_heads,
        head_dim=self.d_model // self.num_heads, mlp_dim=self.mlp_dim or 4 * self.d_model,
        activation=self.activation, norm=self.norm, norm_impl=self.norm_impl,
        pre_norm=self.pre_norm,
        position=self.position if self.position in ("rope", "alibi") else "none",
        attention_impl=self.attention_impl, use_bias=self.use_bias, dropout=self.dropout,
        max_len=self.max_len, residual_std=residual_std, train=train, decode=decode,
        dtype=self.dtype)
    block = Block
    if REMAT[self.remat] is not None and not decode:
      block = nn.remat(Block, policy=REMAT[self.remat], prevent_cse=not self.scan_layers)
    carry = (x_BxTxD, jnp.zeros_like(x_BxTxD))
    if self.scan_layers:
      carry, _ = nn.scan(block, variable_axes={"params": 0, "cache": 0},
                         split_rngs={"params": True, "dropout": True},
                         in_axes=nn.broadcast, length=self.num_layers,
                         metadata_params={nn.PARTITION_NAME: "layers"})(
                             **block_args, name="layers")(carry, positions)
    else:
      for i in range(self.num_layers):
        carry, _ = block(**block_args, name=f"layer_{i}")(carry, positions)
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
    if targets is None:
      return jnp.einsum("btd,dv->btv", x_BxTxD, w_DxV.astype(self.dtype)).astype(jnp.float32)
    loss_impl = kernels.choose("loss_impl", self.loss_impl, fits=True, needs="",
                               dtype=self.dtype, split_axes=("vocab",))
    return fused_head_loss(x_BxTxD, w_DxV.astype(self.dtype), targets, self.loss_chunk,
                           loss_impl)

  def flops_per_token(self, num_params: int, seq_len: int) -> float:
    """Training FLOPs per token: 6N (N without position embeddings) + 12 L D T (attention)."""
    pos = self.max_len * self.d_model if self.position == "learned" else 0
    return 6 * (num_params - pos) + 12 * self.num_layers * self.d_model * seq_len


# Up to this vocabulary size, row lookups are one-hot matmuls: the gradient of a gather
# is a scatter-add, and thousands of tokens adding into a few hundred rows serialise on
# atomics (28 ms of a 48 ms step for Shakespeare's 256 bytes on an H100).
ONE_HOT_VOCAB = 2048


def lookup(table_VxD, ids):
  """table[ids] whose gradient stays fast for small and large vocabularies."""
  if table_VxD.shape[0] <= ONE_HOT_VOCAB:
    one_hot = jax.nn.one_hot(ids, table_VxD.shape[0], dtype=table_VxD.dtype)
    return jnp.matmul(one_hot, table_VxD, precision=jax.lax.Precision.HIGHEST)  # exact
  return jnp.take(table_VxD, ids, axis=0)


def _online_max_sumexp(x):
  """(max, sum(exp(x - max))) over the last axis in one pass over x: a variadic reduction
  whose combiner rescales the running sum when the running max grows."""
  def combine(a, b):
    (m1, s1), (m2, s2) = a, b
    big, small = jnp.maximum(m1, m2), jnp.minimum(m1, m2)
    # One exp per combine; two empty partial results (max -inf) combine to an empty one.
    scaled = jnp.exp(jnp.where(big > -jnp.inf, small - big, 0.0))
    return big, jnp.where(m1 >= m2, s1 + s2 * scaled, s2 + s1 * scaled)
  x = x.astype(jnp.float32)
  return jax.lax.reduce((x, jnp.ones_like(x)), (-jnp.inf, jnp.float32(0)), combine,
                        (x.ndim - 1,))


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def logsumexp_and_max(logits, impl: str = "xla"):
  """Float32 logsumexp and max over the last axis, reading the logits once (jax's
  logsumexp reads them twice: a max, then a sum of exponentials); differentiable in the
  logsumexp, the max is a statistic. impl "pallas": fused_softmax's kernel."""
  if impl not in ("pallas", "xla"):
    raise ValueError(f"logsumexp_and_max: impl {impl!r} unknown; use 'pallas' or 'xla'")
  if impl == "pallas":
    fn = lambda x: fused_softmax.max_sumexp(x, kernels.interpret())
    m, s = kernels.over_rows(fn, logits)
  else:
    m, s = _online_max_sumexp(logits)
  return m + jnp.log(s), m


def _lse_fwd(logits, impl):
  lse, m = logsumexp_and_max(logits, impl)
  return (lse, m), (logits, lse)


def _lse_bwd(impl, res, g):
  logits, lse = res
  g_lse, _ = g
  p = jnp.exp(logits.astype(jnp.float32) - lse[..., None])   # softmax, one fused pass
  return ((p * g_lse[..., None]).astype(logits.dtype),)


logsumexp_and_max.defvjp(_lse_fwd, _lse_bwd)


def _head_loss(h_BxCxD, w_DxV, targets_BxC, impl="xla"):
  # Logits are stored in the compute dtype (bf16 under mixed precision, as in PyTorch's
  # autocast); the softmax statistics are taken in float32.
  logits_BxCxV = jnp.einsum("bcd,dv->bcv", h_BxCxD, w_DxV)
  lse_BxC, max_BxC = logsumexp_and_max(logits_BxCxV, impl)
  # The target's logit from its own column of the head, not from a further pass over the
  # [B,C,V] logits; rounded to the logits' dtype so that nll >= 0 holds.
  w_BxCxD = lookup(w_DxV.T, targets_BxC)
  target_logit_BxC = jnp.einsum("bcd,bcd->bc", h_BxCxD.astype(jnp.float32),
                                w_BxCxD.astype(jnp.float32))
  target_logit_BxC = target_logit_BxC.astype(logits_BxCxV.dtype).astype(jnp.float32)
  # Correct: the target's own logit (a gather, no pass over the logits) is the maximum.
  # Unlike argmax, a target tied for the maximum counts as correct.
  picked_BxC = jnp.take_along_axis(jax.lax.stop_gradient(logits_BxCxV),
                                   targets_BxC[..., None], axis=-1)[..., 0]
  correct_BxC = (picked_BxC.astype(jnp.float32) >= max_BxC).astype(jnp.float32)
  return lse_BxC - target_logit_BxC, correct_BxC


def fused_head_loss(h_BxTxD, w_DxV, targets_BxT, chunk: int, impl: str = "xla"):
  """Per-position NLL and correctness; with chunk > 0 over rematerialised T-chunks
  (an unrolled loop: XLA schedules it better than a scan)."""
  B, T, D = h_BxTxD.shape
  if not chunk or chunk >= T:
    nll, correct = _head_loss(h_BxTxD, w_DxV, targets_BxT, impl)
    return {"nll": nll, "correct": correct}
  if T % chunk:
    raise ValueError(f"loss_chunk={chunk} must divide the sequence length {T}")
  piece = jax.checkpoint(functools.partial(_head_loss, impl=impl))
  parts = [piece(h_BxTxD[:, i:i + chunk], w_DxV, targets_BxT[:, i:i + chunk])
           for i in range(0, T, chunk)]
  return {"nll": jnp.concatenate([p[0] for p in parts], axis=1),
          "correct": jnp.concatenate([p[1] for p in parts], axis=1)}

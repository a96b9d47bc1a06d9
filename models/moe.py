"""A decoder Transformer whose MLPs are routed experts (a sparse mixture of experts, as in
Mixtral), and the MoE MLP on its own.

    model = MoETransformer(vocab_size=256, num_layers=6, d_model=384, num_experts=8, top_k=2)
    logits_BxTxV = model.apply(v, tokens_BxT)
    (nll_BxT, correct_BxT), aux = model.apply(v, tokens_BxT, targets_BxT, method="fused_nll",
                                              with_aux=True)
    aux["loss"]            # the weighted auxiliary loss to add to the objective
    model.aux_metrics      # the names of aux's scalars besides "loss" (the lm task logs them)
    y_BxTxD, stats = MoEMLP(num_experts=8, top_k=2, hidden=128)(x_BxTxD)

Routing is Hugging Face Mixtral's: router logits in float32, softmax over all experts, the
top-k probabilities renormalised to sum to one. Experts are SwiGLU MLPs (w2(silu(x w1) * x w3)),
stored [E, ...] with the logical axis "expert" (config.mesh.rules maps it to a mesh axis).
Two dispatches:
- capacity_factor = 0: dropless. The (token, choice) pairs are sorted by expert and each
  expert's rows go through jax.lax.ragged_dot.
- capacity_factor > 0: each sequence is a group; every expert takes at most
  C = ceil(capacity_factor * T * top_k / E) of its tokens (first choices before second ones,
  earlier positions first), the rest are dropped (their branch output is zero); one-hot
  dispatch and combine tensors [B, T, E, C] and einsums (GShard, Switch).
Auxiliary losses per layer, averaged over layers: the load-balancing loss
E * sum_e f_e * P_e (f_e: the fraction of tokens routed to e, counting every one of a token's
top-k choices, as HF Mixtral does, so it is top_k at perfect balance; P_e: the mean router
probability) and the router z-loss mean(logsumexp(logits)^2) (ST-MoE). The model also reports
expert_load/e (the fraction of routed choices that picked e) and dropped_fraction.
"""

import math
from typing import Any, Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from models import register
from models.layers import kernels
from models.layers.attention import Attention
from models.layers.head_loss import fused_head_loss
from models.layers.named import named
from models.layers.norm import add_and_norm, make_norm
from models.transformer import ACTIVATION, POSITIONS, REMAT, embed_tokens

# The dispatched tokens [B, E, C, D]: experts over the expert axis (GShard's all-to-all),
# groups over the data axes that do not hold experts ("expert_batch" in config.mesh.rules).
DISPATCHED = ("expert_batch", "expert", None, "act_embed")


def capacity(capacity_factor: float, group_size: int, top_k: int, num_experts: int) -> int:
  """Tokens each expert takes per group: ceil(factor * group * k / E), within [1, group]."""
  return max(1, min(group_size, math.ceil(capacity_factor * group_size * top_k / num_experts)))


def route(logits_NxE, top_k: int):
  """(weights [N, k], expert indices [N, k]): HF Mixtral's softmax, top-k, renormalise."""
  probs_NxE = jax.nn.softmax(logits_NxE.astype(jnp.float32), axis=-1)
  top_NxK, idx_NxK = jax.lax.top_k(probs_NxE, top_k)
  return top_NxK / top_NxK.sum(-1, keepdims=True), idx_NxK


def swiglu(x, w1, w3, w2, dot):
  """w2(silu(x w1) * x w3) with `dot` the per-expert contraction."""
  return dot(jax.nn.silu(dot(x, w1)) * dot(x, w3), w2)


def dropless(x_NxD, idx_NxK, w_NxK, experts):
  """Every (token, choice) through its expert: rows sorted by expert, jax.lax.ragged_dot."""
  N, K = idx_NxK.shape
  E = experts[0].shape[0]
  idx_M = idx_NxK.reshape(-1)                      # M = N * K choices
  order_M = jnp.argsort(idx_M, stable=True)
  sizes_E = jnp.bincount(idx_M, length=E).astype(jnp.int32)
  xs_MxD = x_NxD[order_M // K]
  dot = lambda a, w: jax.lax.ragged_dot(a, w, sizes_E)
  ys_MxD = swiglu(xs_MxD, *experts, dot)
  y_MxD = jnp.zeros_like(ys_MxD).at[order_M].set(ys_MxD)   # back to (token, choice) order
  return jnp.einsum("nkd,nk->nd", y_MxD.reshape(N, K, -1), w_NxK.astype(y_MxD.dtype))


def dispatch_masks(idx_BxTxK, w_BxTxK, num_experts: int, cap: int):
  """(dispatch, combine) [B, T, E, C] and kept [B, T, K]: the position of each choice in its
  expert's queue counts first choices of the whole sequence before second ones."""
  mask_BxKxTxE = jax.nn.one_hot(idx_BxTxK, num_experts, dtype=jnp.int32).transpose(0, 2, 1, 3)
  B, K, T, E = mask_BxKxTxE.shape
  queue = jnp.cumsum(mask_BxKxTxE.reshape(B, K * T, E), axis=1).reshape(B, K, T, E)
  pos_BxKxT = (queue * mask_BxKxTxE).sum(-1) - 1
  slot_BxKxTxC = jax.nn.one_hot(pos_BxKxT, cap, dtype=jnp.float32)  # zero once pos >= cap
  mask = mask_BxKxTxE.astype(jnp.float32)
  dispatch_BxTxExC = jnp.einsum("bkte,bktc->btec", mask, slot_BxKxTxC)
  combine_BxTxExC = jnp.einsum("bkte,bktc,btk->btec", mask, slot_BxKxTxC, w_BxTxK)
  return dispatch_BxTxExC, combine_BxTxExC, (pos_BxKxT < cap).transpose(0, 2, 1)


def with_capacity(x_BxTxD, idx_BxTxK, w_BxTxK, experts, cap: int):
  """(y [B, T, D], kept [B, T, K]): token dropping with `cap` tokens per expert and sequence."""
  dispatch, combine, kept = dispatch_masks(idx_BxTxK, w_BxTxK, experts[0].shape[0], cap)
  xe_BxExCxD = jnp.einsum("btec,btd->becd", dispatch.astype(x_BxTxD.dtype), x_BxTxD)
  xe_BxExCxD = nn.with_logical_constraint(xe_BxExCxD, DISPATCHED)
  dot = lambda a, w: jnp.einsum("becd,edf->becf", a, w)
  ye_BxExCxD = nn.with_logical_constraint(swiglu(xe_BxExCxD, *experts, dot), DISPATCHED)
  return jnp.einsum("btec,becd->btd", combine.astype(ye_BxExCxD.dtype), ye_BxExCxD), kept


def router_stats(logits_NxE, idx_NxK, kept_NxK) -> dict:
  """Per-layer load-balancing loss, z-loss, expert load [E] and dropped fraction."""
  E = logits_NxE.shape[-1]
  probs_NxE = jax.nn.softmax(logits_NxE, axis=-1)
  counts_E = jax.nn.one_hot(idx_NxK, E, dtype=jnp.float32).sum((0, 1))
  N, K = idx_NxK.shape
  return {
      "load_balance_loss": E * jnp.sum(counts_E / N * probs_NxE.mean(0)),
      "z_loss": jnp.mean(jnp.square(jax.nn.logsumexp(logits_NxE, axis=-1))),
      "expert_load": counts_E / (N * K),
      "dropped_fraction": 1.0 - kept_NxK.astype(jnp.float32).mean(),
  }


class MoEMLP(nn.Module):
  """Routed SwiGLU experts: x [B, T, D] -> (y [B, T, D], router_stats of this layer)."""
  num_experts: int
  top_k: int
  hidden: int
  capacity_factor: float = 0.0     # 0 = dropless (ragged_dot); > 0 = capacity per expert
  dtype: Any = jnp.float32
  kernel_init: Callable = nn.initializers.normal(0.02)
  out_init: Callable = nn.initializers.normal(0.02)

  @nn.compact
  def __call__(self, x_BxTxD):
    if not 0 < self.top_k <= self.num_experts:
      raise ValueError(f"top_k={self.top_k} must be in [1, num_experts={self.num_experts}]")
    if self.capacity_factor < 0:
      raise ValueError(f"capacity_factor={self.capacity_factor} must be >= 0 (0 = dropless)")
    B, T, D = x_BxTxD.shape
    E, K, F = self.num_experts, self.top_k, self.hidden
    logits_BxTxE = nn.Dense(E, use_bias=False, dtype=jnp.float32, name="router",   # float32
                            kernel_init=named(self.kernel_init, "embed", None))(x_BxTxD)
    w_BxTxK, idx_BxTxK = route(logits_BxTxE, K)
    up = named(self.kernel_init, "expert", "embed", "mlp")
    experts = (self.param("w1", up, (E, D, F)), self.param("w3", up, (E, D, F)),
               self.param("w2", named(self.out_init, "expert", "mlp", "embed"), (E, F, D)))
    experts = tuple(w.astype(self.dtype) for w in experts)
    x_BxTxD = x_BxTxD.astype(self.dtype)
    if self.capacity_factor > 0:
      cap = capacity(self.capacity_factor, T, K, E)
      y_BxTxD, kept_BxTxK = with_capacity(x_BxTxD, idx_BxTxK, w_BxTxK, experts, cap)
    else:
      y_BxTxD = dropless(x_BxTxD.reshape(B * T, D), idx_BxTxK.reshape(B * T, K),
                         w_BxTxK.reshape(B * T, K), experts).reshape(B, T, D)
      kept_BxTxK = jnp.ones(idx_BxTxK.shape, bool)
    stats = router_stats(logits_BxTxE.reshape(B * T, E), idx_BxTxK.reshape(B * T, K),
                         kept_BxTxK.reshape(B * T, K))
    return y_BxTxD, stats


class MoEBlock(nn.Module):
  """One pre-norm block with a routed MLP; (carry, positions) -> (carry, router stats)."""
  num_heads: int
  num_kv_heads: int
  head_dim: int
  mlp_dim: int
  num_experts: int
  top_k: int
  capacity_factor: float
  norm: str
  norm_impl: str
  position: str
  rope_base: float
  attention_impl: str
  dropout: float
  attention_dropout: float
  max_len: int
  residual_std: float
  train: bool
  decode: bool
  dtype: Any

  @nn.compact
  def __call__(self, carry, positions_BxT, mask_BxT=None):
    x_BxTxD, delta_BxTxD = carry
    init, out_init = nn.initializers.normal(0.02), nn.initializers.normal(self.residual_std)
    norm = lambda name: make_norm(self.norm, dtype=self.dtype, name=name,
                                  implementation=self.norm_impl)
    drop = nn.Dropout(self.dropout, deterministic=not self.train)
    attn = Attention(self.num_heads, self.num_kv_heads, self.head_dim, position=self.position,
                     rope_base=self.rope_base, implementation=self.attention_impl,
                     max_len=self.max_len, dropout=self.attention_dropout,
                     deterministic=not self.train, dtype=self.dtype, kernel_init=init,
                     out_init=out_init, name="attn")
    moe = MoEMLP(self.num_experts, self.top_k, self.mlp_dim, self.capacity_factor, self.dtype,
                 init, out_init, name="moe")
    x_BxTxD, h = add_and_norm(norm("attn_norm"), x_BxTxD, delta_BxTxD)
    h = attn(h, positions_BxT, decode=self.decode, mask_BxT=mask_BxT)
    x_BxTxD, h = add_and_norm(norm("mlp_norm"), x_BxTxD, drop(h))
    y_BxTxD, stats = moe(h)
    return (nn.with_logical_constraint(x_BxTxD, ACTIVATION),
            nn.with_logical_constraint(drop(y_BxTxD), ACTIVATION)), stats


@register("moe")
class MoETransformer(nn.Module):
  vocab_size: int = 256
  num_layers: int = 6
  num_heads: int = 6
  num_kv_heads: int = 0            # 0 = num_heads
  d_model: int = 384
  mlp_dim: int = 128               # hidden units of each expert
  num_experts: int = 8
  top_k: int = 2                   # experts per token
  capacity_factor: float = 0.0     # 0 = dropless (ragged_dot); > 0 = tokens dropped past capacity
  load_balance_weight: float = 0.01  # Switch Transformer's alpha
  z_loss_weight: float = 0.001     # ST-MoE's router z-loss weight
  max_len: int = 256
  position: str = "learned"        # learned | sinusoidal | rope | alibi | none
  rope_base: float = 10000.0
  norm: str = "rmsnorm"            # layernorm | rmsnorm
  norm_impl: str = "auto"
  loss_impl: str = "auto"
  attention_impl: str = "auto"
  tie_embeddings: bool = True
  dropout: float = 0.0
  attention_dropout: float = 0.0   # attention probabilities (computed in XLA when > 0)
  scaled_residual_init: bool = True
  scan_layers: bool = True
  remat: str = "none"              # none | full | dots | dots_no_batch
  loss_chunk: int = 0
  dtype: Any = jnp.float32
  num_classes: Optional[int] = None  # unused; accepted so image-style callers fail clearly

  @property
  def aux_metrics(self) -> tuple:
    """The scalars of `aux` besides "loss", averaged over layers."""
    return ("load_balance_loss", "z_loss", "dropped_fraction",
            *(f"expert_load/{e}" for e in range(self.num_experts)))

  def __call__(self, tokens_BxT, *, train: bool = False, decode: bool = False,
               positions=None, mask=None, with_aux: bool = False):
    """Logits [B, T, V] in float32; with_aux: (logits, aux)."""
    x_BxTxD, w_DxV, aux = self.features(tokens_BxT, train=train, decode=decode,
                                        positions=positions, mask=mask)
    logits = jnp.einsum("btd,dv->btv", x_BxTxD, w_DxV).astype(jnp.float32)
    return (logits, aux) if with_aux else logits

  def fused_nll(self, tokens_BxT, targets_BxT, *, train: bool = False, positions=None,
                mask=None, with_aux: bool = False):
    """(nll, correct) per position [B, T]; with_aux: ((nll, correct), aux)."""
    x_BxTxD, w_DxV, aux = self.features(tokens_BxT, train=train, positions=positions,
                                        mask=mask)
    loss_impl = kernels.choose("loss_impl", self.loss_impl, fits=True, needs="",
                               dtype=self.dtype, split_axes=("vocab",))
    out = fused_head_loss(x_BxTxD, w_DxV, targets_BxT, self.loss_chunk, loss_impl)
    return (out, aux) if with_aux else out

  def _check(self):
    if self.position not in POSITIONS:
      raise ValueError(f"position {self.position!r} unknown; use one of {POSITIONS}")
    if self.remat not in REMAT:
      raise ValueError(f"remat {self.remat!r} unknown; use one of {sorted(REMAT)}")
    if self.d_model % self.num_heads:
      raise ValueError(f"d_model={self.d_model} is not divisible by num_heads={self.num_heads}")

  @nn.compact
  def features(self, tokens_BxT, *, train: bool = False, decode: bool = False,
               positions=None, mask=None):
    """(final hidden states [B, T, D], head weights [D, V], aux): aux has "loss" (the
    weighted auxiliary loss) and each name of aux_metrics, averaged over layers."""
    self._check()
    embed, x_BxTxD, positions = embed_tokens(self, tokens_BxT, positions, train=train,
                                             decode=decode)

    residual_std = 0.02 / math.sqrt(2 * self.num_layers) if self.scaled_residual_init else 0.02
    block_args = dict(
        num_heads=self.num_heads, num_kv_heads=self.num_kv_heads or self.num_heads,
        head_dim=self.d_model // self.num_heads, mlp_dim=self.mlp_dim,
        num_experts=self.num_experts, top_k=self.top_k, capacity_factor=self.capacity_factor,
        norm=self.norm, norm_impl=self.norm_impl,
        position=self.position if self.position in ("rope", "alibi") else "none",
        rope_base=self.rope_base, attention_impl=self.attention_impl, dropout=self.dropout,
        attention_dropout=self.attention_dropout, max_len=self.max_len, residual_std=residual_std, train=train, decode=decode,
        dtype=self.dtype)
    block = MoEBlock
    if REMAT[self.remat] is not None and not decode:
      block = nn.remat(MoEBlock, policy=REMAT[self.remat], prevent_cse=not self.scan_layers)
    carry = (x_BxTxD, jnp.zeros_like(x_BxTxD))
    if self.scan_layers:
      carry, stats = nn.scan(block, variable_axes={"params": 0, "cache": 0},
                             split_rngs={"params": True, "dropout": True},
                             in_axes=(nn.broadcast, nn.broadcast), length=self.num_layers,
                             metadata_params={nn.PARTITION_NAME: "layers"})(
                                 **block_args, name="layers")(carry, positions, mask)
    else:
      per_layer = []
      for i in range(self.num_layers):
        carry, s = block(**block_args, name=f"layer_{i}")(carry, positions, mask)
        per_layer.append(s)
      stats = jax.tree.map(lambda *s: jnp.stack(s), *per_layer)
    x_BxTxD, delta_BxTxD = carry
    _, x_BxTxD = add_and_norm(make_norm(self.norm, dtype=self.dtype, name="final_norm",
                                        implementation=self.norm_impl), x_BxTxD, delta_BxTxD)
    if self.tie_embeddings:
      w_DxV = embed.embedding.T
    else:
      w_DxV = self.param("head", named(nn.initializers.normal(0.02), "embed", "vocab"),
                         (self.d_model, self.vocab_size))
    return x_BxTxD, w_DxV.astype(self.dtype), self.aux(stats)

  def aux(self, stats) -> dict:
    """Per-layer router stats [L, ...] -> {"loss": weighted aux loss, name: scalar}."""
    mean = jax.tree.map(lambda s: s.mean(0), stats)
    out = {"loss": (self.load_balance_weight * mean["load_balance_loss"]
                    + self.z_loss_weight * mean["z_loss"]),
           "load_balance_loss": mean["load_balance_loss"], "z_loss": mean["z_loss"],
           "dropped_fraction": mean["dropped_fraction"]}
    out.update({f"expert_load/{e}": mean["expert_load"][e] for e in range(self.num_experts)})
    return out

  def flops_per_token(self, num_params: int, seq_len: int) -> float:
    """Training FLOPs per token: 6 x the active parameters (without position embeddings and
    the experts a token does not visit) + 12 L D T (attention)."""
    pos = self.max_len * self.d_model if self.position == "learned" else 0
    idle = self.num_layers * (self.num_experts - self.top_k) * 3 * self.d_model * self.mlp_dim
    return 6 * (num_params - pos - idle) + 12 * self.num_layers * self.d_model * seq_len

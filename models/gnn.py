"""Graph networks on padded, batched graphs: GCN (Kipf and Welling, 2017) and GAT
(Velickovic et al., 2018), layer for layer as torch_geometric's GCNConv and GATConv.

    model = GCN(num_classes=4, hidden=(16,), dropout=0.5)       # or GAT(num_classes=4)
    logits_BxNxC = model.apply(v, nodes_BxNxF, senders_BxE, receivers_BxE, edge_mask_BxE)

A batch holds B graphs of N nodes and E directed edges each (input_pipeline/graphs.py
pads them, so every batch has one shape); edge e carries node senders[e]'s message to
node receivers[e] (torch_geometric's edge_index[0] -> edge_index[1]). Padded edges
(edge_mask 0) contribute nothing; padded nodes have no edge to a real node, so they
change no real output, and their own outputs are to be ignored. Both layers drop the
graph's self-loops and add one per node (torch_geometric's add_self_loops=True).
Aggregation is jax.ops.segment_sum (and segment_max for GAT's softmax) per graph, with
the graph axis kept (vmap), so a batch sharded over graphs stays sharded.
"""

import functools
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from models import register
from models.layers.named import named

GLOROT = named(nn.initializers.glorot_uniform(), "embed", "mlp")   # torch_geometric's init


def gather(x_BxNxD, index_BxE):
  """x[b, index[b, e]]: each edge's endpoint features."""
  return jnp.take_along_axis(x_BxNxD, index_BxE.reshape(*index_BxE.shape, *(
      (1,) * (x_BxNxD.ndim - 2))), axis=1)


def scatter(op, values_BxE, index_BxE, num_nodes: int):
  """op (segment_sum, segment_max) of the edges' values into their nodes, graph by graph."""
  return jax.vmap(functools.partial(op, num_segments=num_nodes))(values_BxE, index_BxE)


def check(widths, dropouts: dict, heads: dict = None):
  """A ValueError naming the first argument out of range (setup shows it as one line)."""
  if not widths or min(widths) < 1:
    raise ValueError(f"layer widths {tuple(widths)} (hidden, then num_classes) must be >= 1")
  for name, value in (heads or {}).items():
    if value < 1:
      raise ValueError(f"{name}={value} must be >= 1")
  for name, value in dropouts.items():
    if not 0.0 <= value < 1.0:
      raise ValueError(f"{name}={value} must be in [0, 1)")


def edge_weights(senders_BxE, receivers_BxE, edge_mask_BxE):
  """1 for a real edge that is not a self-loop (each node gets its own loop), else 0."""
  return edge_mask_BxE.astype(jnp.float32) * (senders_BxE != receivers_BxE)


class GCNConv(nn.Module):
  """out_i = sum over j -> i and i itself of x_j W / sqrt(deg_i deg_j) + b, deg counting
  the self-loop (torch_geometric's GCNConv: add_self_loops, normalize, bias)."""
  features: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x_BxNxF, senders_BxE, receivers_BxE, edge_mask_BxE):
    N = x_BxNxF.shape[1]
    h_BxNxD = nn.Dense(self.features, use_bias=False, dtype=self.dtype, kernel_init=GLOROT,
                       name="lin")(x_BxNxF)
    w_BxE = edge_weights(senders_BxE, receivers_BxE, edge_mask_BxE)
    deg_BxN = 1.0 + scatter(jax.ops.segment_sum, w_BxE, receivers_BxE, N)
    inv_sqrt_BxN = jax.lax.rsqrt(deg_BxN)
    norm_BxE = (gather(inv_sqrt_BxN, senders_BxE) * w_BxE *
                gather(inv_sqrt_BxN, receivers_BxE)).astype(self.dtype)
    messages_BxExD = gather(h_BxNxD, senders_BxE) * norm_BxE[..., None]
    out_BxNxD = scatter(jax.ops.segment_sum, messages_BxExD, receivers_BxE, N)
    out_BxNxD = out_BxNxD + h_BxNxD * (1.0 / deg_BxN).astype(self.dtype)[..., None]
    bias = self.param("bias", named(nn.initializers.zeros, "mlp"), (self.features,))
    return out_BxNxD + bias.astype(self.dtype)


class GATConv(nn.Module):
  """Multi-head graph attention (torch_geometric's GATConv): per head, the weight of
  edge j -> i is softmax over i's incoming edges and its self-loop of
  LeakyReLU(a_src . x_j W + a_dst . x_i W); heads are concatenated or averaged."""
  features: int                 # per head
  heads: int = 1
  concat: bool = True
  negative_slope: float = 0.2
  attention_dropout: float = 0.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x_BxNxF, senders_BxE, receivers_BxE, edge_mask_BxE, train: bool = False):
    B, N = x_BxNxF.shape[:2]
    H, C = self.heads, self.features
    h_BxNxHxC = nn.Dense(H * C, use_bias=False, dtype=self.dtype, kernel_init=GLOROT,
                         name="lin")(x_BxNxF).reshape(B, N, H, C)
    att_init = named(nn.initializers.glorot_uniform(), "heads", None)
    att_src = self.param("att_src", att_init, (H, C)).astype(self.dtype)
    att_dst = self.param("att_dst", att_init, (H, C)).astype(self.dtype)
    src_BxNxH = (h_BxNxHxC * att_src).sum(-1).astype(jnp.float32)
    dst_BxNxH = (h_BxNxHxC * att_dst).sum(-1).astype(jnp.float32)
    real_BxE = edge_weights(senders_BxE, receivers_BxE, edge_mask_BxE) > 0
    leaky = functools.partial(nn.leaky_relu, negative_slope=self.negative_slope)
    logit_BxExH = leaky(gather(src_BxNxH, senders_BxE) + gather(dst_BxNxH, receivers_BxE))
    logit_BxExH = jnp.where(real_BxE[..., None], logit_BxExH, -jnp.inf)
    self_BxNxH = leaky(src_BxNxH + dst_BxNxH)
    # The softmax is shift-invariant: the per-node maximum needs no gradient. The
    # self-loop keeps it finite, and masked edges get exp(-inf) = 0.
    max_BxNxH = jax.lax.stop_gradient(jnp.maximum(
        scatter(jax.ops.segment_max, logit_BxExH, receivers_BxE, N), self_BxNxH))
    exp_BxExH = jnp.exp(logit_BxExH - gather(max_BxNxH, receivers_BxE))
    exp_self_BxNxH = jnp.exp(self_BxNxH - max_BxNxH)
    denom_BxNxH = scatter(jax.ops.segment_sum, exp_BxExH, receivers_BxE, N) + exp_self_BxNxH
    alpha_BxExH = exp_BxExH / gather(denom_BxNxH, receivers_BxE)
    alpha_self_BxNxH = exp_self_BxNxH / denom_BxNxH
    drop = nn.Dropout(self.attention_dropout, deterministic=not train)
    alpha_BxExH, alpha_self_BxNxH = drop(alpha_BxExH), drop(alpha_self_BxNxH)
    messages_BxExHxC = gather(h_BxNxHxC, senders_BxE) * alpha_BxExH.astype(self.dtype)[..., None]
    out_BxNxHxC = (scatter(jax.ops.segment_sum, messages_BxExHxC, receivers_BxE, N) +
                   h_BxNxHxC * alpha_self_BxNxH.astype(self.dtype)[..., None])
    out = out_BxNxHxC.reshape(B, N, H * C) if self.concat else out_BxNxHxC.mean(2)
    bias = self.param("bias", named(nn.initializers.zeros, "mlp"), (out.shape[-1],))
    return out + bias.astype(self.dtype)


@register("gcn")
class GCN(nn.Module):
  """Kipf and Welling's GCN: [dropout, GCNConv, ReLU] per hidden width, then dropout and
  a GCNConv to the classes (their 2-layer model is hidden=(16,), dropout=0.5)."""
  num_classes: int
  hidden: Sequence[int] = (16,)
  dropout: float = 0.5
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, nodes_BxNxF, senders_BxE, receivers_BxE, edge_mask_BxE,
               train: bool = False):
    widths = (*self.hidden, self.num_classes)
    check(widths, {"dropout": self.dropout})
    x = nodes_BxNxF.astype(self.dtype)
    for i, width in enumerate(widths):
      x = nn.Dropout(self.dropout, deterministic=not train)(x)
      x = GCNConv(width, self.dtype, name=f"conv{i}")(x, senders_BxE, receivers_BxE,
                                                        edge_mask_BxE)
      if i < len(self.hidden):
        x = nn.relu(x)
    return x


@register("gat")
class GAT(nn.Module):
  """Velickovic et al.'s GAT: [dropout, GATConv with `heads` heads concatenated, ELU] per
  hidden width, then dropout and a GATConv to the classes whose `out_heads` heads are
  averaged (their Cora model: hidden=(8,), heads=8, out_heads=1, both dropouts 0.6)."""
  num_classes: int
  hidden: Sequence[int] = (8,)   # per head
  heads: int = 8
  out_heads: int = 1
  dropout: float = 0.6
  attention_dropout: float = 0.6
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, nodes_BxNxF, senders_BxE, receivers_BxE, edge_mask_BxE,
               train: bool = False):
    widths = (*self.hidden, self.num_classes)
    check(widths, {"dropout": self.dropout, "attention_dropout": self.attention_dropout},
          {"heads": self.heads, "out_heads": self.out_heads})
    x = nodes_BxNxF.astype(self.dtype)
    for i, width in enumerate(widths):
      last = i == len(self.hidden)
      x = nn.Dropout(self.dropout, deterministic=not train)(x)
      x = GATConv(width, self.out_heads if last else self.heads, concat=not last,
                  attention_dropout=self.attention_dropout, dtype=self.dtype,
                  name=f"conv{i}")(x, senders_BxE, receivers_BxE, edge_mask_BxE, train)
      if not last:
        x = nn.elu(x)
    return x

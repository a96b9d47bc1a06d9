"""Recurrent character language models: an embedding, num_layers stacked LSTM or GRU layers
(jax.lax.scan over time) and a dense head to the vocabulary.

    model = RNN(cell="lstm", vocab_size=256, num_layers=2, hidden=808, dropout=0.2)
    logits_BxTxV = model.apply(v, tokens_BxT)
    y_BxTxH, states = model.apply(v, x_BxTxH, states, method="recurrent")  # the core alone
    logits, vars = model.apply(v, tokens, decode=True, mutable=["cache"])  # state carried on

The parameters and states are torch.nn.LSTM / torch.nn.GRU's (batch_first=True):
core/layer_{k}/weight_ih [in, G*H] is torch's weight_ih_l{k} transposed, likewise
weight_hh, with bias_ih and bias_hh as they are (G = 4 gates i, f, g, o for the LSTM;
3 gates r, z, n for the GRU, with b_hn inside the reset product); states are (h, c) of shape
[num_layers, B, H] for the LSTM and h for the GRU. Initialisation is torch's: every
recurrent weight and bias ~ U(-1/sqrt(H), 1/sqrt(H)). Matmuls run in `dtype`; biases,
gates and states are float32.
"""

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from models import register
from models.layers.head_loss import lookup
from models.layers.named import named

GATES = {"lstm": 4, "gru": 3}


def lstm_cell(h_BxH, c_BxH, gx_Bx4H, gh_Bx4H):
  i, f, g, o = jnp.split(gx_Bx4H + gh_Bx4H, 4, axis=-1)
  c_BxH = jax.nn.sigmoid(f) * c_BxH + jax.nn.sigmoid(i) * jnp.tanh(g)
  return jax.nn.sigmoid(o) * jnp.tanh(c_BxH), c_BxH


def gru_cell(h_BxH, gx_Bx3H, gh_Bx3H):
  rx, zx, nx = jnp.split(gx_Bx3H, 3, axis=-1)
  rh, zh, nh = jnp.split(gh_Bx3H, 3, axis=-1)
  r, z = jax.nn.sigmoid(rx + rh), jax.nn.sigmoid(zx + zh)
  n = jnp.tanh(nx + r * nh)   # nh holds b_hn: torch's reset gate scales it too
  return ((1.0 - z) * n + z * h_BxH,)


CELLS = {"lstm": lstm_cell, "gru": gru_cell}


def torch_uniform(bound: float):
  return lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype,
                                                                  -bound, bound)


class RecurrentLayer(nn.Module):
  """One layer over time: [B, T, D] and the layer's state tuple -> ([B, T, H], final)."""
  cell: str
  hidden: int
  dtype: Any

  @nn.compact
  def __call__(self, x_BxTxD, state):
    H, G = self.hidden, GATES[self.cell] * self.hidden
    init = torch_uniform(1.0 / math.sqrt(H))
    w_ih = self.param("weight_ih", named(init, "embed", "mlp"), (x_BxTxD.shape[-1], G))
    w_hh = self.param("weight_hh", named(init, None, "mlp"), (H, G)).astype(self.dtype)
    b_ih = self.param("bias_ih", named(init, "mlp"), (G,))
    b_hh = self.param("bias_hh", named(init, "mlp"), (G,))
    # The input's share of every gate for all steps in one matmul, time-major for the scan.
    gx_TxBxG = jnp.einsum("btd,dg->tbg", x_BxTxD.astype(self.dtype),
                          w_ih.astype(self.dtype)).astype(jnp.float32) + b_ih
    cell = CELLS[self.cell]

    def step(state, gx_BxG):
      gh_BxG = jnp.dot(state[0].astype(self.dtype), w_hh).astype(jnp.float32) + b_hh
      state = cell(*state, gx_BxG, gh_BxG)
      return state, state[0]

    state, h_TxBxH = jax.lax.scan(step, state, gx_TxBxG)
    return h_TxBxH.swapaxes(0, 1).astype(self.dtype), state


class Recurrent(nn.Module):
  """torch.nn.LSTM / torch.nn.GRU (batch_first): [B, T, D] and initial states (zeros if
  None) -> (outputs [B, T, H], final states); `dropout` between layers, as torch's.
  decode=True starts from the states in the "cache" collection and stores the final ones."""
  cell: str
  num_layers: int
  hidden: int
  dropout: float = 0.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x_BxTxD, states=None, *, train: bool = False, decode: bool = False):
    if self.cell not in GATES:
      raise ValueError(f"cell {self.cell!r} unknown; use one of {sorted(GATES)}")
    shape = (self.num_layers, x_BxTxD.shape[0], self.hidden)
    names = ("h", "c") if self.cell == "lstm" else ("h",)
    if decode:
      cache = [self.variable("cache", name, jnp.zeros, shape, jnp.float32) for name in names]
      states = tuple(v.value for v in cache)
    elif states is None:
      states = tuple(jnp.zeros(shape, jnp.float32) for _ in names)
    elif self.cell == "gru":
      states = (states,)
    finals = []
    for k in range(self.num_layers):
      if k:
        x_BxTxD = nn.Dropout(self.dropout, deterministic=not train)(x_BxTxD)
      x_BxTxD, final = RecurrentLayer(self.cell, self.hidden, self.dtype, name=f"layer_{k}")(
          x_BxTxD, tuple(s[k].astype(jnp.float32) for s in states))
      finals.append(final)
    finals = tuple(jnp.stack(s) for s in zip(*finals))
    if decode and not self.is_initializing():
      for v, s in zip(cache, finals):
        v.value = s
    return x_BxTxD, finals if self.cell == "lstm" else finals[0]


@register("rnn")
class RNN(nn.Module):
  cell: str = "lstm"               # lstm | gru
  vocab_size: int = 256
  num_layers: int = 2
  hidden: int = 512                # the embedding's and every layer's width
  dropout: float = 0.0             # on the embeddings, between layers and before the head
  dtype: Any = jnp.float32

  def setup(self):
    self.embed = nn.Embed(self.vocab_size, self.hidden, name="embed",
                          embedding_init=named(nn.initializers.normal(1.0), "vocab", "embed"))
    self.core = Recurrent(self.cell, self.num_layers, self.hidden, self.dropout, self.dtype)
    self.drop = nn.Dropout(self.dropout)
    self.head = nn.Dense(self.vocab_size, dtype=self.dtype,
                         kernel_init=named(nn.initializers.lecun_normal(), "embed", "vocab"),
                         bias_init=named(nn.initializers.zeros, "vocab"))

  def __call__(self, tokens_BxT, *, train: bool = False, decode: bool = False):
    """Logits [B, T, V] in float32; decode=True carries the states on in "cache"."""
    x_BxTxH = lookup(self.embed.embedding.astype(self.dtype), tokens_BxT)
    x_BxTxH = self.drop(x_BxTxH, deterministic=not train)
    y_BxTxH, _ = self.core(x_BxTxH, train=train, decode=decode)
    y_BxTxH = self.drop(y_BxTxH, deterministic=not train)
    return self.head(y_BxTxH).astype(jnp.float32)

  def recurrent(self, x_BxTxD, states=None, *, train: bool = False):
    """The recurrent core alone, as torch.nn.LSTM / GRU: (outputs, final states)."""
    return self.core(x_BxTxD, states, train=train)

  def flops_per_token(self, num_params: int, seq_len: int) -> float:
    """Training FLOPs per token: 6N, each weight in one matmul per token (the embedding a
    one-hot matmul)."""
    return 6.0 * num_params

"""The Transformer's feed-forward block with a choice of activation.

    y_BxTxD = FeedForward(hidden=3072, activation="swiglu")(x_BxTxD)

gated activations (swiglu) use two input projections (Shazeer, 2020).
"""

import math
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from models.layers.fp8 import FP8_DOT_GENERAL
from models.layers.named import named

_C = math.sqrt(2 / math.pi)


def _gelu_parts(x):
  x = x.astype(jnp.float32)
  t = jnp.tanh(_C * (x + 0.044715 * x**3))
  return x, t


@jax.custom_vjp
def gelu_tanh(x):
  """GPT-2's tanh GELU, computed in float32. Its gradient is recomputed from x alone, so
  the forward pass writes only the output (autodiff would also store tanh's value: one
  more [tokens, 4D] array written and read per layer)."""
  x32, t = _gelu_parts(x)
  return (0.5 * x32 * (1 + t)).astype(x.dtype)


def _gelu_fwd(x):
  return gelu_tanh(x), x


def _gelu_bwd(x, g):
  # The barrier keeps XLA from sharing tanh's value with the forward pass, which would
  # store it (in float32) instead of recomputing it.
  x32, t = _gelu_parts(jax.lax.optimization_barrier(x))
  d = 0.5 * (1 + t) + 0.5 * x32 * (1 - t * t) * _C * (1 + 3 * 0.044715 * x32 * x32)
  return ((g.astype(jnp.float32) * d).astype(x.dtype),)


gelu_tanh.defvjp(_gelu_fwd, _gelu_bwd)

ACTIVATIONS = {
    "gelu": gelu_tanh,                                    # GPT-2's tanh form
    "relu": jax.nn.relu,
    "sq_relu": lambda x: jnp.square(jax.nn.relu(x)),      # So et al., 2021
    "swiglu": jax.nn.silu,                                # gated: silu(xW) * xV
}
GATED = {"swiglu"}


class FeedForward(nn.Module):
  hidden: int
  activation: str = "gelu"
  use_bias: bool = False
  dtype: Any = jnp.float32
  kernel_init: Callable = nn.initializers.normal(0.02)
  out_init: Callable = nn.initializers.normal(0.02)
  fp8: bool = False                # fp8 matmuls with delayed scaling (models/layers/fp8.py)

  @nn.compact
  def __call__(self, x_BxTxD):
    if self.activation not in ACTIVATIONS:
      raise ValueError(f"activation {self.activation!r} unknown; use one of {sorted(ACTIVATIONS)}")
    dense = lambda n, init, names, name: nn.Dense(
        n, use_bias=self.use_bias, dtype=self.dtype, kernel_init=named(init, *names), name=name,
        dot_general_cls=FP8_DOT_GENERAL if self.fp8 else None)
    up = ("embed", "mlp")
    h_BxTxF = ACTIVATIONS[self.activation](dense(self.hidden, self.kernel_init, up, "wi")(x_BxTxD))
    if self.activation in GATED:
      h_BxTxF = h_BxTxF * dense(self.hidden, self.kernel_init, up, "wg")(x_BxTxD)
    return dense(x_BxTxD.shape[-1], self.out_init, ("mlp", "embed"), "wo")(h_BxTxF)

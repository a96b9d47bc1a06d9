"""The Transformer's feed-forward block with a choice of activation.

    y_BxTxD = FeedForward(hidden=3072, activation="swiglu")(x_BxTxD)

gated activations (swiglu) use two input projections (Shazeer, 2020).
"""

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from models.layers.named import named

ACTIVATIONS = {
    "gelu": lambda x: jax.nn.gelu(x, approximate=True),   # GPT-2's tanh form
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

  @nn.compact
  def __call__(self, x_BxTxD):
    if self.activation not in ACTIVATIONS:
      raise ValueError(f"activation {self.activation!r} unknown; use one of {sorted(ACTIVATIONS)}")
    dense = lambda n, init, names, name: nn.Dense(
        n, use_bias=self.use_bias, dtype=self.dtype, kernel_init=named(init, *names), name=name)
    up = ("embed", "mlp")
    h_BxTxF = ACTIVATIONS[self.activation](dense(self.hidden, self.kernel_init, up, "wi")(x_BxTxD))
    if self.activation in GATED:
      h_BxTxF = h_BxTxF * dense(self.hidden, self.kernel_init, up, "wg")(x_BxTxD)
    return dense(x_BxTxD.shape[-1], self.out_init, ("mlp", "embed"), "wo")(h_BxTxF)

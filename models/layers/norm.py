"""Normalisation layers by name: LayerNorm or RMSNorm.

    x = make_norm("rmsnorm", dtype=jnp.bfloat16, name="ln1")(x)
"""

import flax.linen as nn

NORMS = ("layernorm", "rmsnorm")


def make_norm(kind: str, *, dtype, use_bias: bool = False, name=None):
  if kind == "layernorm":
    return nn.LayerNorm(epsilon=1e-5, use_bias=use_bias, dtype=dtype, name=name)
  if kind == "rmsnorm":
    return nn.RMSNorm(epsilon=1e-6, dtype=dtype, name=name)
  raise ValueError(f"norm {kind!r} unknown; use one of {NORMS}")

"""Normalisation layers by name: LayerNorm or RMSNorm.

    x = make_norm("rmsnorm", dtype=jnp.bfloat16, name="ln1")(x)
    x = make_norm("layernorm", dtype=jnp.bfloat16, implementation="auto")(x)

"auto" LayerNorm (no bias, 16-bit, on a GPU) runs the Pallas kernels of fused_norm; the
parameters are flax's either way ({"scale"}), so checkpoints move between the two.
"""

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from models.layers import fused_norm, kernels

NORMS = ("layernorm", "rmsnorm")


def choose_implementation(requested: str, kind: str, dtype, use_bias: bool) -> str:
  return kernels.choose("norm_impl", requested, fits=kind == "layernorm" and not use_bias,
                        needs=f"a LayerNorm without bias (got norm={kind!r}, "
                              f"use_bias={use_bias})", dtype=dtype)


class FusedLayerNorm(nn.Module):
  """flax's LayerNorm(use_bias=False) through fused_norm's kernels; called with a residual
  branch, (x, delta) -> (x + delta, its normalisation) in one kernel. Under a mesh of more
  than one device each shard of rows runs the kernel (shard_map); the last axis stays whole."""
  epsilon: float = 1e-5
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, delta=None):
    scale = self.param("scale", nn.initializers.ones, (x.shape[-1],))
    interpret = kernels.interpret()
    if delta is None:
      fn = lambda x, scale: fused_norm.layer_norm(x, scale, self.epsilon, interpret)
      return kernels.over_rows(fn, x.astype(self.dtype), whole=(scale,))
    fn = lambda x, delta, scale: fused_norm.add_layer_norm(x, delta, scale, self.epsilon,
                                                           interpret)
    return kernels.over_rows(fn, x.astype(self.dtype), delta.astype(self.dtype),
                             whole=(scale,))


def add_and_norm(norm, x, delta):
  """(x + delta, norm(x + delta)): one kernel for a FusedLayerNorm, two ops otherwise."""
  if isinstance(norm, FusedLayerNorm):
    return norm(x, delta)
  x = x + delta
  return x, norm(x)


def make_norm(kind: str, *, dtype, use_bias: bool = False, name=None,
              implementation: str = "xla"):
  impl = choose_implementation(implementation, kind, dtype, use_bias)
  if kind == "layernorm" and impl == "pallas":
    return FusedLayerNorm(epsilon=1e-5, dtype=dtype, name=name)
  if kind == "layernorm":
    return nn.LayerNorm(epsilon=1e-5, use_bias=use_bias, dtype=dtype, name=name)
  if kind == "rmsnorm":
    return nn.RMSNorm(epsilon=1e-6, dtype=dtype, name=name)
  raise ValueError(f"norm {kind!r} unknown; use one of {NORMS}")

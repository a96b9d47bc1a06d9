"""Normalisation layers by name: LayerNorm or RMSNorm.

    x = make_norm("rmsnorm", dtype=jnp.bfloat16, name="ln1")(x)
    x = make_norm("layernorm", dtype=jnp.bfloat16, implementation="auto")(x)

"auto" LayerNorm (no bias, 16-bit, on a GPU) runs the Pallas kernels of fused_norm; the
parameters are flax's either way ({"scale"}), so checkpoints move between the two.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from models.layers import fused_norm

NORMS = ("layernorm", "rmsnorm")
IMPLEMENTATIONS = ("auto", "pallas", "xla")


def choose_implementation(requested: str, kind: str, dtype, use_bias: bool) -> str:
  if requested not in IMPLEMENTATIONS:
    raise ValueError(f"norm_impl {requested!r} unknown; use one of {IMPLEMENTATIONS}")
  fits = kind == "layernorm" and not use_bias
  if requested == "pallas" and not fits:
    raise ValueError(f"norm_impl='pallas' is a LayerNorm without bias; got norm={kind!r}, "
                     f"use_bias={use_bias}: use norm_impl='xla' or 'auto'")
  if requested != "auto":
    return requested
  gpu_16bit = (jax.devices()[0].platform == "gpu" and
               jnp.dtype(dtype) in (jnp.bfloat16, jnp.float16))
  return "pallas" if fits and gpu_16bit else "xla"


class FusedLayerNorm(nn.Module):
  """flax's LayerNorm(use_bias=False) through fused_norm's kernels; called with a residual
  branch, (x, delta) -> (x + delta, its normalisation) in one kernel. Under a mesh of more
  than one device each shard of rows runs the kernel (shard_map); the last axis stays whole."""
  epsilon: float = 1e-5
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, delta=None):
    scale = self.param("scale", nn.initializers.ones, (x.shape[-1],))
    interpret = jax.devices()[0].platform != "gpu"   # Pallas' interpreter elsewhere (tests)
    args = (x.astype(self.dtype),) + (() if delta is None else (delta.astype(self.dtype),))
    if delta is None:
      fn = lambda x, scale: fused_norm.layer_norm(x, scale, self.epsilon, interpret)
    else:
      fn = lambda x, delta, scale: fused_norm.add_layer_norm(x, delta, scale, self.epsilon,
                                                             interpret)
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or mesh.size == 1:
      return fn(*args, scale)
    leading = tuple(nn.logical_to_mesh_axes(("batch", "length", None)[-x.ndim:]))
    spec = P(*leading[:-1], None)
    outs = spec if delta is None else (spec, spec)
    return jax.shard_map(fn, mesh=mesh, in_specs=(spec,) * len(args) + (P(),),
                         out_specs=outs, check_vma=False)(*args, scale)


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

"""Where the Pallas kernels (fused_norm, fused_softmax) run.

    impl = choose("loss_impl", requested, fits=True, needs="", dtype=dt, split_axes=("vocab",))
    y = over_rows(kernel_fn, x, whole=(scale,))      # per device's rows under a mesh

"auto" picks a kernel on a GPU for 16-bit compute when the model's shape fits it and the
mesh does not split the axes named in split_axes; off the GPU the kernels run in Pallas'
interpreter (tests).
"""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

IMPLEMENTATIONS = ("auto", "pallas", "xla")


def gpu_16bit(dtype) -> bool:
  return (jax.devices()[0].platform == "gpu" and
          jnp.dtype(dtype) in (jnp.bfloat16, jnp.float16))


def interpret() -> bool:
  return jax.devices()[0].platform != "gpu"


def is_split(logical_axes) -> bool:
  """Whether the current mesh and logical rules split any of these axes over devices."""
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty or mesh.size == 1:
    return False
  for axes in nn.logical_to_mesh_axes(tuple(logical_axes)):
    for axis in (axes if isinstance(axes, tuple) else (axes,)):
      if axis is not None and mesh.shape[axis] > 1:
        return True
  return False


def choose(name: str, requested: str, *, fits: bool, needs: str, dtype,
           split_axes=()) -> str:
  if requested not in IMPLEMENTATIONS:
    raise ValueError(f"{name} {requested!r} unknown; use one of {IMPLEMENTATIONS}")
  if requested == "pallas" and not fits:
    raise ValueError(f"{name}='pallas' needs {needs}: use {name}='xla' or 'auto'")
  if requested != "auto":
    return requested
  return "pallas" if fits and gpu_16bit(dtype) and not is_split(split_axes) else "xla"


def _lead_spec(shape) -> tuple:
  """Mesh axes of the leading (batch, length) dimensions, as the rules split them; a
  dimension the mesh does not divide stays whole (as train_lib/partitioning.py does)."""
  mesh = jax.sharding.get_abstract_mesh()
  names = ("batch", "length")[:len(shape) - 1]          # the last axis stays whole
  lead = []
  for size, axes in zip(shape, nn.logical_to_mesh_axes(names)):
    group = [a for a in (axes if isinstance(axes, tuple) else (axes,)) if a is not None]
    ways = math.prod(mesh.shape[a] for a in group)
    lead.append(axes if group and size % ways == 0 else None)
  return tuple(lead)


def over_rows(fn, *args, whole=()):
  """fn(*args, *whole), run per shard of rows under a mesh of more than one device: args
  are [batch, (length,) ...] activations split as the rules split batch and length (where
  the mesh divides them); outputs share args' leading dimensions; `whole` (weights) is
  gathered whole on every device. Without a mesh (or with one device) fn is called as it
  is."""
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty or mesh.size == 1:
    return fn(*args, *whole)
  lead = _lead_spec(args[0].shape)
  spec = lambda x: P(*lead, *([None] * (x.ndim - len(lead))))
  out = jax.eval_shape(fn, *args, *whole)
  return jax.shard_map(fn, mesh=mesh, in_specs=tuple(map(spec, args)) + (P(),) * len(whole),
                       out_specs=jax.tree.map(spec, out), check_vma=False)(*args, *whole)

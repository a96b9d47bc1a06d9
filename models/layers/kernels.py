"""Where the Pallas kernels (fused_norm, fused_softmax) run.

    impl = choose("loss_impl", requested, fits=True, needs="", dtype=dt, split_axes=("vocab",))
    y = over_rows(kernel_fn, x, whole=(scale,))      # per device's rows under a mesh

"auto" picks a kernel on a GPU for 16-bit compute when the model's shape fits it and the
mesh does not split the dimensions it needs whole; off the GPU the kernels run in Pallas'
interpreter (tests).
"""

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


def _row_spec(x):
  lead = tuple(nn.logical_to_mesh_axes(("batch", "length")))
  return P(*lead, *([None] * (x.ndim - 2)))


def over_rows(fn, *args, whole=()):
  """fn(*args, *whole), run per shard of rows under a mesh of more than one device: args
  and outputs are [batch, length, ...] activations, split as the rules split batch and
  length; `whole` (weights) is gathered whole on every device. Without a mesh (or with
  one device) fn is called as it is."""
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty or mesh.size == 1:
    return fn(*args, *whole)
  out = jax.eval_shape(fn, *args, *whole)
  return jax.shard_map(fn, mesh=mesh,
                       in_specs=tuple(map(_row_spec, args)) + (P(),) * len(whole),
                       out_specs=jax.tree.map(_row_spec, out), check_vma=False)(*args, *whole)

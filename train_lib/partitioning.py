"""The device mesh and the shardings of state and batches.

    mesh = partitioning.make_mesh(config.mesh)   # axes ("data", "fsdp", "expert", "tensor")
    batch_sharding = partitioning.batch_sharding(mesh)

The batch is split over data x fsdp x expert. Models name their parameters' axes (Flax
logical partitioning: "embed", "mlp", "heads", "vocab", "expert", ...); config.mesh.rules
map those names to mesh axes: "embed" -> fsdp shards parameters and optimizer state (FSDP),
"heads", "mlp" and "vocab" -> tensor (tensor parallelism), "expert" -> expert (expert
parallelism: each device holds 1/E of a mixture's experts). A dimension that the mesh axes
do not divide, and every unnamed one, is replicated; with fsdp = expert = tensor = 1 this is
plain data parallelism.

The expert axis also splits the batch, as in GShard and Switch: the layers outside the
experts are replicated over it, so without its share of the batch each of its devices would
repeat the same dense work; with it, tokens move to their experts' devices and back
(all-to-all) and the rest is data parallel. A mesh config without an `expert` field (and a
mesh built over AXES) has no expert axis.

    shardings = partitioning.state_sharding(mesh, boxed_abstract_state, config.mesh.rules)
    print(partitioning.describe(abstract_state, shardings))  # shapes, specs, bytes/device
"""

import math

import flax.linen as nn
import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from train_lib import writers
from train_lib.errors import UserError

AXES = ("data", "fsdp", "tensor")                       # every mesh has these
EXPERT_AXES = ("data", "fsdp", "expert", "tensor")      # with expert parallelism's axis
BATCH_AXES = ("data", "fsdp", "expert")                 # the mesh axes that split the batch


def mesh_axes(config) -> tuple:
  """The axis names of config.mesh's mesh: EXPERT_AXES where it has `expert`, else AXES.
  The expert axis sits next to tensor, on the faster links (jax.make_mesh's order)."""
  return EXPERT_AXES if "expert" in config else AXES


def mesh_shape(config, num_devices: int):
  axes = mesh_axes(config)
  sizes = [config[a] for a in axes]
  if sizes.count(-1) > 1:
    raise UserError(f"mesh {dict(zip(axes, sizes))}: at most one axis may be -1")
  if any(s == 0 or s < -1 for s in sizes):
    raise UserError(f"mesh {dict(zip(axes, sizes))}: sizes must be positive or -1")
  known = math.prod(s for s in sizes if s != -1)
  if -1 in sizes:
    if num_devices % known:
      raise UserError(f"mesh {dict(zip(axes, sizes))} does not divide {num_devices} devices")
    sizes[sizes.index(-1)] = num_devices // known
  if math.prod(sizes) != num_devices:
    raise UserError(f"mesh {dict(zip(axes, sizes))} needs {math.prod(sizes)} devices but "
                    f"{num_devices} are present; set one axis to -1")
  return tuple(sizes)


def make_mesh(config, devices=None) -> Mesh:
  devices = devices if devices is not None else jax.devices()
  shape, axes = mesh_shape(config, len(devices)), mesh_axes(config)
  return jax.make_mesh(shape, axes, devices=devices,
                       axis_types=(jax.sharding.AxisType.Auto,) * len(axes))


def batch_axes(mesh: Mesh) -> tuple:
  return tuple(a for a in BATCH_AXES if a in mesh.shape)


def batch_shards(mesh: Mesh) -> int:
  """How many pieces the batch is split into: data x fsdp x expert."""
  return math.prod(mesh.shape[a] for a in batch_axes(mesh))


def batch_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P(batch_axes(mesh)))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def check_rules(rules, mesh: Mesh) -> tuple:
  """config.mesh.rules (pairs of logical name, mesh axis / tuple of axes / None), checked
  against the mesh, as the tuple of pairs that flax's logical-axis functions take."""
  checked = []
  for pair in rules:
    if len(pair) != 2:
      raise UserError(f"mesh.rules entry {pair!r} must be a pair (logical name, mesh axes)")
    name, axes = pair
    axes = None if axes is None else axes if isinstance(axes, str) else tuple(axes)
    names = () if axes is None else (axes,) if isinstance(axes, str) else axes
    unknown = [a for a in names if a not in mesh.shape]
    if unknown:
      raise UserError(f"mesh.rules maps {name!r} to unknown mesh axes {unknown}; "
                      f"the axes are {tuple(mesh.shape)}")
    checked.append((name, axes))
  return tuple(checked)


def divisible(spec: P, shape, mesh: Mesh) -> P:
  """`spec` with size-1 mesh axes left out, and replicated on every dimension that its
  mesh axes do not divide (flax's mapping does not look at sizes)."""
  out = []
  for axes, dim in zip(spec, shape):
    axes = () if axes is None else (axes,) if isinstance(axes, str) else tuple(axes)
    axes = tuple(a for a in axes if mesh.shape[a] > 1)
    if not axes or dim % math.prod(mesh.shape[a] for a in axes):
      out.append(None)
    else:
      out.append(axes[0] if len(axes) == 1 else axes)
  return P(*out)


def state_sharding(mesh: Mesh, boxed_abstract_state, rules=()):
  """Shardings for a state whose leaves may be Flax-partitioned boxes (from init with
  logical names), mapped to mesh axes by flax (nn.get_partition_spec,
  nn.logical_to_mesh_sharding) and made divisible; unboxed leaves are replicated. The
  result's tree is the unboxed one."""
  logical = nn.get_partition_spec(boxed_abstract_state)
  shardings = nn.logical_to_mesh_sharding(logical, mesh, check_rules(rules, mesh))
  return jax.tree.map(lambda x, sh: NamedSharding(mesh, divisible(sh.spec, x.shape, mesh)),
                      nn.meta.unbox(boxed_abstract_state), shardings)


def bytes_per_device(abstract_state, shardings) -> int:
  def one(x, sharding):
    shard = sharding.shard_shape(x.shape)
    return math.prod(shard) * np.dtype(x.dtype).itemsize
  return sum(jax.tree.leaves(jax.tree.map(one, abstract_state, shardings)))


def describe(abstract_state, shardings) -> str:
  """One line per array: path, shape, dtype, PartitionSpec, bytes per device; totals."""
  rows = []
  flat, _ = jax.tree_util.tree_flatten_with_path(abstract_state)
  specs = jax.tree.leaves(shardings)
  for (path, x), sharding in zip(flat, specs):
    mb = math.prod(sharding.shard_shape(x.shape)) * np.dtype(x.dtype).itemsize / 2**20
    rows.append([jax.tree_util.keystr(path, simple=True, separator="/"), tuple(x.shape),
                 x.dtype, tuple(sharding.spec), f"{mb:.2f}"])
  lines = [writers.table(["array", "shape", "dtype", "sharding", "MB/device"], rows,
                         right=(1, 4))]
  total = sum(math.prod(x.shape) * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(
      abstract_state)) / 2**20
  per_device = bytes_per_device(abstract_state, shardings) / 2**20
  mesh = dict(specs[0].mesh.shape)
  lines.append(f"total {total:,.1f} MB; per device {per_device:,.1f} MB "
               f"({per_device / max(total, 1e-9):.1%}) on mesh {mesh}")
  return "\n".join(lines)


def to_host(x) -> np.ndarray:
  """A global jax.Array as one numpy array, whole on every process."""
  if x.is_fully_addressable:
    return np.asarray(x)
  return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def check_batch(batch_size: int, mesh: Mesh, name: str):
  shards = batch_shards(mesh)
  if batch_size % shards:
    raise UserError(f"data.{name}={batch_size} is not divisible by the {shards} data shards "
                    f"of mesh {dict(mesh.shape)}; use a multiple of {shards}")

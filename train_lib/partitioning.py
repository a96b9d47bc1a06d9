"""The device mesh and the shardings of state and batches.

    mesh = partitioning.make_mesh(config.mesh)        # axes ("data", "fsdp", "tensor")
    batch_sharding = partitioning.batch_sharding(mesh)

Data parallel by default: the batch is split over data x fsdp, the state is
replicated. (Sharding parameters over fsdp/tensor comes with logical axis rules.)
"""

import math

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from train_lib.errors import UserError

AXES = ("data", "fsdp", "tensor")


def mesh_shape(config, num_devices: int):
  sizes = [config[a] for a in AXES]
  if sizes.count(-1) > 1:
    raise UserError(f"mesh {dict(zip(AXES, sizes))}: at most one axis may be -1")
  if any(s == 0 or s < -1 for s in sizes):
    raise UserError(f"mesh {dict(zip(AXES, sizes))}: sizes must be positive or -1")
  known = math.prod(s for s in sizes if s != -1)
  if -1 in sizes:
    if num_devices % known:
      raise UserError(f"mesh {dict(zip(AXES, sizes))} does not divide {num_devices} devices")
    sizes[sizes.index(-1)] = num_devices // known
  if math.prod(sizes) != num_devices:
    raise UserError(f"mesh {dict(zip(AXES, sizes))} needs {math.prod(sizes)} devices but "
                    f"{num_devices} are present; set one axis to -1")
  return tuple(sizes)


def make_mesh(config, devices=None) -> Mesh:
  devices = devices if devices is not None else jax.devices()
  shape = mesh_shape(config, len(devices))
  return jax.make_mesh(shape, AXES, devices=devices,
                       axis_types=(jax.sharding.AxisType.Auto,) * len(AXES))


def batch_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P(("data", "fsdp")))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def state_sharding(mesh: Mesh, abstract_state):
  return jax.tree.map(lambda _: replicated(mesh), abstract_state)


def check_batch(batch_size: int, mesh: Mesh, name: str):
  shards = mesh.shape["data"] * mesh.shape["fsdp"]
  if batch_size % shards:
    raise UserError(f"data.{name}={batch_size} is not divisible by the {shards} data shards "
                    f"of mesh {dict(mesh.shape)}; use a multiple of {shards}")

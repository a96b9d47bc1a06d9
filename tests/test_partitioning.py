"""Sharding on 8 fake CPU devices: data parallel, FSDP, tensor parallel and their mixes
give one device's losses; FSDP holds about 1/8 of the state per device."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from configs import base, gpt2_124m
from tests.test_train_lib import run_steps, tiny_config
from train_lib import partitioning, setup
from train_lib.errors import UserError

MESHES = {"data": dict(data=8), "fsdp": dict(data=1, fsdp=8), "tensor": dict(data=1, tensor=8),
          "data x tensor": dict(data=2, tensor=4), "data x fsdp x tensor": dict(data=2, fsdp=2,
                                                                               tensor=2)}


def tiny_transformer(tfds_dir, **mesh):
  config = gpt2_124m.get_config("runlocal,synthetic")
  config.data.tfds_dir = tfds_dir
  config.model.num_heads = 8         # head_dim 8: heads divide the tensor axis
  config.model.loss_chunk = 0
  config.optim.grad_accum_steps = 1
  config.mesh.update(data=1, fsdp=1, tensor=1)
  config.mesh.update(mesh)
  return config


@pytest.fixture(scope="module")
def one_device_losses(tfds_dir):
  losses, _ = run_steps(tiny_transformer(tfds_dir), 4, devices=jax.devices()[:1])
  return losses


@pytest.mark.parametrize("name", list(MESHES))
def test_transformer_sharded_matches_one_device(tfds_dir, one_device_losses, name):
  config = tiny_transformer(tfds_dir, **MESHES[name])
  losses, state = run_steps(config, 4)
  np.testing.assert_allclose(losses, one_device_losses, rtol=1e-5)
  wi = state.params["layer_0"]["mlp"]["wi"]["kernel"]      # ("embed", "mlp")
  spec = tuple(wi.sharding.spec) + (None,) * 2
  assert spec[0] == ("fsdp" if MESHES[name].get("fsdp", 1) > 1 else None)
  assert spec[1] == ("tensor" if MESHES[name].get("tensor", 1) > 1 else None)


def test_pallas_kernels_sharded_match_one_device(tfds_dir, one_device_losses):
  """The Pallas LayerNorm and softmax statistics run per shard of rows (shard_map); the
  norm scale's gradient is summed over the shards."""
  config = tiny_transformer(tfds_dir, data=2, fsdp=2, tensor=2)
  config.model.update(norm_impl="pallas", loss_impl="pallas")
  losses, _ = run_steps(config, 4)
  np.testing.assert_allclose(losses, one_device_losses, rtol=1e-5)


def test_pallas_kernels_keep_rows_whole_where_the_mesh_does_not_divide_them():
  """A micro-batch of 2 rows on data x fsdp = 4: the kernels run on whole rows (as the
  partitioner replicates such a dimension) instead of failing in shard_map."""
  import flax.linen as nn
  import jax.numpy as jnp
  from models.layers.head_loss import logsumexp_and_max
  mesh = jax.make_mesh((2, 2, 2), partitioning.AXES)
  logits = jax.random.normal(jax.random.PRNGKey(0), (2, 5, 300))
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  fn = jax.jit(lambda x: logsumexp_and_max(x, "pallas")[0], in_shardings=replicated)
  with jax.sharding.use_abstract_mesh(mesh.abstract_mesh), nn.logical_axis_rules(
      base.get_config().mesh.rules):
    lse = fn(logits)
  np.testing.assert_allclose(lse, jax.nn.logsumexp(logits, -1), rtol=1e-6)
  assert jnp.shape(lse) == (2, 5)


def test_fsdp_holds_an_eighth_of_the_state_per_device(tfds_dir):
  s = setup.build(tiny_transformer(tfds_dir, data=1, fsdp=8))
  per_device = partitioning.bytes_per_device(s.abstract_state, s.state_sharding)
  total = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(s.abstract_state))
  assert total / 8 <= per_device < 1.05 * total / 8   # only norms and scalars replicate
  table = partitioning.describe(s.abstract_state, s.state_sharding)
  assert "opt_state" in table and "'fsdp'" in table and "per device" in table


def test_image_model_fsdp_matches_data_parallel(tfds_dir):
  dp, _ = run_steps(tiny_config(tfds_dir, data=8), 4)
  fsdp, state = run_steps(tiny_config(tfds_dir, data=1, fsdp=8), 4)
  np.testing.assert_allclose(fsdp, dp, rtol=1e-5)
  kernel = state.params["Dense_0"]["kernel"]                # 64 inputs over 8 devices
  assert kernel.sharding.shard_shape(kernel.shape) == (8, 32)


def test_indivisible_dimensions_replicate_and_bad_rules_are_refused():
  mesh = jax.make_mesh((1, 8, 1), partitioning.AXES)
  box = lambda shape: nn.Partitioned(jax.ShapeDtypeStruct(shape, jnp.float32), ("embed", "mlp"))
  boxed = {"odd": box((12, 16)), "even": box((16, 16)),
           "step": jax.ShapeDtypeStruct((), jnp.int32)}
  shardings = partitioning.state_sharding(mesh, boxed, base.get_config().mesh.rules)
  assert shardings["odd"].spec == P(None, None)      # 12 rows over fsdp=8: replicated
  assert shardings["even"].spec == P("fsdp", None)   # mlp -> tensor, of size 1: left out
  assert shardings["step"].spec == P()
  with pytest.raises(UserError, match="unknown mesh axes"):
    partitioning.check_rules((("embed", "model"),), mesh)

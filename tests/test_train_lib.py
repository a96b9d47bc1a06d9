"""train_lib units on fake CPU devices: mesh, steps, accumulation, data parallel,
checkpoint retention and restore onto another mesh."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import base
from train_lib import checkpointing, loop, partitioning, setup, state as state_lib, step
from train_lib.errors import UserError


def tiny_config(tfds_dir, **mesh):
  config = base.get_config()
  config.data.tfds_dir = tfds_dir
  config.data.batch_size = 32
  config.data.eval_batch_size = 64
  config.model.name = "mlp"
  config.model.hidden = (32,)
  config.train.num_steps = 20
  config.optim.warmup_steps = 2
  config.optim.weight_decay = 1e-3
  config.optim.clip_norm = 1.0
  config.mesh.update(mesh)
  return config


def test_mesh_shapes():
  class M(dict):
    __getitem__ = dict.__getitem__
  assert partitioning.mesh_shape(M(data=-1, fsdp=1, tensor=1), 8) == (8, 1, 1)
  assert partitioning.mesh_shape(M(data=2, fsdp=-1, tensor=2), 8) == (2, 2, 2)
  for bad in (M(data=-1, fsdp=-1, tensor=1), M(data=3, fsdp=1, tensor=1),
              M(data=0, fsdp=1, tensor=1), M(data=-1, fsdp=3, tensor=1)):
    with pytest.raises(UserError):
      partitioning.mesh_shape(bad, 8)


def run_steps(config, num_steps=5, devices=None, same_batch=False):
  s = setup.build(config, devices)
  batch_sharding = partitioning.batch_sharding(s.mesh)
  _, state = state_lib.create_sharded(s.model, s.tx, s.task, s.dummy_batch, config.seed, s.mesh,
                                      s.rules)
  train_step = step.compile_train_step(s.model, s.task, s.tx, s.schedule,
                                       config.optim.grad_accum_steps, s.state_sharding,
                                       batch_sharding, s.rules)
  losses, batch = [], s.data.next_train()
  for i in range(num_steps):
    if i and not same_batch:
      batch = s.data.next_train()
    state, metrics = train_step(state, batch)
    losses.append(float(metrics["loss"]))
  return np.array(losses), state


def test_data_parallel_on_8_devices_matches_one_device(tfds_dir):
  assert jax.device_count() == 8
  one, state1 = run_steps(tiny_config(tfds_dir, data=-1), devices=jax.devices()[:1])
  eight, state8 = run_steps(tiny_config(tfds_dir, data=-1))
  np.testing.assert_allclose(eight, one, rtol=1e-5)
  leaves = jax.tree.leaves(state8.params)
  assert len(leaves[0].sharding.device_set) == 8
  np.testing.assert_allclose(jax.device_get(leaves[0]), jax.device_get(
      jax.tree.leaves(state1.params)[0]), rtol=1e-5, atol=1e-7)


def test_gradient_accumulation_matches_the_full_batch(tfds_dir):
  full, _ = run_steps(tiny_config(tfds_dir, data=-1), 4)
  config = tiny_config(tfds_dir, data=-1)
  config.optim.grad_accum_steps = 2
  accumulated, _ = run_steps(config, 4)
  np.testing.assert_allclose(accumulated, full, rtol=1e-5)


def test_resnet_step_with_batch_norm_and_bfloat16(tfds_dir):
  config = tiny_config(tfds_dir, data=-1)
  config.model = base.get_config().model
  config.model.name = "resnet"
  config.model.stage_sizes = (1, 1)
  config.model.width = 8
  config.dtype = "bfloat16"
  config.optim.name = "sgd"
  config.optim.learning_rate = 0.05
  losses, state = run_steps(config, 8, same_batch=True)
  assert np.isfinite(losses).all() and (np.diff(losses[2:]) < 0).all(), losses
  assert "batch_stats" in state.model_state
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(state.params))


def test_retention_keeps_newest_and_every_kth(tmp_path):
  config = base.get_config().train
  config.keep_checkpoints = 2
  config.keep_period = 20
  ckpt = checkpointing.Checkpointer(str(tmp_path), config)
  data = _fake_iter()
  for s in range(10, 70, 10):
    ckpt.save(s, {"w": jnp.full((3,), float(s))}, data)
  ckpt.close()
  assert sorted(int(d) for d in os.listdir(tmp_path / "checkpoints")) == [20, 40, 50, 60]


def test_one_process_saves_small_replicated_arrays_without_compiling(tmp_path):
  # 8 devices, each array replicated on all: orbax's replica-parallel save would compile
  # one slice per array shape; arrays under 1 MiB a slice are written whole instead
  from jax.sharding import NamedSharding, PartitionSpec as P
  everywhere = NamedSharding(jax.make_mesh((8,), ("data",)), P())
  state = {f"w{i}": jax.device_put(jnp.full((8 * (i + 1), 3), float(i)), everywhere)
           for i in range(6)}
  jax.block_until_ready(state)
  compiles = []

  def count(event, duration, **kwargs):
    if event == "/jax/core/compile/backend_compile_duration":
      compiles.append(duration)
  jax.monitoring.register_event_duration_secs_listener(count)
  try:
    ckpt = checkpointing.Checkpointer(str(tmp_path), base.get_config().train)
    ckpt.save(1, state, _fake_iter())
    ckpt.close()
  finally:
    jax.monitoring.unregister_event_duration_listener(count)
  assert compiles == []
  target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=everywhere),
                        state)
  restored = checkpointing.Checkpointer(str(tmp_path), base.get_config().train).restore(
      1, target)
  for name, value in state.items():
    np.testing.assert_array_equal(np.asarray(restored[name]), np.asarray(value))


def _fake_iter():
  import grain
  return iter(grain.MapDataset.range(0, 100).batch(2).to_iter_dataset())


def test_restore_onto_another_mesh(tmp_path):
  mesh8 = jax.make_mesh((8,), ("data",))
  mesh2 = jax.make_mesh((2,), ("data",), devices=jax.devices()[:2])
  from jax.sharding import NamedSharding, PartitionSpec as P
  value = jax.device_put(jnp.arange(16.0), NamedSharding(mesh8, P("data")))
  config = base.get_config().train
  ckpt = checkpointing.Checkpointer(str(tmp_path), config)
  ckpt.save(1, {"w": value}, _fake_iter())
  ckpt.close()
  target = {"w": jax.ShapeDtypeStruct((16,), jnp.float32, sharding=NamedSharding(mesh2, P()))}
  restored = checkpointing.Checkpointer(str(tmp_path), config).restore(1, target)
  assert restored["w"].sharding.mesh.devices.size == 2
  np.testing.assert_array_equal(np.asarray(restored["w"]), np.arange(16.0))
  with pytest.raises(UserError, match=r"step 5 not found.*available: \[1\]"):
    checkpointing.Checkpointer(str(tmp_path), config).restore(5, target)

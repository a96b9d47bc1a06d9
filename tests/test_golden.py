"""Golden numbers: the default config's first two steps on a fixed seed must not drift.

If a change moves these on purpose (a new initialiser, a different data order, another
optimizer default), check that the run still trains (README command 1) and then update
GOLDEN with the values this test prints. If you did not mean to change the numbers,
the change broke determinism or the math: find out why before updating.
"""

import jax
import numpy as np
import pytest

from configs import default
from train_lib import partitioning, setup, state as state_lib, step

# Measured identically with jax 0.10.2 (Python 3.11) and jax 0.11.2 (Python 3.12) on CPU.
GOLDEN = {"loss_step0": 2.4805097579956055, "loss_step1": 2.587801456451416,
          "grad_norm_step1": 4.678652286529541, "param_rms": 0.06657218188047409,
          "update_rms_step1": 4.7354384150821716e-05}


def rms(tree):
  return float(np.sqrt(np.mean(np.concatenate([np.ravel(x) ** 2 for x in jax.tree.leaves(tree)]))))


def test_default_config_first_steps(tfds_dir):
  config = default.get_config()
  config.data.tfds_dir = tfds_dir
  s = setup.build(config, jax.devices()[:1])
  _, state = state_lib.create_sharded(s.model, s.tx, s.task, s.dummy_batch, config.seed, s.mesh)
  train_step = step.compile_train_step(s.model, s.task, s.tx, s.schedule, 1, s.state_sharding,
                                       partitioning.batch_sharding(s.mesh))
  p0 = jax.device_get(state.params)
  state, m0 = train_step(state, s.data.next_train())
  p1 = jax.device_get(state.params)
  state, m1 = train_step(state, s.data.next_train())
  p2 = jax.device_get(state.params)
  got = {"loss_step0": float(m0["loss"]), "loss_step1": float(m1["loss"]),
         "grad_norm_step1": float(m1["grad_norm"]), "param_rms": rms(p0),
         "update_rms_step1": rms(jax.tree.map(lambda a, b: b - a, p1, p2))}
  print("measured:", got)
  for key, want in GOLDEN.items():
    assert got[key] == pytest.approx(want, rel=1e-4), (
        f"{key} drifted: {got[key]} vs golden {want}. If intended, update GOLDEN in "
        f"tests/test_golden.py with the measured values printed above (see its docstring).")
  # The step's own instruments agree with the same statistics computed here from outside.
  assert float(m0["param_rms"]) == pytest.approx(got["param_rms"], rel=1e-5)
  assert float(m1["update_rms"]) == pytest.approx(got["update_rms_step1"], rel=1e-3)
  num_params = sum(x.size for x in jax.tree.leaves(p0))
  assert float(m1["grad_rms"]) == pytest.approx(got["grad_norm_step1"] / num_params**0.5,
                                                rel=1e-5)
  for module in p0:
    assert float(m0[f"param_rms/{module}"]) == pytest.approx(rms(p0[module]), rel=1e-5)

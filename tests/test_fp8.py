"""config.dtype="fp8" (models/layers/fp8.py, train_lib/step.py): the step's matmuls run in
e4m3 with e5m2 gradients; the delayed-scaling state (scales and amax histories) advances
every step, combines by max over micro-batches, lives in the train state and in every
checkpoint, and a run rolled back to a checkpoint ends with the same arrays. A model without
fp8 matmuls is refused in one line. (The CPU emulates fp8; speed is measured on a GPU.)"""

import jax
import numpy as np
import pytest

from configs import shakespeare_char
from helpers import last_json, run_main
from models.layers.fp8 import COLLECTION
from test_reliability import assert_rollback_ends_the_same, saved_state
from train_lib import checkpointing, setup, step as step_lib


def built(tfds_dir, accum=1, **model):
  config = shakespeare_char.get_config("runlocal")
  config.dtype = "fp8"
  config.data.tfds_dir = tfds_dir
  config.optim.grad_accum_steps = accum
  config.model.update(**model)
  return config, setup.build(config)


def one_step(config, s):
  from train_lib import state as state_lib
  state = state_lib.create(s.model, s.tx, s.task, s.dummy_batch, config.seed, s.state_sharding)
  train_step = step_lib.compile_train_step(s.model, s.task, s.tx, s.schedule,
                                           config.optim.grad_accum_steps, s.state_sharding,
                                           s.data.sharding, s.rules)
  batch = s.data.next_train()
  hlo = train_step.lower(state, batch).as_text()
  before = jax.device_get(state.model_state[COLLECTION])
  after, metrics = train_step(state, batch)
  return hlo, before, jax.device_get(after.model_state[COLLECTION]), metrics


def histories(tree, name="input_amax_history"):
  flat = checkpointing.flatten(tree)
  return {k: v for k, v in flat.items() if k.endswith(name)}


def recorded(history):
  """How many amaxes a history holds (flax rolls it: the newest at 0, older ones wrap to
  the end), per layer under nn.scan."""
  return (history > 0).sum(-1)


def test_fp8_step_quantizes_and_advances_its_scales(tfds_dir):
  config, s = built(tfds_dir)
  hlo, before, after, metrics = one_step(config, s)
  assert "f8E4M3FN" in hlo and "f8E5M2" in hlo   # e4m3 forward, e5m2 gradients
  assert np.isfinite(float(metrics["loss"]))
  flat_before, flat_after = checkpointing.flatten(before), checkpointing.flatten(after)
  # every attention projection and MLP matmul of every layer keeps its state
  assert len([k for k in flat_after if k.endswith("input_amax_history")]) == 6
  for name in ("input_amax_history", "kernel_amax_history", "output_grad_amax_history"):
    for path, history in histories(after, name).items():
      assert not flat_before[path].any(), path
      assert history[..., 0].min() > 0 and (recorded(history) == 1).all(), path   # one amax


def test_micro_batches_combine_amax_by_max_not_sum(tfds_dir):
  """The first matmul's input amax over a batch is the max of its micro-batches' amaxes:
  a sum (autodiff's default for a repeated variable) would show as about twice it."""
  got = [histories(one_step(*built(tfds_dir, accum))[2]) for accum in (1, 2)]
  assert got[0].keys() == got[1].keys()
  for path in got[0]:
    np.testing.assert_array_equal(got[0][path], got[1][path], err_msg=path)


def test_model_without_fp8_matmuls_is_refused_in_one_line(tmp_path):
  proc = run_main("--config=configs/digits_mlp.py", "--config.dtype=fp8",
                  f"--workdir={tmp_path}", check=False)
  assert proc.returncode == 2, proc.stderr[-2000:]
  assert "dtype=fp8: model 'mlp' has no fp8 matmuls" in proc.stderr
  assert "Traceback" not in proc.stderr


def test_scales_are_checkpointed_and_a_rollback_ends_the_same(tmp_path, tfds_dir):
  args = ["--config=configs/shakespeare_char.py:runlocal", "--config.dtype=fp8",
          f"--config.data.tfds_dir={tfds_dir}", "--config.train.num_steps=8",
          "--config.train.log_every=4", "--config.train.eval_every=0",
          "--config.train.checkpoint_every=4"]
  ref, copy = str(tmp_path / "ref"), str(tmp_path / "copy")
  result = last_json(run_main(*args, f"--workdir={ref}").stdout)
  assert result["step"] == 8 and np.isfinite(result["loss"])
  saved = saved_state(ref, 4)["model_state"][COLLECTION]
  for path, history in histories(saved).items():   # 4 steps: 4 amaxes in the window
    assert (recorded(history) == 4).all(), path
  assert_rollback_ends_the_same(args, ref, copy, 4, 8, result)


@pytest.mark.parametrize("scan_layers", [True, False])
def test_fp8_with_scanned_or_unrolled_layers(scan_layers, tfds_dir):
  _, _, after, _ = one_step(*built(tfds_dir, scan_layers=scan_layers))
  assert histories(after)   # the state exists (stacked per layer under nn.scan)

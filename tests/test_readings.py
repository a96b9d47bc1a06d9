"""What a researcher reads after a run is right: the diagnosis of planted bugs (each a model
file outside the repo, loaded through model.name), the divergence policy for finite
explosions, the measured initial loss, throughput and phase times after evals and
checkpoints, the profiler, and a refused first launch leaving no workdir behind."""

import json
import os
import time
import types

import jax
import jax.numpy as jnp
import pytest

from train_lib import loop
from tests.helpers import last_json, read_metrics, run_main

PLANTED = {
    "frozen.py": """
import flax.linen as nn
import jax


class FrozenFirst(nn.Module):
  num_classes: int

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = jax.lax.stop_gradient(nn.Dense(64)(x.reshape(x.shape[0], -1)))
    x = nn.relu(nn.Dense(64)(nn.relu(x)))
    return nn.Dense(self.num_classes)(x)
""",
    "overconfident.py": """
import flax.linen as nn


class Overconfident(nn.Module):
  num_classes: int

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = nn.relu(nn.Dense(64)(x.reshape(x.shape[0], -1)))
    return 50.0 * nn.Dense(self.num_classes)(x)
""",
    "slow_eval.py": """
import time

from train_lib.evaluators import Evaluator


class SlowEval(Evaluator):
  config_fields = ()

  def run(self, state):
    time.sleep(0.5)
    return {"slept": 0.5}
""",
}


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
  folder = tmp_path_factory.mktemp("planted")
  for name, text in PLANTED.items():
    (folder / name).write_text(text)
  (folder / "slow_config.py").write_text(
      "import ml_collections\nfrom configs import default\n\n\ndef get_config(arg=None):\n"
      "  config = default.get_config('runlocal')\n"
      f"  config.evals.slow = ml_collections.ConfigDict({{'name': '{folder}/slow_eval.py:SlowEval', "
      "'every': -1})\n  return config\n")
  return folder


def diagnosis(workdir):
  with open(os.path.join(workdir, "diagnosis.json")) as f:
    return json.load(f)


def test_a_frozen_first_layer_is_named(tmp_path, tfds_dir, planted):
  proc = run_main("--config=configs/default.py:runlocal", f"--workdir={tmp_path}/w",
                  f"--config.model.name={planted}/frozen.py:FrozenFirst",
                  f"--config.data.tfds_dir={tfds_dir}")
  [frozen] = [f for f in diagnosis(f"{tmp_path}/w")["findings"] if f["kind"] == "frozen_module"]
  assert frozen["evidence"]["modules"] == ["Dense_0"], frozen
  assert "no gradient reaches Dense_0" in proc.stderr


def test_a_learning_rate_100x_too_high_is_told_to_come_down(tmp_path, tfds_dir):
  """The default config at 100x its learning rate: the units die after a spike and the
  loss sits at the label entropy; the advice is to lower the rate, never to raise it."""
  run_main("--config=configs/default.py", f"--workdir={tmp_path}/w",
           "--config.optim.learning_rate=0.3", "--config.train.num_steps=600",
           f"--config.data.tfds_dir={tfds_dir}")
  found = {f["kind"]: f for f in diagnosis(f"{tmp_path}/w")["findings"]}
  assert "plateau" in found and "dead_gradients" in found, found
  assert "lower optim.learning_rate" in found["plateau"]["try"]
  assert not any("raise optim.learning_rate" in f["try"] for f in found.values())
  assert found["plateau"]["evidence"]["loss_max"]["values"][0] > 3 * 2.3


def test_a_finite_explosion_exits_3_and_names_the_last_good_checkpoint(tmp_path, tfds_dir):
  workdir = f"{tmp_path}/w"
  proc = run_main("--config=configs/default.py:runlocal", f"--workdir={workdir}",
                  "--config.optim.learning_rate=1e4", "--config.optim.warmup_steps=0",
                  "--config.train.num_steps=400", "--config.train.log_every=10",
                  "--config.train.checkpoint_every=10", f"--config.data.tfds_dir={tfds_dir}",
                  check=False)
  assert proc.returncode == 3, proc.stderr
  error = proc.stderr.strip().splitlines()[-1]
  assert "over train.divergence_factor=10 x the initial loss" in error, error
  train = {r["step"]: r["loss"] for r in read_metrics(workdir) if r["split"] == "train"
           and "loss" in r}
  line = 10 * train[0]
  above = [s for s in sorted(train) if train[s] > line]
  saved = sorted(int(n) for n in os.listdir(f"{workdir}/checkpoints") if n.isdigit())
  assert all(s < above[0] for s in saved)          # none saved while the loss was above
  good = f"last good checkpoint: step {saved[-1]}" if saved else "last good checkpoint: none"
  assert good in error and "diverged" in error


def test_divergence_can_be_switched_off(tmp_path, tfds_dir):
  proc = run_main("--config=configs/default.py:runlocal", f"--workdir={tmp_path}/w",
                  "--config.optim.learning_rate=1e4", "--config.train.divergence_factor=0",
                  f"--config.data.tfds_dir={tfds_dir}", check=False)
  assert proc.returncode == 0, proc.stderr


def test_the_measured_initial_loss_is_recorded(tmp_path, tfds_dir, planted):
  workdir = f"{tmp_path}/w"
  run_main("--config=configs/default.py:runlocal", f"--workdir={workdir}",
           f"--config.model.name={planted}/overconfident.py:Overconfident",
           f"--config.data.tfds_dir={tfds_dir}")
  saved = diagnosis(workdir)
  step0 = [r for r in read_metrics(workdir) if r["step"] == 0 and "loss" in r]
  assert len(step0) == 1 and saved["initial_loss"] == step0[0]["loss"] > 10
  assert saved["expected_initial_loss"] == pytest.approx(2.302585)
  assert "high_initial_loss" in [f["kind"] for f in saved["findings"]]


def test_rates_exclude_eval_and_checkpoint_time(tmp_path, tfds_dir, planted):
  """An eval that sleeps 0.5 s after every log line: the next line's phase times hold it,
  and steps_per_sec counts the steps over the steps' own time, not over the time left."""
  workdir = f"{tmp_path}/w"
  run_main(f"--config={planted}/slow_config.py", f"--workdir={workdir}",
           "--config.train.log_every=10", "--config.train.eval_every=10",
           f"--config.data.tfds_dir={tfds_dir}")
  lines = [r for r in read_metrics(workdir) if "steps_per_sec" in r]
  assert len(lines) == 6
  for r in lines:
    busy = r["time/step_sec"] + r["time/data_sec"]
    assert r["steps_per_sec"] * busy == pytest.approx(10, rel=1e-6)
    assert 0 <= r["data_wait_fraction"] <= r["time/data_sec"] / busy + 1e-9
  assert all(r["time/eval_sec"] >= 0.5 for r in lines[1:])   # the eval after each line
  assert lines[0]["time/eval_sec"] == 0


def test_input_idle_counts_only_waits_after_the_device_is_done():
  done = {0: 10.0, 1: 20.0, 2: 30.0}
  waits = [(0, 5.0, 9.0),      # the device still ran step 0: no idle time
           (1, 18.0, 23.0),    # step 1 finished at 20: idle 20 -> 23
           (2, 31.0, 32.0)]    # finished before the wait began: all of it
  assert loop.input_idle(waits, done) == pytest.approx(3.0 + 1.0)


def _work(loops):
  x = jnp.ones((600, 600))
  fn = jax.jit(lambda x: jax.lax.fori_loop(0, loops, lambda i, y: jnp.tanh(y @ x), x))
  fn(x).block_until_ready()   # compiled outside any measurement
  t = time.perf_counter()
  fn(x).block_until_ready()
  return (lambda: fn(x)), time.perf_counter() - t


def _steps(step, sleep, n=6):
  """A loop of n steps as train's: step dispatched, then a data wait of `sleep` seconds."""
  clock = loop.Phases()
  for i in range(n):
    if i:
      with clock("data"):
        time.sleep(sleep)
    loss = step()
    clock.dispatched(i, {"loss": loss})
    clock.steps += 1
  loss.block_until_ready()
  r = clock.rates(types.SimpleNamespace(unit="examples", items_per_batch=lambda b: b), 1)
  return r, r["time/data_sec"] / (r["time/step_sec"] + r["time/data_sec"])


def test_data_wait_is_the_devices_idle_share_not_the_hosts():
  """Asynchronous dispatch: the host waits for input while the device runs queued steps.
  A fast step with slow input leaves the device idle for most of the wait; a slow step
  with the same share of host wait keeps it busy."""
  fast, _ = _work(1)
  input_bound, host_share = _steps(fast, sleep=0.1)
  assert input_bound["data_wait_fraction"] > 0.5 * host_share
  slow, seconds = _work(60)
  device_bound, host_share = _steps(slow, sleep=seconds / 3)
  assert device_bound["data_wait_fraction"] < 0.5 * host_share, (device_bound, host_share)


def test_profile_steps_write_a_trace(tmp_path, tfds_dir):
  workdir = f"{tmp_path}/w"
  proc = run_main("--config=configs/default.py:runlocal", f"--workdir={workdir}",
                  "--config.train.profile_steps=5,3", f"--config.data.tfds_dir={tfds_dir}")
  assert "profiling steps 6-8" in proc.stderr
  files = [os.path.join(r, f) for r, _, fs in os.walk(f"{workdir}/profile") for f in fs]
  assert any(f.endswith(".xplane.pb") for f in files), files
  assert any(f.endswith("perfetto_trace.json.gz") for f in files), files
  bad = run_main("--config=configs/default.py:runlocal", f"--workdir={tmp_path}/b",
                 "--config.train.profile_steps=5", check=False)
  assert bad.returncode == 2 and "train.profile_steps=(5,) must be START,COUNT" in bad.stderr


def test_a_refused_first_launch_leaves_no_workdir(tmp_path):
  proc = run_main("--config=configs/default.py:runlocal", f"--workdir={tmp_path}/w",
                  "--config.data.name=no_such_data", check=False)
  assert proc.returncode == 2 and not os.path.exists(tmp_path / "w")
  (tmp_path / "file").write_text("")
  proc = run_main("--config=configs/default.py:runlocal", f"--workdir={tmp_path}/file/w",
                  check=False)
  assert proc.returncode == 2 and f"{tmp_path}/file is a file" in proc.stderr

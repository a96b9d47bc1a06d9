"""Reliability (README, "Reliability"): nothing is lost under kill -9, preemption, a failed
save, damaged checkpoints, divergence or bad input. Real kills and signals run main.py in a
subprocess; the rest runs in process on the 8 fake CPU devices of conftest.py.

Every subprocess run trains digits_mlp with a constant learning rate, so that a run may be
continued with a larger train.num_steps and still match an uninterrupted one.
"""

import glob
import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import types

import grain
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

import input_pipeline
import train_lib
from configs import base, digits_mlp
from helpers import REPO, last_json, main_env, read_metrics, run_main, without_timings
from input_pipeline import builders
from train_lib import checkpointing, guards, loop, setup
from train_lib.errors import Diverged, UserError

STEPS = 60
TMP = checkpointing.TMP_MARK


def args(workdir, tfds_dir, *extra, steps=STEPS):
  return ["--config=configs/digits_mlp.py:runlocal", f"--workdir={workdir}",
          f"--config.data.tfds_dir={tfds_dir}", "--config.optim.schedule=constant",
          f"--config.train.num_steps={steps}", "--config.train.log_every=1",
          "--config.train.eval_every=0", "--config.train.checkpoint_every=3", *extra]


def steps_in(workdir):
  path = os.path.join(workdir, "checkpoints")
  return sorted(int(d) for d in os.listdir(path) if d.isdigit()) if os.path.isdir(path) else []


def saved_state(workdir, step):
  manager = ocp.CheckpointManager(os.path.join(workdir, "checkpoints"),
                                  item_handlers={"state": ocp.StandardCheckpointHandler()})
  restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
  return jax.device_get(restored["state"])


def assert_same_arrays(a, b):
  flat_a, flat_b = checkpointing.flatten(a), checkpointing.flatten(b)
  assert flat_a.keys() == flat_b.keys()
  for path in flat_a:
    np.testing.assert_array_equal(flat_a[path], flat_b[path], err_msg=path)


def assert_rollback_ends_the_same(args, ref, copy, back: int, end: int, result: dict):
  """A copy of run `ref` (main.py `args`, trained to `end`) rolled back to checkpoint `back`
  and continued ends with the same result, train line at `end` and saved arrays; returns
  the continued launch."""
  shutil.copytree(ref, copy)
  proc = run_main(*args, f"--workdir={copy}", f"--config.train.restore_step={back}")
  assert f"rolled back to step {back}" in proc.stderr
  assert last_json(proc.stdout) == result
  last = lambda d: [r for r in read_metrics(d) if r["split"] == "train" and r["step"] == end][-1]
  assert without_timings(last(copy)) == without_timings(last(ref))
  assert_same_arrays(saved_state(copy, end), saved_state(ref, end))
  return proc


def train_losses(workdir):
  return {r["step"]: r["loss"] for r in read_metrics(workdir)
          if r["split"] == "train" and "loss" in r}


@pytest.fixture(scope="module", autouse=True)
def compilation_cache():
  """In-process runs use main.py's persistent compilation cache, as train_lib.run does."""
  setup.enable_compilation_cache(base.get_config().train.compilation_cache)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tfds_dir):
  """One uninterrupted run on one device: what every interrupted run must end with."""
  workdir = str(tmp_path_factory.mktemp("reference"))
  proc = run_main(*args(workdir, tfds_dir))
  return workdir, last_json(proc.stdout)


# 1. kill -9 anywhere ------------------------------------------------------------------------

def run_and_kill(argv, when, workdir):
  """Starts main.py and SIGKILLs it when `when(lines, tmp_folders)` holds; returns
  (returncode, stderr, whether a save was in progress at the kill)."""
  proc = subprocess.Popen([sys.executable, os.path.join(REPO, "main.py"), *argv], cwd=REPO,
                          env=main_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                          text=True)
  lines = []
  reader = threading.Thread(target=lambda: [lines.append(l) for l in proc.stderr])
  reader.start()
  in_save = False
  while proc.poll() is None:
    tmp = glob.glob(os.path.join(workdir, "checkpoints", f"*{TMP}*"))
    if when(list(lines), tmp):
      proc.send_signal(signal.SIGKILL)
      in_save = bool(tmp)
      break
    time.sleep(0.002)
  proc.wait()
  reader.join()
  return proc.returncode, "".join(lines), in_save


def after_progress(n):
  return lambda lines, tmp: sum(l.startswith("step ") for l in lines) >= n


def on_line(text):
  return lambda lines, tmp: any(text in l for l in lines)


def during_save(lines, tmp):  # a save of this run (earlier leftovers are gone by then)
  return bool(tmp) and any("compiled train step" in l for l in lines)


KILL_POINTS = [on_line("compiled train step"), after_progress(2), during_save,
               on_line(" parameters; "), during_save, after_progress(3), during_save]


def test_kill_9_at_seven_points_resumes_to_the_uninterrupted_parameters(reference, tmp_path,
                                                                        tfds_dir):
  workdir = str(tmp_path)
  argv = args(workdir, tfds_dir)
  saves_interrupted = 0
  left_tmp = False
  for k, when in enumerate(KILL_POINTS):
    newest = steps_in(workdir)[-1] if steps_in(workdir) else None
    code, err, in_save = run_and_kill(argv, when, workdir)
    assert code == -signal.SIGKILL, (k, err[-2000:])
    if newest is not None:
      assert f"resumed from checkpoint at step {newest}\n" in err, (k, err[-2000:])
    if left_tmp:
      assert "removing incomplete checkpoint" in err, (k, err[-2000:])
    left_tmp = bool(glob.glob(os.path.join(workdir, "checkpoints", f"*{TMP}*")))
    saves_interrupted += in_save and left_tmp
  assert saves_interrupted >= 2            # asynchronous saves really were cut short
  assert os.path.exists(os.path.join(workdir, "lock"))  # a dead run's lock does not block
  proc = run_main(*argv)
  assert last_json(proc.stdout) == reference[1]
  assert_same_arrays(saved_state(workdir, STEPS), saved_state(reference[0], STEPS))


# 2. SIGTERM / SIGINT: tests/test_main.py::test_sigterm_and_sigint_save_and_exit_75_then_resume

# 3. a save that fails -------------------------------------------------------------------------

FAIL_SAVE = """
import resource, runpy, signal, sys
sys.path.insert(0, {repo!r})
from train_lib import checkpointing
save = checkpointing.Checkpointer.save
def failing(self, step, *a, **k):
  if step == {step}:  # from here on, no file may grow past 64 KiB: writes fail with EFBIG
    self.wait()
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    hard = resource.getrlimit(resource.RLIMIT_FSIZE)[1]
    resource.setrlimit(resource.RLIMIT_FSIZE, (65536, hard))
  return save(self, step, *a, **k)
checkpointing.Checkpointer.save = failing
sys.argv = ["main.py", *{argv!r}]
runpy.run_path({main!r}, run_name="__main__")
"""


def test_failed_save_stops_with_one_line_and_keeps_the_previous_checkpoint(tmp_path, tfds_dir):
  """The kernel refuses the writes of step 6's save (RLIMIT_FSIZE: "File too large", the
  same path as a full disk); we run as root, so a read-only folder would not refuse them."""
  argv = args(str(tmp_path), tfds_dir, steps=9)
  script = FAIL_SAVE.format(repo=REPO, step=6, argv=argv, main=os.path.join(REPO, "main.py"))
  proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=main_env(), text=True,
                        capture_output=True)
  assert proc.returncode == 2, proc.stderr[-3000:]
  errors = [l for l in proc.stderr.splitlines() if l.startswith("error:")]
  assert len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
  assert "File too large" in errors[0] and f"checkpoints/6{TMP}" in errors[0], errors[0]
  assert "newest verified checkpoint: 3" in errors[0]
  assert steps_in(str(tmp_path)) == [3]
  assert not glob.glob(str(tmp_path / "checkpoints" / f"*{TMP}*"))
  assert int(saved_state(str(tmp_path), 3)["step"]) == 3


# 4 and 5. damaged checkpoints, rollback -------------------------------------------------------

def fake_data():
  it = iter(grain.MapDataset.range(0, 1000).batch(2).to_iter_dataset())
  return types.SimpleNamespace(train_iter=it, num_train=100)


def save_steps(workdir, steps, config=None):
  ckpt = checkpointing.Checkpointer(workdir, base.get_config().train)
  data = fake_data()
  for s in steps:                                      # the data position of step s is s
    while data.train_iter.get_state()["next_index"] < s:
      next(data.train_iter)
    ckpt.save(s, {"w": jnp.full((1000,), float(s)), "b": jnp.arange(3.0) * s}, data.train_iter,
              config)
  ckpt.close()
  return data


def target(w_dtype=jnp.float32):
  one = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  return {"w": jax.ShapeDtypeStruct((1000,), w_dtype, sharding=one),
          "b": jax.ShapeDtypeStruct((3,), jnp.float32, sharding=one)}


def test_damaged_newest_steps_move_to_quarantine_and_an_older_one_restores(tmp_path, capfd):
  workdir = str(tmp_path)
  save_steps(workdir, [1, 2, 3])
  ckpt_dir = tmp_path / "checkpoints"
  biggest = max(glob.glob(str(ckpt_dir / "3" / "state" / "**" / "d" / "*"), recursive=True),
                key=os.path.getsize)
  with open(biggest, "r+b") as f:                      # step 3: a truncated array file
    f.truncate(os.path.getsize(biggest) // 2)
  os.remove(ckpt_dir / "2" / "data" / "process_0-of-1.json")  # step 2: a missing file
  data = fake_data()
  step, state = checkpointing.Checkpointer(workdir, base.get_config().train).restore_newest(
      target(), data)
  assert step == 1 and float(state["w"][0]) == 1.0
  assert data.train_iter.get_state() == {"next_index": 1}
  err = capfd.readouterr().err
  assert "checkpoint step 3" in err and "checkpoint step 2" in err and "trying an older" in err
  assert steps_in(workdir) == [1]
  moved = sorted(os.listdir(tmp_path / "quarantine"))
  assert [m.split("-")[:2] for m in moved] == [["2", "damaged"], ["3", "damaged"]]
  assert os.path.getsize(tmp_path / "quarantine" / moved[1] / os.path.relpath(
      biggest, ckpt_dir / "3")) > 0                    # moved as it was, never deleted
  # When no step restores, the run stops and lists what it tried.
  shutil.rmtree(ckpt_dir / "1" / "state")
  with pytest.raises(UserError, match=r"no checkpoint .* could be restored; tried: checkpoint "
                     r"step 1 .* \(moved to .*quarantine/1-damaged"):
    checkpointing.Checkpointer(workdir, base.get_config().train).restore_newest(target())


def rollback_config(step):
  config = base.get_config()
  config.train.restore_step = step
  return config


def test_saving_below_the_newest_step_is_refused_and_restore_step_rolls_back(tmp_path, capfd):
  workdir = str(tmp_path)
  data = save_steps(workdir, [1, 2, 3, 4], rollback_config(-1))
  ckpt = checkpointing.Checkpointer(workdir, base.get_config().train)
  with pytest.raises(UserError, match=r"cannot save step 3: .* already holds steps \[3, 4\]"):
    ckpt.save(3, {"w": jnp.zeros(2)}, data.train_iter)   # orbax alone would skip or clash
  step, state = ckpt.restore_newest(target(), fake_data(), rollback_config(2))
  assert step == 2 and float(state["w"][0]) == 2.0
  assert "rolled back to step 2 (train.restore_step): moved step 3" in capfd.readouterr().err
  assert steps_in(workdir) == [2]
  assert sorted(m.split("-")[0] for m in os.listdir(tmp_path / "quarantine")) == ["3", "4"]
  ckpt.close()
  save_steps(workdir, [3], rollback_config(2))        # the rolled-back run saves again
  # Rerunning the same command continues the rolled-back run instead of rolling back again.
  step, _ = checkpointing.Checkpointer(workdir, base.get_config().train).restore_newest(
      target(), fake_data(), rollback_config(2))
  assert step == 3 and steps_in(workdir) == [2, 3]


def test_rollback_of_a_run_ends_with_the_uninterrupted_parameters(reference, tmp_path,
                                                                   tfds_dir):
  workdir = str(tmp_path / "copy")
  shutil.copytree(reference[0], workdir)
  assert steps_in(workdir) == [54, 57, 60]
  proc = run_main(*args(workdir, tfds_dir, "--config.train.restore_step=54"))
  assert "rolled back to step 54 (train.restore_step): moved step 60" in proc.stderr
  assert last_json(proc.stdout) == reference[1]
  assert_same_arrays(saved_state(workdir, STEPS), saved_state(reference[0], STEPS))


# 6. divergence ------------------------------------------------------------------------------

def mlp_config(tfds_dir, **train):
  config = digits_mlp.get_config("runlocal")
  config.data.tfds_dir = tfds_dir
  config.model.hidden = (32,)
  config.optim.schedule = "constant"
  config.train.update(dict(num_steps=10, log_every=100, eval_every=0, checkpoint_every=1,
                           keep_checkpoints=20), **train)
  return config


def poison(monkeypatch, steps):
  """The training batches of `steps` (1-based, from a fresh start) get NaN images."""
  real, calls = input_pipeline.Data.next_train, itertools.count(1)

  def next_train(self):
    batch = real(self)
    return {**batch, "image": batch["image"] * jnp.nan} if next(calls) in steps else batch
  monkeypatch.setattr(input_pipeline.Data, "next_train", next_train)


def test_divergence_exits_3_with_the_step_and_the_last_good_checkpoint(tmp_path, tfds_dir):
  proc = run_main(*args(tmp_path, tfds_dir, "--config.optim.learning_rate=1e30",
                        "--config.train.checkpoint_every=1"), check=False)
  assert proc.returncode == 3, proc.stderr[-2000:]
  line = proc.stderr.strip().splitlines()[-1]
  step = int(line.split(" at step ")[1].split(";")[0])
  assert line.startswith("error: diverged: non-finite loss at step")
  assert f"last good checkpoint: step {step - 1} in {tmp_path}/checkpoints" in line, line
  assert steps_in(tmp_path)[-1] == step - 1


def test_a_non_finite_step_is_never_saved(tmp_path, tfds_dir, monkeypatch):
  poison(monkeypatch, {5})
  with pytest.raises(Diverged, match=r"non-finite loss at step 5; last good checkpoint: step 4"):
    loop.train(mlp_config(tfds_dir), str(tmp_path))     # log_every=100: the save guard stops it
  assert steps_in(tmp_path) == [1, 2, 3, 4]
  state = saved_state(str(tmp_path), 4)
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(state))


def test_state_check_names_the_non_finite_array():
  state = {"params": {"w": jnp.ones(3), "b": jnp.array([0.0, jnp.inf])}, "step": jnp.int32(4)}
  with pytest.raises(Diverged, match=r"non-finite values in params/b \(not saved\) at step 7; "
                     r"last good checkpoint: step 5 in DIR"):
    guards.Guard(0, "DIR").check_state(state, 7, 5)


def test_skip_nonfinite_steps_skips_a_bounded_number(tmp_path, tfds_dir, monkeypatch):
  poison(monkeypatch, {5, 8})
  loop.train(mlp_config(tfds_dir, skip_nonfinite_steps=2, log_every=5), str(tmp_path / "a"))
  params = {s: saved_state(str(tmp_path / "a"), s)["params"] for s in (4, 5, 6)}
  assert_same_arrays(params[5], params[4])             # step 5's update was not applied
  assert not np.array_equal(params[6]["Dense_0"]["kernel"], params[5]["Dense_0"]["kernel"])
  skipped = [r["skipped_steps"] for r in read_metrics(str(tmp_path / "a"))
             if r["split"] == "train" and "loss" in r]
  assert skipped == [1, 2]
  poison(monkeypatch, {2, 3, 4})
  with pytest.raises(Diverged, match=r"non-finite loss at step 4 \(3 non-finite steps, more "
                     r"than train.skip_nonfinite_steps=2\); last good checkpoint: step 3"):
    loop.train(mlp_config(tfds_dir, skip_nonfinite_steps=2), str(tmp_path / "b"))


# 7. a checkpoint that does not fit the model ----------------------------------------------

def test_changed_model_lists_every_difference_and_the_changed_config_keys(tmp_path, tfds_dir):
  loop.train(mlp_config(tfds_dir, num_steps=2), str(tmp_path))
  config = mlp_config(tfds_dir, num_steps=4)
  config.model.hidden = (16, 16)
  with pytest.raises(UserError) as e:
    loop.train(config, str(tmp_path))
  message = str(e.value)
  assert "\n" not in message and message.startswith("checkpoint step 2 in")
  assert "missing from the checkpoint: params/Dense_2/bias, params/Dense_2/kernel" in message
  assert "shape differs: params/Dense_0/bias (32,) -> (16,)" in message
  assert "params/Dense_1/kernel (32, 10) -> (16, 16)" in message
  assert "opt_state/0/mu/Dense_2/kernel" in message          # the optimizer state too
  assert message.endswith("config keys changed since it was saved: model.hidden [32] -> [16, 16]")


def test_dtype_difference_is_an_error_unless_a_cast_is_allowed(tmp_path, capfd):
  save_steps(str(tmp_path), [1])
  want = target(jnp.bfloat16)
  config = base.get_config()
  with pytest.raises(UserError, match=r"dtype differs: w float32 -> bfloat16 "
                     r"\(--config.train.allow_dtype_cast=True casts them\)"):
    checkpointing.Checkpointer(str(tmp_path)).restore(1, want, config=config)
  config.train.allow_dtype_cast = True
  state = checkpointing.Checkpointer(str(tmp_path)).restore(1, want, config=config)
  assert state["w"].dtype == jnp.bfloat16 and float(state["w"][0]) == 1.0
  assert "cast w from float32 to bfloat16 (train.allow_dtype_cast)" in capfd.readouterr().err


# 8. another device count or batch size ------------------------------------------------------

def test_resume_on_8_then_4_then_1_devices_reshards_and_continues_the_data(reference, tmp_path,
                                                                            tfds_dir):
  workdir = str(tmp_path)
  run_main(*args(workdir, tfds_dir, steps=20), devices=8)
  leg2 = run_main(*args(workdir, tfds_dir, steps=40), devices=4)
  assert ("resharded step 20 from mesh {'data': 8, 'fsdp': 1, 'expert': 1, 'tensor': 1} on 8 "
          "devices to mesh {'data': 4, 'fsdp': 1, 'expert': 1, 'tensor': 1} on 4 devices"
          ) in leg2.stderr
  leg3 = run_main(*args(workdir, tfds_dir), devices=1)
  assert "resharded step 40 from mesh {'data': 4," in leg3.stderr
  # Same batches in the same order: the loss of every step matches the one-device run.
  want, got = train_losses(reference[0]), train_losses(workdir)
  assert sorted(got) == list(range(0, STEPS + 1))   # step 0: the loss at init
  np.testing.assert_allclose([got[s] for s in got], [want[s] for s in got], rtol=2e-4)
  assert last_json(leg3.stdout)["accuracy"] == pytest.approx(reference[1]["accuracy"],
                                                             abs=1 / 359)


def test_changed_batch_size_is_refused_unless_the_epoch_may_restart(tmp_path, capfd):
  config = base.get_config()
  save_steps(str(tmp_path), [60], config)            # data position: global batch 60 of 64
  config.data.batch_size = 32
  ckpt = checkpointing.Checkpointer(str(tmp_path), base.get_config().train)
  with pytest.raises(UserError, match=r"saved with data.batch_size=64, now 32: .* "
                     r"--config.data.restart_epoch_on_resume=True"):
    ckpt.restore(60, target(), fake_data(), config)
  config.data.restart_epoch_on_resume = True
  data = fake_data()                                   # 100 examples per epoch
  ckpt.restore(60, target(), data, config)
  assert data.train_iter.get_state() == {"next_index": 38 * 100 // 32}  # epoch 38's start
  assert "restarting epoch 38 at batch 118" in capfd.readouterr().err


def test_data_position_carries_over_to_another_process_count(tmp_path, monkeypatch, capfd):
  """grain names its file per process count (process_0-of-1.json); our position is a global
  batch index, the same on every process, so each process of 2 reads process_0-of-1's."""
  save_steps(str(tmp_path), [1, 2])
  ckpt = checkpointing.Checkpointer(str(tmp_path), read_only=True)
  monkeypatch.setattr(jax, "process_count", lambda: 2)
  for index in (0, 1):
    monkeypatch.setattr(jax, "process_index", lambda: index)
    data = fake_data()
    ckpt.restore_data(2, data)
    assert data.train_iter.get_state() == {"next_index": 2}
  monkeypatch.undo()
  assert "carried over from process_0-of-1.json to process_0-of-2.json" in capfd.readouterr().err


# 9. eval without a checkpoint -----------------------------------------------------------------

def test_eval_of_a_missing_step_or_an_empty_checkpoint_folder_exits_2(reference, tmp_path,
                                                                      tfds_dir):
  proc = run_main(*args(reference[0], tfds_dir, "--mode=eval", "--config.eval.step=7"),
                  check=False)
  assert proc.returncode == 2
  assert proc.stderr.strip() == (f"error: step 7 not found in {reference[0]}/checkpoints; "
                                 "available: [54, 57, 60]")
  os.makedirs(tmp_path / "checkpoints")
  with pytest.raises(UserError, match=f"no checkpoint in {tmp_path};"):
    checkpointing.open_for_reading(str(tmp_path))


# 10. config and flag errors ----------------------------------------------------------------

CONFIGS = {
    "untyped": "c.model.extra = None",
    "broken": "c.train.num_steps = (",
}


@pytest.mark.parametrize("name, message", [
    ("untyped", "config.model.extra is None, which has no type; give it a default value or "
                "declare it with ml_collections.config_dict.placeholder(TYPE)"),
    ("broken", "'(' was never closed (broken.py, line 5)"),
])
def test_untyped_field_and_broken_config_file_exit_2_with_one_line(tmp_path, name, message):
  path = tmp_path / f"{name}.py"
  path.write_text("from configs import digits_mlp\n\ndef get_config(arg=None):\n"
                  f"  c = digits_mlp.get_config('runlocal')\n  {CONFIGS[name]}\n  return c\n")
  proc = run_main(f"--config={path}", f"--workdir={tmp_path / 'w'}", check=False)
  assert proc.returncode == 2
  assert proc.stderr.strip().splitlines() == [f"error: {message}"]
  assert not os.path.exists(tmp_path / "w")


def test_relative_and_home_workdirs_are_resolved_and_logged(tmp_path, tfds_dir, monkeypatch):
  relative = os.path.relpath(tmp_path / "rel", REPO)  # main.py runs in the repository
  proc = run_main(*args(relative, tfds_dir, steps=0), check=False)
  assert proc.stderr.splitlines() == [f"workdir {relative} is {tmp_path / 'rel'}",
                                      "error: train.num_steps=0 must be positive"]
  assert not os.path.exists(tmp_path / "rel")   # a refused first launch leaves no workdir
  monkeypatch.setenv("HOME", str(tmp_path))
  proc = run_main(*args("~/home", tfds_dir, "--mode=eval"), check=False)
  assert proc.returncode == 2 and f"no checkpoint in {tmp_path / 'home'}:" in proc.stderr


# 11. data errors ---------------------------------------------------------------------------

@pytest.mark.parametrize("damage", ["missing", "truncated"])
def test_missing_or_truncated_shard_is_named_before_step_0(tmp_path, tfds_dir, damage):
  config = base.get_config().data
  config.tfds_dir = tfds_dir
  input_pipeline.open_source(config)                 # prepared once per session
  copy = str(tmp_path / "tfds")
  shutil.copytree(os.path.join(tfds_dir, "whetstone_digits"),
                  os.path.join(copy, "whetstone_digits"))
  shard = glob.glob(os.path.join(copy, "whetstone_digits", "*", "*-test.array_record-*"))[0]
  if damage == "missing":
    os.remove(shard)
  else:
    with open(shard, "r+b") as f:
      f.truncate(os.path.getsize(shard) // 2)
  config.tfds_dir, config.cache_mb = copy, 0         # streamed: nothing read ahead of time
  with pytest.raises(input_pipeline.DataError) as e:
    input_pipeline.open_source(config)
  assert str(e.value).startswith(f"ArrayRecord shard {shard} is {damage}")
  assert "prepare dataset 'digits' again" in str(e.value) and "\n" not in str(e.value)


def test_empty_split_is_named(tmp_path):
  from test_input_pipeline import write_idx
  src = tmp_path / "idx"
  src.mkdir()
  for split, n in (("train", 30), ("test", 0)):
    images_file, labels_file = builders.FASHION_MNIST_FILES[split]
    write_idx(src / images_file, np.zeros((n, 28, 28)))
    write_idx(src / labels_file, np.zeros((n,)))
  config = base.get_config().data
  config.update(name="fashion_mnist", source_dir=str(src), tfds_dir=str(tmp_path / "tfds"))
  with pytest.raises(input_pipeline.DataError, match=f"cannot prepare Fashion-MNIST from {src}: "
                     r".*split \"test\": No examples were yielded"):
    input_pipeline.open_source(config)


# 12. one run per workdir -------------------------------------------------------------------

def test_a_second_run_on_the_same_workdir_is_refused(tmp_path, tfds_dir):
  lock = checkpointing.lock_workdir(str(tmp_path))
  with pytest.raises(UserError, match=f"workdir {tmp_path} is in use by another run "
                     f"\\(pid {os.getpid()} since"):
    checkpointing.lock_workdir(str(tmp_path))
  proc = run_main(*args(tmp_path, tfds_dir), check=False)
  assert proc.returncode == 2 and "is in use by another run" in proc.stderr
  lock.close()
  checkpointing.lock_workdir(str(tmp_path)).close()   # free again once the holder is gone


# 13. untrusted checkpoint folders ----------------------------------------------------------

def test_symbolic_links_in_a_checkpoint_are_refused_before_reading(tmp_path):
  save_steps(str(tmp_path), [1])
  outside = tmp_path / "outside.json"
  outside.write_text("{}")
  link = tmp_path / "checkpoints" / "1" / "data" / "process_0-of-1.json"
  os.remove(link)
  os.symlink(outside, link)
  for make in (lambda: checkpointing.Checkpointer(str(tmp_path)),
               lambda: checkpointing.open_for_reading(str(tmp_path))):
    with pytest.raises(UserError, match=f"refusing to read checkpoints .*: {link} is a "
                       f"symbolic link \\(to {outside}\\)"):
      make()


def test_no_code_is_loaded_from_a_checkpoint(tmp_path, monkeypatch):
  """Orbax's metadata names handler classes; a tampered name is never imported."""
  save_steps(str(tmp_path), [1], base.get_config())
  module = tmp_path / "lib" / "whetstone_planted.py"
  module.parent.mkdir()
  module.write_text(f"open({str(tmp_path / 'ran')!r}, 'w').close()\nclass Handler: pass\n")
  monkeypatch.syspath_prepend(str(module.parent))
  path = tmp_path / "checkpoints" / "1" / "_CHECKPOINT_METADATA"
  meta = json.loads(path.read_text())
  meta["item_handlers"] = {k: "whetstone_planted.Handler" for k in meta["item_handlers"]}
  meta["custom_metadata"]["config"]["model"]["name"] = "whetstone_planted:Handler"
  path.write_text(json.dumps(meta))
  checkpointing.seal(str(path.parent))    # tampered with fresh digests: verification passes
  data = fake_data()
  step, state = checkpointing.Checkpointer(str(tmp_path), base.get_config().train
                                           ).restore_newest(target(), data, base.get_config())
  assert step == 1 and float(state["w"][0]) == 1.0
  assert "whetstone_planted" not in sys.modules and not (tmp_path / "ran").exists()


def test_a_torn_metrics_line_and_an_empty_diagnosis_do_not_stop_the_next_launch(tmp_path,
                                                                                 tfds_dir):
  """A crash mid-write leaves a torn last line of metrics.jsonl or an empty JSON file; the
  next launch says so in one line each and goes on, and the files are whole again."""
  workdir = str(tmp_path)
  first = last_json(run_main(*args(workdir, tfds_dir)).stdout)
  with open(os.path.join(workdir, "metrics.jsonl"), "a") as f:
    f.write('{"step": 999, "spl')
  open(os.path.join(workdir, "diagnosis.json"), "w").close()
  again = run_main(*args(workdir, tfds_dir))            # already trained: evaluates
  assert last_json(again.stdout)["loss"] == first["loss"]
  assert "ended in a torn line" in again.stderr and "diagnosis.json is unreadable" in again.stderr
  assert "Traceback" not in again.stderr
  read_metrics(workdir)                                 # every line parses again
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    text = f.read()
  assert text.endswith("\n") and '"step": 999' not in text
  with open(os.path.join(workdir, "diagnosis.json")) as f:
    assert "findings" in json.load(f)
  leftovers = [n for n in os.listdir(workdir) if ".tmp" in n]
  assert not leftovers, leftovers


BAD_VALUES = [("data.batch_size", 0), ("data.batch_size", -64), ("data.eval_batch_size", 0),
              ("data.prefetch", -1), ("train.log_every", 0), ("train.eval_every", -5),
              ("train.checkpoint_every", -1), ("train.keep_checkpoints", -1),
              ("optim.learning_rate", -0.003), ("optim.learning_rate", float("nan")),
              ("optim.learning_rate", float("inf")), ("optim.b1", 1.5), ("optim.b2", 1.0),
              ("optim.weight_decay", -1.0), ("optim.eps", 0.0), ("optim.clip_norm", -1.0)]


@pytest.mark.parametrize("key,value", BAD_VALUES)
def test_values_out_of_range_are_refused_in_one_line_before_anything_is_built(key, value):
  config = digits_mlp.get_config("runlocal")
  section, name = key.split(".")
  config[section][name] = value
  with pytest.raises(UserError, match=rf"^{key}=.*(out of range|must be)") as e:
    setup.build(config)
  assert "\n" not in str(e.value)


def test_an_out_of_range_value_exits_2_through_main_before_training(tmp_path, tfds_dir):
  bad = run_main(*args(str(tmp_path), tfds_dir, "--config.data.eval_batch_size=0"), check=False)
  assert bad.returncode == 2, bad.stderr[-2000:]
  assert bad.stderr.strip().splitlines()[-1].startswith("error: data.eval_batch_size=0")
  assert "Traceback" not in bad.stderr and not os.path.exists(tmp_path / "checkpoints")

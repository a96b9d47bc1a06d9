"""Multi-process runs: two CPU processes with 4 devices each on localhost (jax.distributed)
train like one process with 8 devices; checkpoints restore as one process; a SIGTERM to
either process stops both at the same step."""

import dataclasses
import glob
import json
import os
import shutil
import signal
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

from configs import base
from helpers import REPO, last_json, main_env, read_metrics, run_main
from input_pipeline import images
from train_lib import distributed
from train_lib.errors import UserError

DEFAULT = ["--config=configs/default.py", "--config.train.num_steps=100",
           "--config.train.log_every=25", "--config.train.eval_every=50",
           "--config.train.checkpoint_every=50"]


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def launch(args, out_dir, num_processes=2, devices=4):
  """Starts main.py as `num_processes` processes; process 0's stderr is a pipe, every
  other stream a file in out_dir (out0.txt, err1.txt, ...)."""
  env = main_env(devices)
  address = f"localhost:{free_port()}"
  procs = []
  for p in range(num_processes):
    err = subprocess.PIPE if p == 0 else open(os.path.join(out_dir, f"err{p}.txt"), "w")
    procs.append(subprocess.Popen(
        [sys.executable, os.path.join(REPO, "main.py"), *args,
         f"--coordinator_address={address}", f"--num_processes={num_processes}",
         f"--process_id={p}"], cwd=REPO, env=env, text=True, stderr=err,
        stdout=open(os.path.join(out_dir, f"out{p}.txt"), "w")))
  return procs


def finish(procs, out_dir, first_lines=()):
  """Waits for all (600 s hang guard); [(returncode, stdout, stderr)] per process."""
  try:
    err0 = "".join(first_lines) + procs[0].communicate(timeout=600)[1]
    for proc in procs:
      proc.wait(timeout=600)
  finally:
    for proc in procs:
      if proc.poll() is None:
        proc.kill()
  results = []
  for p, proc in enumerate(procs):
    read = lambda name: open(os.path.join(out_dir, f"{name}{p}.txt")).read()
    results.append((proc.returncode, read("out"), err0 if p == 0 else read("err")))
  return results


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory, tfds_dir):
  """The default config, 100 steps, on 2 processes x 4 CPU devices."""
  workdir, out = (str(tmp_path_factory.mktemp(name)) for name in ("two", "two_out"))
  args = [*DEFAULT, f"--workdir={workdir}", f"--config.data.tfds_dir={tfds_dir}"]
  results = finish(launch(args, out), out)
  for code, _, err in results:
    assert code == 0, err[-3000:]
  return workdir, results


def test_two_processes_train_like_one_process_with_8_devices(two_processes, tmp_path,
                                                             tfds_dir):
  workdir, results = two_processes
  one = run_main(*DEFAULT, f"--workdir={tmp_path}", f"--config.data.tfds_dir={tfds_dir}",
                 devices=8)
  expected, got = last_json(one.stdout), last_json(results[0][1])
  assert got["step"] == 100 and got["num_examples"] == 359
  assert got["accuracy"] == expected["accuracy"] > 0.8
  assert got["loss"] == pytest.approx(expected["loss"], rel=1e-5)
  curve = lambda d: [(r["step"], r["split"], r["loss"]) for r in read_metrics(d) if "loss" in r]
  assert [c[:2] for c in curve(workdir)] == [c[:2] for c in curve(str(tmp_path))]
  np.testing.assert_allclose([c[2] for c in curve(workdir)],
                             [c[2] for c in curve(str(tmp_path))], rtol=1e-5)
  # Only process 0 reports: the result line, progress lines.
  assert not [l for l in results[1][1].splitlines() if l.startswith("{")], results[1][1]
  assert "step 100/100" in results[0][2]
  assert not [l for l in results[1][2].splitlines() if l.startswith(("step ", "eval "))]


def test_process_0_alone_writes_the_workdir(two_processes):
  workdir, _ = two_processes
  capsule = json.load(open(os.path.join(workdir, "capsule.json")))
  devices = capsule["devices"]
  assert {k: devices[k] for k in ("count", "local_count", "kind", "process_count")} == {
      "count": 8, "local_count": 4, "kind": "cpu", "process_count": 2}
  assert sorted(d["process_index"] for d in devices["topology"]) == [0] * 4 + [1] * 4
  assert json.load(open(os.path.join(workdir, "config.json")))["train"]["num_steps"] == 100
  keys = [(r["step"], r["split"]) for r in read_metrics(workdir) if r.get("mode") != "eval"]
  # compile and initial loss (both step 0), 4 train and 2 eval lines, each written once
  assert sorted(keys) == [(0, "train")] * 2 + [(25, "train"), (50, "test"), (50, "train"),
                                               (75, "train"), (100, "test"), (100, "train")]
  assert len(glob.glob(os.path.join(workdir, "tensorboard", "events.out.tfevents.*"))) == 1
  assert os.path.isfile(os.path.join(workdir, "plots", "loss.png"))
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["100", "50"]
  # Saved collectively: one checkpoint, each process's shard of it and data position.
  step = os.path.join(workdir, "checkpoints", "100")
  assert sorted(glob.glob(os.path.join(step, "state", "ocdbt.process_*"))) == [
      os.path.join(step, "state", f"ocdbt.process_{p}") for p in (0, 1)]
  positions = [json.load(open(os.path.join(step, "data", f"process_{p}-of-2.json")))
               for p in (0, 1)]
  assert positions[0] == positions[1] == {"next_index": 100}


def test_eval_on_one_or_two_processes_and_resume_on_one(two_processes, tmp_path, tfds_dir):
  workdir, results = two_processes
  final = last_json(results[0][1])
  args = [*DEFAULT, f"--workdir={workdir}", "--mode=eval", f"--config.data.tfds_dir={tfds_dir}"]
  on_one = last_json(run_main(*args, devices=8).stdout)
  on_two = finish(launch(args, str(tmp_path)), str(tmp_path))
  assert [code for code, _, _ in on_two] == [0, 0], on_two[1][2][-3000:]
  assert not [l for l in on_two[1][1].splitlines() if l.startswith("{")]
  for evaluated in (on_one, last_json(on_two[0][1])):
    assert evaluated["step"] == 100 and evaluated["accuracy"] == final["accuracy"]
    assert evaluated["loss"] == pytest.approx(final["loss"], rel=1e-5)
  assert len([r for r in read_metrics(workdir) if r.get("mode") == "eval"]) == 2
  # Continue the 2-process run from step 50 as one process with 8 devices.
  copy = str(tmp_path / "copy")
  shutil.copytree(workdir, copy)
  shutil.rmtree(os.path.join(copy, "checkpoints", "100"))
  resumed = run_main(*DEFAULT, f"--workdir={copy}", f"--config.data.tfds_dir={tfds_dir}",
                     devices=8)
  assert "resumed from checkpoint at step 50" in resumed.stderr
  assert last_json(resumed.stdout)["accuracy"] == final["accuracy"]
  assert last_json(resumed.stdout)["loss"] == pytest.approx(final["loss"], rel=1e-5)
  train_loss = lambda d: [r["loss"] for r in read_metrics(d)
                          if r["split"] == "train" and r["step"] == 100][-1]
  assert train_loss(copy) == pytest.approx(train_loss(workdir), rel=1e-5)


def _stop_one(args, out_dir, target: int, sig: str, marker: str):
  """Two processes; when process 0 logs `marker`, `sig` goes to process `target`."""
  procs = launch(args, out_dir)
  lines = []
  for line in procs[0].stderr:
    lines.append(line)
    if marker in line:
      procs[target].send_signal(getattr(signal, sig))
      break
  return finish(procs, out_dir, lines)


def _preempted_at(results):
  steps = []
  for code, _, err in results:
    assert code == 75, err[-3000:]
    line = [l for l in err.splitlines() if l.startswith("error: preempted by")]
    assert len(line) == 1 and "checkpoint saved" in line[0], err[-3000:]
    steps.append(int(line[0].split(" at step ")[1].split(",")[0]))
  return steps


def test_a_signal_to_one_process_stops_both_at_the_same_step(tmp_path, tfds_dir):
  workdir = tmp_path / "w"
  args = ["--config=configs/default.py", f"--workdir={workdir}",
          f"--config.data.tfds_dir={tfds_dir}", "--config.train.num_steps=3000",
          "--config.train.log_every=10", "--config.train.checkpoint_every=0",
          "--config.train.eval_every=0"]
  steps = _preempted_at(_stop_one(args, str(tmp_path), 1, "SIGTERM", "step 20/3000"))
  assert steps[0] == steps[1] > 20
  saved = sorted(int(d) for d in os.listdir(workdir / "checkpoints") if d.isdigit())
  assert saved == steps[:1]
  # Resumed on two processes; Ctrl-C on process 0 also stops both at one step.
  logged = (saved[0] // 10 + 2) * 10  # a step that logs (every 10th), 10 to 20 after
  results = _stop_one(args, str(tmp_path), 0, "SIGINT", f"step {logged}/3000")
  again = _preempted_at(results)
  assert f"resumed from checkpoint at step {saved[0]}" in results[0][2]
  assert again[0] == again[1] > logged
  assert "preempted by SIGINT" in results[0][2]


def test_bad_process_flags_exit_2_with_one_line(tmp_path):
  proc = run_main("--config=configs/default.py", f"--workdir={tmp_path}",
                  "--num_processes=2", "--process_id=0", check=False)
  lines = [l for l in proc.stderr.splitlines() if l.strip()]
  assert proc.returncode == 2 and len(lines) == 1, proc.stderr
  assert "needs --coordinator_address" in lines[0]


@pytest.mark.parametrize("flags, env, expected", [
    ({}, {}, None),
    (dict(coordinator_address="h0:1234", num_processes=2, process_id=1), {},
     {"coordinator_address": "h0:1234", "num_processes": 2, "process_id": 1}),
    ({}, {"JAX_COORDINATOR_ADDRESS": "h0:1", "JAX_NUM_PROCESSES": "4", "JAX_PROCESS_ID": "3"},
     {"coordinator_address": "h0:1", "num_processes": 4, "process_id": 3}),
    ({}, {"SLURM_JOB_ID": "7", "SLURM_PROCID": "1", "SLURM_NTASKS": "2"}, {}),
    ({}, {"SLURM_JOB_ID": "7", "SLURM_PROCID": "0", "SLURM_NTASKS": "4",
          "SLURM_STEP_NUM_TASKS": "1"}, None),  # the batch script itself, not srun
    (dict(num_processes=1), {"SLURM_JOB_ID": "7", "SLURM_PROCID": "1", "SLURM_NTASKS": "2"},
     None),  # opting out under a launcher
    (dict(coordinator_address="h0:1"), {"SLURM_JOB_ID": "7", "SLURM_PROCID": "0",
                                        "SLURM_NTASKS": "2"}, {"coordinator_address": "h0:1"}),
])
def test_plan_from_flags_and_environment(flags, env, expected):
  assert distributed.plan(**flags, env=env) == expected


@pytest.mark.parametrize("flags, env, message", [
    (dict(num_processes=2, process_id=0), {}, "needs --coordinator_address"),
    (dict(coordinator_address="h0:1", num_processes=2), {}, "go together"),
    (dict(coordinator_address="h0:1", num_processes=2, process_id=2), {}, "must be in [0, 2)"),
    (dict(coordinator_address="h0:1"), {}, "needs --num_processes and --process_id"),
    ({}, {"JAX_COORDINATOR_ADDRESS": "h0:1", "JAX_NUM_PROCESSES": "two"}, "JAX_NUM_PROCESSES"),
])
def test_plan_refuses_bad_combinations(flags, env, message):
  with pytest.raises(UserError, match=message.replace("[", r"\[").replace(")", r"\)")):
    distributed.plan(**flags, env=env)


class Recording:
  """A source that notes which examples were read."""

  def __init__(self, source):
    self.source, self.read = source, set()

  def __len__(self):
    return len(self.source)

  def __getitem__(self, i):
    self.read.add(int(i))
    return self.source[i]


def test_each_process_reads_only_its_rows(tfds_dir, monkeypatch):
  config = base.get_config().data
  config.update(tfds_dir=tfds_dir, batch_size=16, eval_batch_size=16, cache_mb=0,
                random_crop=1, random_flip=True)
  source = images.open_source(config)

  def read_as(process, count):
    monkeypatch.setattr(jax, "process_index", lambda: process)
    monkeypatch.setattr(jax, "process_count", lambda: count)
    train, eval_ = Recording(source.train), Recording(source.eval)
    data = images.ImageData(config, dataclasses.replace(source, train=train, eval=eval_),
                            seed=0, sharding=None)
    train.read.clear()  # the normaliser's fixed sample is read by every process
    batches = data.train_batch(200), data.eval_batch(5)  # train: in epoch 2
    reads = set(train.read), set(eval_.read)
    return (*batches, data.eval_batch(22)), reads  # eval 22: the last, padded batch

  whole, whole_reads = read_as(0, 1)
  parts, reads = zip(*[read_as(p, 2) for p in (0, 1)])
  for i, expected in enumerate(whole):
    for key in expected:
      np.testing.assert_array_equal(np.concatenate([part[i][key] for part in parts]),
                                    expected[key])
  for i in (0, 1):  # train, eval: halves of the rows, read by one process each
    assert len(reads[0][i]) == len(reads[1][i]) == 8
    assert reads[0][i] | reads[1][i] == whole_reads[i] and not reads[0][i] & reads[1][i]

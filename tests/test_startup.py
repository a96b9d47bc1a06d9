"""Start-up and resume (README, "Reliability"): every check runs before the workdir's record
is touched; a signal before training ends the run with one line and its exit code; a resume
that would continue differently from the checkpoint (schedule, seed, data position) is
refused in one line unless the config allows it."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from helpers import REPO, last_json, main_env, run_main
from test_reliability import args, reference  # noqa: F401  (the shared reference run)
from train_lib import checkpointing


def read(path):
  with open(path, "rb") as f:
    return f.read()


def launches(workdir):
  with open(os.path.join(workdir, "launches.jsonl")) as f:
    return [json.loads(line) for line in f]


def test_a_refused_launch_leaves_the_run_record_byte_identical(reference, tmp_path, tfds_dir):
  workdir = str(tmp_path / "copy")
  shutil.copytree(reference[0], workdir)
  record = {name: read(os.path.join(workdir, name)) for name in ("config.json", "capsule.json")}
  before = len(launches(workdir))
  argv = args(workdir, tfds_dir)
  argv[0] = "--config=configs/default.py:runlocal"     # another model on the same data
  proc = run_main(*argv, check=False)
  assert proc.returncode == 2 and "does not fit the model" in proc.stderr, proc.stderr[-2000:]
  assert "Traceback" not in proc.stderr
  assert {name: read(os.path.join(workdir, name)) for name in record} == record
  history = launches(workdir)
  assert len(history) == before + 1 and history[-1]["outcome"].startswith("refused: ")
  assert history[-1]["config"]["model"]["name"] != history[0]["config"]["model"]["name"]
  assert history[0]["outcome"] == "started" and "--config=configs/digits_mlp.py:runlocal" in \
      history[0]["command"]


@pytest.mark.parametrize("name, make, what", [
    ("checkpoints", lambda p: open(p, "w").close(), "is a file, not a directory"),
    ("lock", os.mkdir, "is a directory, not a plain file"),
    ("quarantine", lambda p: os.symlink("/tmp", p), "is a symbolic link"),
])
def test_a_workdir_entry_of_the_wrong_kind_is_refused_before_training(tmp_path, tfds_dir, name,
                                                                      make, what):
  workdir = str(tmp_path)
  make(os.path.join(workdir, name))
  proc = run_main(*args(workdir, tfds_dir), check=False)
  assert proc.returncode == 2 and "Traceback" not in proc.stderr
  last = proc.stderr.strip().splitlines()[-1]
  assert last.startswith(f"error: {os.path.join(workdir, name)} {what}"), last
  assert "compiled train step" not in proc.stderr
  assert not os.path.exists(os.path.join(workdir, "config.json"))


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_in_the_first_seconds_exits_with_one_line(tmp_path, tfds_dir, signum):
  """At 0.5 s (imports), 1.5 s and 3 s (setup, restore, compile): SIGTERM exits 75, SIGINT
  130 before the training steps (75 once they run: saved first); never a traceback."""
  for i, delay in enumerate((0.5, 1.5, 3.0)):
    workdir = str(tmp_path / f"w{i}")
    proc = subprocess.Popen([sys.executable, os.path.join(REPO, "main.py"),
                             *args(workdir, tfds_dir, steps=100000)], cwd=REPO, env=main_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(delay)
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=300)
    trained = "compiled train step" in err
    want = 75 if signum == signal.SIGTERM or trained else 130
    assert proc.returncode == want, (delay, proc.returncode, err[-2000:])
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err[-2000:]
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: "), last
    if not trained:
      assert "nothing was trained" in last, last


def test_resume_time_changes_are_refused_or_reported(tmp_path, tfds_dir):
  """A warmup-cosine run of 6 steps, then: more steps (another schedule), another seed, a
  data position that is not the step's; each refused in one line, each allowed by its flag.
  The already-trained path prints no warning."""
  workdir = str(tmp_path)
  base_args = ["--config=configs/digits_mlp.py:runlocal", f"--workdir={workdir}",
               f"--config.data.tfds_dir={tfds_dir}", "--config.optim.schedule=warmup_cosine",
               "--config.optim.warmup_steps=2", "--config.train.num_steps=6",
               "--config.train.log_every=2", "--config.train.eval_every=0",
               "--config.train.checkpoint_every=3"]
  result = last_json(run_main(*base_args).stdout)
  again = run_main(*base_args)
  assert last_json(again.stdout)["loss"] == result["loss"]
  assert "already trained to step 6" in again.stderr
  assert "warning" not in again.stderr.lower(), again.stderr

  def refused(*extra):
    proc = run_main(*base_args, *extra, check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    return proc.stderr.strip().splitlines()[-1]

  line = refused("--config.train.num_steps=12")
  assert "would change its learning-rate schedule (train.num_steps 6 -> 12" in line, line
  assert "allow_schedule_change" in line
  # A finished run with another learning rate has no step left to train: no change.
  assert last_json(run_main(*base_args, "--config.optim.learning_rate=0.01").stdout) == result
  line = refused("--config.seed=1")
  assert "seed=0, now seed=1" in line and "allow_seed_change" in line

  step_dir = os.path.join(workdir, "checkpoints", "6")
  position = os.path.join(step_dir, "data", "process_0-of-1.json")
  with open(position, "w") as f:
    json.dump({"next_index": 4}, f)
  checkpointing.seal(step_dir)            # digests agree: only the position is wrong
  line = refused("--config.train.num_steps=9", "--config.train.allow_schedule_change=True")
  assert "holds data position 4" in line and "allow_data_position_mismatch" in line

  proc = run_main(*base_args, "--config.train.num_steps=9", "--config.seed=1",
                  "--config.train.allow_schedule_change=True",
                  "--config.train.allow_seed_change=True",
                  "--config.train.allow_data_position_mismatch=True")
  assert "schedule changed on resume" in proc.stderr and "seed 0 -> 1 on resume" in proc.stderr
  assert "data position 4 at step 6" in proc.stderr
  assert last_json(proc.stdout)["step"] == 9


def test_a_bad_init_from_is_refused_before_any_device_work(tmp_path, tfds_dir):
  for spec, message in (("nosuchformat:x.safetensors", "init_from format"),
                        (f"hf_gpt2:{tmp_path}/missing.safetensors", "no file")):
    proc = run_main(*args(str(tmp_path / "w"), tfds_dir), f"--config.init_from={spec}",
                    check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert message in last and "model mlp" not in proc.stderr, last

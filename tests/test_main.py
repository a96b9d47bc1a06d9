"""End to end: main.py as a user runs it (subprocesses on CPU)."""

import glob
import json
import os
import shutil

import pytest

from helpers import last_json, read_metrics, run_main

DEFAULT = "--config=configs/default.py:runlocal"


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tfds_dir):
  """One runlocal training of the default config, shared by the tests below."""
  workdir = str(tmp_path_factory.mktemp("default"))
  proc = run_main(DEFAULT, f"--workdir={workdir}", f"--config.data.tfds_dir={tfds_dir}")
  return workdir, proc


def test_train_prints_result_and_writes_workdir(trained):
  workdir, proc = trained
  result = last_json(proc.stdout)
  assert result["step"] == 60 and result["split"] == "test"
  assert result["num_examples"] == 359            # every test example, once
  assert result["accuracy"] > 0.8, result          # 10 classes: chance is 0.1
  for name in ("config.json", "capsule.json", "metrics.jsonl"):
    assert os.path.isfile(os.path.join(workdir, name)), name
  assert glob.glob(os.path.join(workdir, "tensorboard", "events.out.tfevents.*"))
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["30", "60"]
  capsule = json.load(open(os.path.join(workdir, "capsule.json")))
  assert capsule["seed"] == 0 and capsule["packages"]["jax"]
  assert capsule["devices"]["count"] == 1 and "git_dirty" in capsule
  config = json.load(open(os.path.join(workdir, "config.json")))
  assert config["model"]["name"] == "cnn" and config["train"]["num_steps"] == 60


def test_metrics_jsonl_contract(trained):
  workdir, _ = trained
  records = read_metrics(workdir)
  assert all("step" in r and "split" in r for r in records)
  train = [r for r in records if r["split"] == "train" and "loss" in r]
  assert [r["step"] for r in train] == [0, 20, 40, 60]   # step 0: the loss at init
  assert all(r["steps_per_sec"] > 0 and r["examples_per_sec"] > 0 for r in train[1:])
  assert train[-1]["loss"] < train[0]["loss"]
  evals = [r for r in records if r["split"] == "test"]
  assert [r["step"] for r in evals] == [30, 60]


def test_progress_line(trained):
  _, proc = trained
  lines = [l for l in proc.stderr.splitlines() if l.startswith("step 20/60")]
  assert lines, proc.stderr
  for part in ("loss", "steps/s", "ex/s", "ETA"):
    assert part in lines[0]


def test_resume_continues_exactly(trained, tmp_path, tfds_dir):
  """Losing the newest checkpoint and rerunning gives the same final numbers."""
  workdir, proc = trained
  copy = str(tmp_path / "copy")
  shutil.copytree(workdir, copy)
  shutil.rmtree(os.path.join(copy, "checkpoints", "60"))
  resumed = run_main(DEFAULT, f"--workdir={copy}", f"--config.data.tfds_dir={tfds_dir}")
  assert "resumed from checkpoint at step 30" in resumed.stderr
  assert last_json(resumed.stdout) == last_json(proc.stdout)
  train = lambda d: [r for r in read_metrics(d) if r["split"] == "train" and r["step"] == 60]
  assert train(copy)[-1]["loss"] == train(workdir)[-1]["loss"]


def test_rerun_of_finished_run_only_evaluates(trained, tfds_dir):
  workdir, proc = trained
  again = run_main(DEFAULT, f"--workdir={workdir}", f"--config.data.tfds_dir={tfds_dir}")
  assert "already trained to step 60" in again.stderr
  assert last_json(again.stdout)["accuracy"] == last_json(proc.stdout)["accuracy"]


def test_eval_mode_newest_chosen_step_and_other_device_count(trained, tfds_dir):
  workdir, proc = trained
  result = last_json(run_main(DEFAULT, f"--workdir={workdir}", "--mode=eval",
                              f"--config.data.tfds_dir={tfds_dir}").stdout)
  assert result["mode"] == "eval" and result["step"] == 60
  assert result["accuracy"] == last_json(proc.stdout)["accuracy"]
  # Saved on 1 device, restored onto 4: same numbers up to reduction order.
  older = last_json(run_main(DEFAULT, f"--workdir={workdir}", "--mode=eval",
                             "--config.eval.step=30", f"--config.data.tfds_dir={tfds_dir}",
                             devices=4).stdout)
  assert older["step"] == 30 and older["num_examples"] == 359
  evals = [r for r in read_metrics(workdir) if r.get("mode") == "eval"]
  assert [r["step"] for r in evals[-2:]] == [60, 30]
  at30 = [r for r in read_metrics(workdir) if r["split"] == "test" and r["step"] == 30][0]
  assert older["accuracy"] == pytest.approx(at30["accuracy"], abs=1 / 359)
  assert older["loss"] == pytest.approx(at30["loss"], rel=1e-4)


def test_same_seed_same_numbers_other_seed_differs(trained, tmp_path, tfds_dir):
  workdir, proc = trained
  again = run_main(DEFAULT, f"--workdir={tmp_path / 'a'}", f"--config.data.tfds_dir={tfds_dir}")
  assert last_json(again.stdout) == last_json(proc.stdout)
  other = run_main(DEFAULT, f"--workdir={tmp_path / 'b'}", "--config.seed=1",
                   f"--config.data.tfds_dir={tfds_dir}")
  assert last_json(other.stdout)["loss"] != last_json(proc.stdout)["loss"]


@pytest.mark.parametrize("args, message", [
    (["--config.train.nmu_steps=3"], "did you mean 'num_steps'"),
    (["--config.model.zzz=1"], "unknown config key config.model.zzz: config.model has no field 'zzz'"),
    (["--config.optim.learning_rate=abc"], "learning_rate"),
    (["--config=configs/missing.py"], "configs/missing.py not found"),
    (["--config=configs/default.py:bogus"], "unknown config argument 'bogus'"),
    (["--config.model.name=cnnn"], "Did you mean 'cnn'"),
    (["--config.data.name=nosuchdata"], "nosuchdata"),
    (["--config.data.name=fashion_mnist", "--config.data.source_dir=/nonexistent"],
     "/nonexistent/train-images-idx3-ubyte.gz not found"),
    (["--mode=bogus"], "--mode=bogus"),
    (["--config.mesh.data=3"], "mesh"),
    (["--config.data.batch_size=7", "--config.mesh.data=2"], "batch_size=7"),
    (["--workdir=/proc/forbidden"], "not writable"),
    (["--jax_platforms=bogus"], "Unable to initialize backend 'bogus'"),
])
def test_bad_input_exits_2_with_one_line(tmp_path, tfds_dir, args, message):
  workdir = [] if any(a.startswith("--workdir") for a in args) else [
      f"--workdir={tmp_path / 'w'}"]
  config = [] if any(a.startswith("--config=") for a in args) else [DEFAULT]
  proc = run_main(*config, *workdir, f"--config.data.tfds_dir={tfds_dir}", *args,
                  check=False, devices=2)
  assert proc.returncode == 2, proc.stderr
  lines = [l for l in proc.stderr.splitlines() if l.strip()]
  assert len(lines) == 1 and message in lines[0], proc.stderr
  assert "Traceback" not in proc.stderr
  assert not os.path.exists(tmp_path / "w" / "checkpoints")


def test_jax_flags_are_accepted(tmp_path, tfds_dir):
  proc = run_main(DEFAULT, f"--workdir={tmp_path}", f"--config.data.tfds_dir={tfds_dir}",
                  "--jax_platforms=cpu", "--config.train.num_steps=6")
  assert last_json(proc.stdout)["step"] == 6


def test_missing_required_flags(tmp_path):
  for args in ([f"--workdir={tmp_path}"], [DEFAULT]):
    proc = run_main(*args, check=False)
    assert proc.returncode == 2 and "is required" in proc.stderr


def test_eval_without_checkpoint_is_an_error(tmp_path, tfds_dir):
  proc = run_main(DEFAULT, f"--workdir={tmp_path}", "--mode=eval",
                  f"--config.data.tfds_dir={tfds_dir}", check=False)
  assert proc.returncode == 2 and "no checkpoint in" in proc.stderr


def test_fashion_mnist_resnet_runlocal(tmp_path, tfds_dir):
  proc = run_main("--config=configs/fashion_mnist_resnet.py:runlocal",
                  f"--workdir={tmp_path}", f"--config.data.tfds_dir={tfds_dir}",
                  "--config.train.num_steps=10", "--config.data.eval_batch_size=2000")
  result = last_json(proc.stdout)
  assert result["num_examples"] == 10_000 and result["step"] == 10


def _run_until(args, marker, sig, tfds_dir):
  """Starts main.py, waits for `marker` on stderr, sends `sig`; returns (code, stderr)."""
  import signal
  import subprocess
  import sys
  from helpers import REPO, main_env
  env = main_env(1)
  proc = subprocess.Popen([sys.executable, os.path.join(REPO, "main.py"), *args,
                           f"--config.data.tfds_dir={tfds_dir}"], cwd=REPO, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  lines = []
  for line in proc.stderr:
    lines.append(line)
    if marker in line:
      proc.send_signal(getattr(signal, sig))
      break
  rest = proc.stderr.read()
  proc.wait(timeout=120)
  return proc.returncode, "".join(lines) + rest


def test_sigterm_and_sigint_save_and_exit_75_then_resume(tmp_path, tfds_dir):
  args = [DEFAULT, f"--workdir={tmp_path}", "--config.train.num_steps=3000",
          "--config.train.log_every=10", "--config.train.checkpoint_every=0",
          "--config.train.eval_every=0"]
  code, err = _run_until(args, "step 20/3000", "SIGTERM", tfds_dir)
  assert code == 75, err[-2000:]
  assert "preempted by SIGTERM" in err and "checkpoint saved" in err
  saved = sorted(int(d) for d in os.listdir(tmp_path / "checkpoints") if d.isdigit())
  assert len(saved) == 1 and saved[0] >= 20
  code, err = _run_until(args, "step 40/3000", "SIGINT", tfds_dir)
  assert code == 75 and f"resumed from checkpoint at step {saved[0]}" in err, err[-2000:]
  assert "preempted by SIGINT" in err

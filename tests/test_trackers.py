"""Experiment trackers (train_lib/tools/trackers.py), offline: W&B in offline mode, MLflow on
a local file store. A resumed runlocal training logs into both; they hold what metrics.jsonl
holds, at the same steps, in one run each. A dead tracker never fails a run; an unknown
writer is refused before the run starts."""

import glob
import json
import os
import struct
import subprocess
import sys

import numpy as np
import pytest
from flax.traverse_util import flatten_dict

from configs import base
from helpers import REPO, main_env, read_metrics
from train_lib.errors import Preempted, UserError
from train_lib.tools import trackers

DEFAULT = "--config=configs/default.py:runlocal"


def tracker_env(tmp) -> dict:
  """main.py's environment with W&B offline and every W&B and MLflow file in `tmp`."""
  env = {k: v for k, v in main_env().items() if not k.startswith(("WANDB_", "MLFLOW_"))}
  folders = {name: os.path.join(tmp, name.lower()) for name in
             ("WANDB_DIR", "WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR")}
  for folder in folders.values():
    os.makedirs(folder, exist_ok=True)
  return dict(env, WANDB_MODE="offline", **folders)


def main(tmp, *args):
  return subprocess.run([sys.executable, os.path.join(REPO, "main.py"), *args], cwd=REPO,
                        env=tracker_env(tmp), capture_output=True, text=True, timeout=600)


def wandb_records(path: str) -> list:
  """The records of a W&B run file (run-ID.wandb): LevelDB-log chunks of 32 KiB blocks after
  a 7-byte header, each record a wandb_internal_pb2.Record, as wandb-core writes them."""
  from wandb.proto import wandb_internal_pb2
  with open(path, "rb") as f:
    data = f.read()
  assert data[:4] == b":W&B", path
  records, at, parts = [], 7, b""
  while at + 7 <= len(data):
    if 32768 - at % 32768 < 7:   # a block's tail too short for a chunk header: padding
      at += 32768 - at % 32768
      continue
    _, length, kind = struct.unpack("<IHB", data[at:at + 7])
    if kind == 0:   # zero padding
      break
    parts += data[at + 7:at + 7 + length]
    at += 7 + length
    if kind in (1, 4):   # a full record, or the last chunk of one
      record = wandb_internal_pb2.Record()
      record.ParseFromString(parts)
      records.append(record)
      parts = b""
  return records


def wandb_run(path: str) -> dict:
  """run id, config, history points {(key, step): value} and exit code of a run file."""
  out = {"config": {}, "points": {}, "exit_code": None}
  for record in wandb_records(path):
    kind = record.WhichOneof("record_type")
    if kind == "run":
      out["id"] = record.run.run_id
      out["config"].update({i.key: json.loads(i.value_json) for i in record.run.config.update})
    elif kind == "config":
      out["config"].update({i.key: json.loads(i.value_json) for i in record.config.update})
    elif kind == "history":
      row = {i.key or "/".join(i.nested_key): json.loads(i.value_json)
             for i in record.history.item}
      out["points"].update({(k, row["step"]): v for k, v in row.items()
                            if k != "step" and not k.startswith("_")})
    elif kind == "exit":
      out["exit_code"] = record.exit.exit_code
  return out


def logged_points(workdir: str) -> dict:
  """metrics.jsonl's points as {("SPLIT/NAME", step): value}: every line a watcher sees
  (not the writer's own compile-time line)."""
  points = {}
  for line in read_metrics(workdir):
    values = {k: v for k, v in line.items() if k not in ("step", "split")}
    if set(values) != {"compile_seconds"}:
      points.update({(f"{line['split']}/{k}", line["step"]): v for k, v in values.items()})
  return points


@pytest.fixture(scope="module")
def resumed(tmp_path_factory, tfds_dir):
  """runlocal to step 30, then resumed to 60 in the same workdir, both trackers on."""
  tmp = str(tmp_path_factory.mktemp("trackers"))
  workdir, mlruns = os.path.join(tmp, "run"), os.path.join(tmp, "mlruns")
  args = (DEFAULT, f"--workdir={workdir}", f"--config.data.tfds_dir={tfds_dir}",
          "--config.writers=wandb,mlflow", f"--config.mlflow.tracking_uri=file://{mlruns}")
  procs, configs = [], []
  for extra in (["--config.train.num_steps=30"], ["--config.train.allow_schedule_change=True"]):
    procs.append(main(tmp, *args, *extra))
    assert procs[-1].returncode == 0, procs[-1].stderr[-3000:]
    with open(os.path.join(workdir, "config.json")) as f:
      configs.append(json.load(f))
  with open(os.path.join(workdir, "trackers.json")) as f:
    ids = json.load(f)
  return {"tmp": tmp, "workdir": workdir, "mlruns": f"file://{mlruns}", "procs": procs,
          "configs": configs, "ids": ids}


@pytest.fixture
def mlflow_client(resumed, monkeypatch):
  monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
  from mlflow.tracking import MlflowClient
  return MlflowClient(tracking_uri=resumed["mlruns"])


def test_mlflow_holds_the_metrics_of_both_launches_in_one_run(resumed, mlflow_client):
  experiment = mlflow_client.get_experiment_by_name("whetstone")
  runs = mlflow_client.search_runs([experiment.experiment_id])
  assert [r.info.run_id for r in runs] == [resumed["ids"]["mlflow"]["run_id"]]
  run = runs[0]
  assert run.info.status == "FINISHED" and run.info.run_name == "run"   # the workdir's name
  got = {(m.key, m.step): m.value for key in run.data.metrics
         for m in mlflow_client.get_metric_history(run.info.run_id, key)}
  want = {(trackers.mlflow_key(k), step): v for (k, step), v in
          logged_points(resumed["workdir"]).items()}
  assert got == want
  steps = {step for (key, step) in got if key == "train/loss"}
  assert steps == {0, 20, 30, 40, 60}        # both launches, the initial loss included
  assert {step for (key, step) in got if key == "test/accuracy"} == {30, 60}
  assert "train/grad_rms.Conv_0" in run.data.metrics and "train/steps_per_sec" in run.data.metrics


def test_mlflow_params_are_the_config_and_the_capsule_is_an_artifact(resumed, mlflow_client,
                                                                     tmp_path):
  run = mlflow_client.get_run(resumed["ids"]["mlflow"]["run_id"])
  first, last = resumed["configs"]
  params = run.data.params
  assert params == {k: str(v) for k, v in flatten_dict(first, sep=".").items()}
  assert params["optim.learning_rate"] == str(first["optim"]["learning_rate"])
  assert params["train.num_steps"] == "30" != str(last["train"]["num_steps"])  # kept as first
  assert "config now differs in train.allow_schedule_change, train.num_steps" in \
      resumed["procs"][1].stderr
  with open(os.path.join(resumed["workdir"], "capsule.json")) as f:
    capsule = json.load(f)
  assert run.data.tags["capsule.git_commit"] == str(capsule["git_commit"])
  names = {a.path for a in mlflow_client.list_artifacts(run.info.run_id)}
  assert {"capsule.json", "config.json", "diagnosis.json"} <= names
  local = mlflow_client.download_artifacts(run.info.run_id, "capsule.json", str(tmp_path))
  with open(local) as f:
    assert json.load(f) == capsule


def test_wandb_offline_run_holds_the_metrics_and_the_config(resumed):
  files = sorted(glob.glob(os.path.join(resumed["tmp"], "wandb_dir", "wandb",
                                        "offline-run-*", "run-*.wandb")))
  assert len(files) == 2, files   # one per launch, of one run
  launches = [wandb_run(path) for path in files]
  assert [r["id"] for r in launches] == [resumed["ids"]["wandb"]["id"]] * 2
  assert [r["exit_code"] for r in launches] == [0, 0]
  points = {**launches[0]["points"], **launches[1]["points"]}
  assert points == logged_points(resumed["workdir"])
  assert ("train/grad_rms/Conv_0", 40) in points and ("test/accuracy", 60) in points
  for launch, config in zip(launches, resumed["configs"]):
    flat = flatten_dict(config, sep=".")
    assert {k: launch["config"][k] for k in flat} == flat
  assert launches[1]["config"]["train.num_steps"] == 60   # the resumed launch's value
  with open(os.path.join(resumed["workdir"], "capsule.json")) as f:
    capsule = json.load(f)
  assert launches[1]["config"]["capsule.git_commit"] == capsule["git_commit"]
  saved = os.path.join(os.path.dirname(files[1]), "files", "capsule.json")
  with open(saved) as f:
    assert json.load(f) == capsule


def test_a_dead_tracking_server_costs_one_warning_line(tmp_path, tfds_dir):
  workdir = str(tmp_path / "run")
  proc = main(str(tmp_path), DEFAULT, f"--workdir={workdir}", f"--config.data.tfds_dir={tfds_dir}",
              "--config.train.num_steps=20", "--config.writers=mlflow,wandb",
              "--config.mlflow.tracking_uri=http://127.0.0.1:9")
  assert proc.returncode == 0, proc.stderr[-3000:]
  warnings = [l for l in proc.stderr.splitlines() if l.startswith("warning:")]
  assert len(warnings) == 1 and "mlflow" in warnings[0] and "127.0.0.1" in warnings[0], warnings
  assert json.loads(proc.stdout.splitlines()[-1])["step"] == 20
  files = glob.glob(str(tmp_path / "wandb_dir" / "wandb" / "offline-run-*" / "run-*.wandb"))
  assert wandb_run(files[0])["points"] == logged_points(workdir)   # the other tracker goes on
  assert "mlflow" not in json.load(open(os.path.join(workdir, "trackers.json")))


def test_a_diverged_run_is_marked_failed_in_both(tmp_path, tfds_dir, monkeypatch):
  workdir, mlruns = str(tmp_path / "run"), str(tmp_path / "mlruns")
  proc = main(str(tmp_path), DEFAULT, f"--workdir={workdir}", f"--config.data.tfds_dir={tfds_dir}",
              "--config.optim.learning_rate=1e6", "--config.train.log_every=5",
              "--config.writers=wandb,mlflow", f"--config.mlflow.tracking_uri={mlruns}")
  assert proc.returncode == 3, proc.stderr[-3000:]
  [file] = glob.glob(str(tmp_path / "wandb_dir" / "wandb" / "offline-run-*" / "run-*.wandb"))
  launch = wandb_run(file)
  assert launch["exit_code"] == 3
  assert not all(np.isfinite(list(launch["points"].values())))   # the step that diverged
  monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
  from mlflow.tracking import MlflowClient
  client = MlflowClient(tracking_uri=mlruns)
  [run] = client.search_runs([client.get_experiment_by_name("whetstone").experiment_id])
  assert run.info.status == "FAILED"
  got = {(m.key, m.step): m.value for key in run.data.metrics
         for m in client.get_metric_history(run.info.run_id, key)}
  np.testing.assert_equal(got, {(trackers.mlflow_key(k), step): v   # NaN equals NaN here
                                for (k, step), v in launch["points"].items()})


def test_an_unknown_writer_is_refused_in_one_line(tmp_path):
  workdir = str(tmp_path / "run")
  proc = main(str(tmp_path), DEFAULT, f"--workdir={workdir}",
              "--config.writers=wandb,tensorbord")
  assert proc.returncode == 2
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1 and "tensorbord" in lines[0] and "wandb, mlflow" in lines[0], lines
  assert not os.path.exists(workdir)


def config(**writers):
  c = base.get_config()
  for key, value in writers.items():
    if "__" in key:
      section, field = key.split("__")
      c[section][field] = value
    else:
      c[key] = value
  return c


def test_check_names_and_modes():
  assert trackers.check(config(writers="")) == []
  assert trackers.check(config(writers=" MLflow, wandb,mlflow")) == ["mlflow", "wandb"]
  with pytest.raises(UserError, match="'neptune'.*known: wandb, mlflow"):
    trackers.check(config(writers="wandb,neptune"))
  with pytest.raises(UserError, match="wandb.mode='ofline'"):
    trackers.check(config(writers="wandb", wandb__mode="ofline"))
  assert trackers.check(config(writers="mlflow", wandb__mode="ofline")) == ["mlflow"]


def test_numbers_keeps_scalars_only():
  got = trackers.numbers("test", {"loss": np.float32(0.5), "n": 7, "ok": True,
                                  "name": "x", "per_class": np.ones(3)})
  assert got == {"test/loss": 0.5, "test/n": 7.0, "test/ok": 1.0}


@pytest.fixture
def mlflow_tracking(tmp_path, monkeypatch):
  """Trackers for MLflow on a file store in tmp_path, started in-process."""
  for key, value in {**trackers.MLFLOW_HTTP_ENV, "MLFLOW_ALLOW_FILE_STORE": "true"}.items():
    monkeypatch.setenv(key, value)   # set here, they are unset again after the test
  uri = f"file://{tmp_path}/mlruns"
  watcher = trackers.Trackers(config(writers="mlflow", mlflow__tracking_uri=uri))
  watcher.start(None, str(tmp_path))
  from mlflow.tracking import MlflowClient
  return watcher, MlflowClient(tracking_uri=uri)


def test_a_failing_tracker_warns_once_and_goes_off(mlflow_tracking, monkeypatch, capsys):
  watcher, _ = mlflow_tracking
  [tracker] = watcher.active
  watcher(1, "train", {"loss": 1.0})
  capsys.readouterr()

  def broken(*args, **kwargs):
    raise OSError("No space left on device\nsecond line")
  monkeypatch.setattr(tracker.client, "log_batch", broken)
  assert watcher(2, "train", {"loss": 0.5}) is False
  assert watcher(3, "train", {"loss": 0.4}) is False
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and "mlflow" in err[0] and "No space left on device second line" in err[0]
  assert watcher.active == []
  watcher.finish({"step": 3})   # nothing left to close: no error


@pytest.mark.parametrize("error, status", [(RuntimeError("x"), "FAILED"),
                                           (Preempted("x"), "KILLED")])
def test_finish_without_result_marks_the_run(mlflow_tracking, error, status):
  watcher, client = mlflow_tracking
  run_id = watcher.active[0].run_id
  watcher(1, "train", {"loss": 1.0})
  watcher.finish(None, error=error)
  run = client.get_run(run_id)
  assert run.info.status == status and run.data.metrics == {"train/loss": 1.0}

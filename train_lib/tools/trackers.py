"""Experiment trackers beside metrics.jsonl and TensorBoard: Weights & Biases and MLflow.

    python main.py --config=configs/default.py --workdir=runs/a --config.writers=wandb,mlflow
    python main.py ... --config.writers=mlflow --config.mlflow.tracking_uri=http://host:5000

    names = trackers.check(config)        # ["wandb", "mlflow"]; an unknown name: UserError
    watcher = trackers.Trackers(config)   # a loop watcher (train_lib/loop.py train())
    watcher.start(setup, workdir)         # opens the runs: config, capsule.json, config.json
    watcher(step, "train", {"loss": 0.3}) # every logged point, as "train/loss" at that step
    watcher.finish(result)                # closes them; finish(None, error=e): failed

What each tracker holds: the config flattened ("optim.learning_rate") as the run's config
(W&B) or params (MLflow), a few capsule fields (git commit, host, devices), capsule.json
and config.json as files (artifacts) of the run, diagnosis.json at the end, and every
number of every logged point under "SPLIT/NAME" at its step (MLflow: a "/" inside NAME
becomes ".", train/grad_rms.Dense_0, see mlflow_key). W&B plots them against a metric
"step" (the run's step), so that steps logged again after a resume are kept.

Only process 0 talks to the trackers. A tracker never stops a run: whatever fails in it
(no API key, a dead server, a full disk) prints one warning line naming the tracker and the
error, and the run goes on without that tracker. Calls are bounded: W&B's init waits at most
INIT_TIMEOUT_S and its finish FINISH_TIMEOUT_S (its logging is asynchronous); MLflow's HTTP
requests time out after 10 s with 2 retries (MLFLOW_HTTP_REQUEST_TIMEOUT and
MLFLOW_HTTP_REQUEST_MAX_RETRIES, set where the environment does not set them).

Resume: workdir/trackers.json keeps each tracker's run id; a launch on the same workdir
continues that W&B run (resume="allow") and that MLflow run (if it is in the same tracking
store). MLflow params cannot change: a resumed run keeps the first values and says which
differ (config.json, logged again, has the new ones).

Where things go: W&B follows config.wandb.mode (else $WANDB_MODE, else online) and writes
its local files under $WANDB_DIR or else the workdir (workdir/wandb/; `wandb sync` uploads
an offline run). MLflow uses config.mlflow.tracking_uri, else $MLFLOW_TRACKING_URI, else
./mlruns (a local file store, which MLflow 3 keeps in maintenance mode: allowed here through
MLFLOW_ALLOW_FILE_STORE), or an http(s):// tracking server.
"""

import json
import os
import shutil
import time

import jax
import numpy as np
from flax.traverse_util import flatten_dict

from train_lib import writers
from train_lib.errors import Preempted, UserError

KNOWN = ("wandb", "mlflow")
WANDB_MODES = ("offline", "online", "disabled")
INIT_TIMEOUT_S = 60
FINISH_TIMEOUT_S = 120
MLFLOW_HTTP_ENV = {"MLFLOW_HTTP_REQUEST_TIMEOUT": "10", "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
                   "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                   "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "0.5"}
CAPSULE_FIELDS = ("git_commit", "git_dirty", "host", "platform", "python")
RUN_IDS = "trackers.json"   # in the workdir


def check(config) -> list:
  """The trackers config.writers names, in order; an unknown name or W&B mode: UserError."""
  names = []
  for name in str(config.writers).split(","):
    name = name.strip().lower()
    if name and name not in KNOWN:
      raise UserError(f"config.writers={config.writers!r}: unknown writer {name!r}; known: "
                      f"{', '.join(KNOWN)} (comma-separated, e.g. --config.writers=wandb,mlflow;"
                      " \"\" for none)")
    if name and name not in names:
      names.append(name)
  if "wandb" in names and config.wandb.mode not in ("", *WANDB_MODES):
    raise UserError(f"config.wandb.mode={config.wandb.mode!r} is unknown; use one of "
                    f"{', '.join(WANDB_MODES)}, or \"\" for $WANDB_MODE (else online)")
  return names


def numbers(split: str, metrics: dict) -> dict:
  """The logged point's numbers as {"SPLIT/NAME": float}; anything else is left out."""
  out = {}
  for key, value in metrics.items():
    try:
      array = np.asarray(value)
    except Exception:   # an object numpy cannot read is no number
      continue
    if array.ndim == 0 and array.dtype.kind in "biuf":
      out[f"{split}/{key}"] = float(array)
  return out


def mlflow_key(key: str) -> str:
  """The MLflow name of "SPLIT/NAME": a "/" in NAME becomes "." (train/grad_rms.Dense_0), since
  MLflow's file store keeps a metric as a file at its name's path, where "grad_rms" and
  "grad_rms/Dense_0" cannot both be."""
  split, _, name = key.partition("/")
  return f"{split}/{name.replace('/', '.')}"


def capsule_fields(workdir: str) -> dict:
  """A few fields of capsule.json to filter runs by: git commit, host, devices."""
  capsule = writers.read_json(os.path.join(workdir, "capsule.json"), {}) or {}
  out = {f"capsule.{k}": capsule[k] for k in CAPSULE_FIELDS if k in capsule}
  devices = capsule.get("devices", {})
  out.update({f"capsule.devices.{k}": devices[k] for k in ("count", "kind", "process_count")
              if k in devices})
  return out


def _one_line(e: Exception, limit: int = 300) -> str:
  text = " ".join(str(e).split()) or "no message"
  return f"{type(e).__name__}: {text if len(text) <= limit else text[:limit] + '...'}"


class Trackers:
  """The loop watcher that feeds every tracker named in config.writers (process 0 only)."""

  def __init__(self, config):
    self.config, self.names, self.active = config, check(config), []

  def start(self, setup, workdir: str):
    if jax.process_index() != 0:
      return
    path = os.path.join(workdir, RUN_IDS)
    ids = writers.read_json(path, {}) or {}
    params = flatten_dict(json.loads(self.config.to_json_best_effort()), sep=".")
    for name in self.names:
      tracker = TRACKERS[name](self.config)
      if self._guard(tracker, "start", tracker.start, workdir, params, ids.get(name)):
        if tracker.record is not None:
          self.active.append(tracker)
          ids[name] = tracker.record
    if self.active:
      writers.write_json(path, ids, indent=2, sort_keys=True)

  def __call__(self, step: int, split: str, metrics: dict) -> bool:
    values = numbers(split, metrics)
    for tracker in list(self.active):
      self._guard(tracker, "logging", tracker.log, int(step), values)
    return False

  def finish(self, result, error: BaseException = None):
    """Closes every run: finished, or failed where result is None (preempted where the
    error is Preempted: the next launch continues it)."""
    status = "finished" if result is not None else (
        "preempted" if isinstance(error, Preempted) else "failed")
    code = 0 if status == "finished" else getattr(error, "exit_code", 1)
    for tracker in list(self.active):
      self._guard(tracker, "finish", tracker.finish, status, code)
    self.active = []

  def _guard(self, tracker, what: str, fn, *args) -> bool:
    """Runs fn; an exception turns the tracker off with one warning line."""
    try:
      fn(*args)
      return True
    except Exception as e:
      writers.console(f"warning: {tracker.name} failed ({what}) and is off for the rest of "
                      f"this run, which goes on: {_one_line(e)}")
      if tracker in self.active:
        self.active.remove(tracker)
      tracker.abandon()
      return False


class WandbTracker:
  """A W&B run: config and capsule fields in run.config, files saved, history by step."""

  name = "wandb"

  def __init__(self, config):
    self.config, self.run, self.record = config.wandb, None, None

  def start(self, workdir: str, params: dict, previous):
    mode = self.config.mode or os.environ.get("WANDB_MODE") or "online"
    if mode == "disabled":
      writers.console("wandb: mode disabled; not tracking")
      return
    import wandb
    resume = previous.get("id") if isinstance(previous, dict) else None
    settings = wandb.Settings(init_timeout=INIT_TIMEOUT_S, login_timeout=INIT_TIMEOUT_S,
                              finish_timeout=FINISH_TIMEOUT_S, silent=True, console="off")
    self.run = wandb.init(
        project=self.config.project, entity=self.config.entity or None,
        name=self.config.name or os.path.basename(workdir), mode=mode,
        dir=None if os.environ.get("WANDB_DIR") else workdir,
        id=resume, resume="allow" if resume else None,
        config={**params, **capsule_fields(workdir)}, allow_val_change=True,
        settings=settings)
    self.run.define_metric("step")
    self.run.define_metric("*", step_metric="step")
    self.workdir = workdir
    self._save("capsule.json", "config.json")
    self.record = {"id": self.run.id, "project": self.config.project}
    where = (f"offline in {os.path.dirname(self.run.dir)} (upload: wandb sync "
             f"{os.path.dirname(self.run.dir)})" if self.run.offline else self.run.url)
    writers.console(f"wandb: {'resumed' if resume else 'new'} run {self.run.id}, {where}")

  def _save(self, *names):
    """Copies the workdir's files into the run's files (uploaded now where online)."""
    for name in names:
      if os.path.exists(os.path.join(self.workdir, name)):
        shutil.copyfile(os.path.join(self.workdir, name), os.path.join(self.run.dir, name))
        self.run.save(os.path.join(self.run.dir, name), base_path=self.run.dir, policy="now")

  def log(self, step: int, values: dict):
    self.run.log({"step": step, **values})

  def finish(self, status: str, code: int):
    if status == "finished":
      self._save("diagnosis.json")
    if status == "preempted":
      self.run.mark_preempting()
    run, self.run = self.run, None
    run.finish(exit_code=code)

  def abandon(self):
    """After an error: close the run if it opened, never raise."""
    run, self.run = self.run, None
    if run is not None:
      try:
        run.finish(exit_code=1)
      except Exception:
        pass


class MlflowTracker:
  """An MLflow run through MlflowClient: params, capsule tags, artifacts, metric history."""

  name = "mlflow"

  def __init__(self, config):
    self.config, self.client, self.run_id, self.record = config.mlflow, None, None, None

  def tracking_uri(self) -> str:
    """config.mlflow.tracking_uri, else $MLFLOW_TRACKING_URI, else ./mlruns; a local folder
    as an absolute path, so that a resumed launch from another directory finds it."""
    uri = self.config.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or "./mlruns"
    if ":" not in uri:
      uri = os.path.abspath(os.path.expanduser(uri))
    return uri

  def start(self, workdir: str, params: dict, previous):
    uri = self.tracking_uri()
    for key, value in MLFLOW_HTTP_ENV.items():   # a dead server costs seconds, not minutes
      os.environ.setdefault(key, value)
    if ":" not in uri or uri.startswith("file:"):   # the file store, in maintenance mode
      os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    from mlflow.entities import Metric, Param, RunTag
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient
    from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH
    self.Metric, self.client, self.workdir = Metric, MlflowClient(tracking_uri=uri), workdir
    run = self._previous_run(previous, uri, MlflowException)
    resumed = run is not None
    if not resumed:
      run = self.client.create_run(self._experiment_id(MlflowException),
                                   run_name=self.config.run_name or os.path.basename(workdir))
      logged = {}
    else:
      self.client.update_run(run.info.run_id, status="RUNNING")
      logged = run.data.params
    self.run_id = run.info.run_id
    values = {k: str(v)[:MAX_PARAM_VAL_LENGTH] for k, v in params.items()}
    changed = sorted(k for k, v in values.items() if k in logged and logged[k] != v)
    tags = {k: str(v) for k, v in capsule_fields(workdir).items()}
    if "capsule.git_commit" in tags:
      tags["mlflow.source.git.commit"] = tags["capsule.git_commit"]
    self.client.log_batch(self.run_id,
                          params=[Param(k, v) for k, v in values.items() if k not in logged],
                          tags=[RunTag(k, v) for k, v in tags.items()])
    for name in ("capsule.json", "config.json"):
      if os.path.exists(os.path.join(workdir, name)):
        self.client.log_artifact(self.run_id, os.path.join(workdir, name))
    self.record = {"run_id": self.run_id, "tracking_uri": uri,
                   "experiment_id": run.info.experiment_id}
    writers.console(f"mlflow: {'resumed' if resumed else 'new'} run {self.run_id} in {uri} "
                    f"(experiment {self.config.experiment})")
    if changed:
      more = ", ..." if len(changed) > 8 else ""
      writers.console(f"mlflow: the resumed run's params keep their first values; the config "
                      f"now differs in {', '.join(changed[:8])}{more} ({len(changed)} in all; "
                      "config.json, logged again, has the new ones)")

  def _previous_run(self, previous, uri: str, MlflowException):
    """The run of the previous launch, if it is in this tracking store and not deleted."""
    if not isinstance(previous, dict) or previous.get("tracking_uri") != uri:
      return None
    try:
      run = self.client.get_run(previous["run_id"])
    except MlflowException as e:
      if e.error_code == "RESOURCE_DOES_NOT_EXIST":
        return None
      raise
    return None if run.info.lifecycle_stage == "deleted" else run

  def _experiment_id(self, MlflowException) -> str:
    name = self.config.experiment
    experiment = self.client.get_experiment_by_name(name)
    if experiment is not None:
      return experiment.experiment_id
    try:
      return self.client.create_experiment(name)
    except MlflowException:   # another run created it meanwhile
      return self.client.get_experiment_by_name(name).experiment_id

  def log(self, step: int, values: dict):
    now = int(time.time() * 1000)
    self.client.log_batch(self.run_id, metrics=[self.Metric(mlflow_key(k), v, now, step)
                                                for k, v in values.items()])

  def finish(self, status: str, code: int):
    path = os.path.join(self.workdir, "diagnosis.json")
    if status == "finished" and os.path.exists(path):
      self.client.log_artifact(self.run_id, path)
    run_id, self.run_id = self.run_id, None
    self.client.set_terminated(run_id, {"finished": "FINISHED", "preempted": "KILLED"}.get(
        status, "FAILED"))

  def abandon(self):
    """After an error the server may be gone: nothing more is sent."""
    self.run_id = None


TRACKERS = {"wandb": WandbTracker, "mlflow": MlflowTracker}

"""The reproducibility record of a run: config.json and capsule.json in the workdir, and
launches.jsonl, one line per launch on it (time, command, config, and "started" or why it
was refused): config.json changes only when a run really starts from its config.

    capsule.write(workdir, config)
    watcher = capsule.Record(config)      # writes them when a training run starts
    capsule.log_launch(workdir, config, "refused: ...")
    config = config_io.from_json("runs/x/config.json")  # typed again: a replay

capsule.json holds the git commit and the uncommitted diff, the command line, package
versions, XLA and JAX flags, the device topology, the seeds, and the user code the run
loaded from outside the repo (plug-ins named "path/file.py:Name" or "package.module:Name"
that are not installed): each file is copied into workdir/code/ with its sha256, and a
replay from config.json loads those copies, not the files as they are now. Replaying a run is
`python main.py --config=runs/x/config.json --workdir=runs/x_again`: on the same machine,
with the same commit and diff, it gives the same numbers.
"""

import datetime
import importlib.metadata
import json
import os
import platform
import subprocess
import sys

import hashlib
import shutil

import jax

import plugins
from train_lib import writers

PACKAGES = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "grain",
            "tensorflow-datasets", "ml-collections", "numpy", "array-record")
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DIFF_LIMIT = 1_000_000  # characters of `git diff HEAD` kept in capsule.json
# JAX settings that can change the numbers a run computes.
JAX_FLAGS = ("jax_enable_x64", "jax_default_matmul_precision", "jax_default_prng_impl",
             "jax_threefry_partitionable", "jax_numpy_dtype_promotion", "jax_platforms",
             "jax_debug_nans", "jax_disable_jit")
ENV_PREFIXES = ("XLA_", "JAX_", "LIBTPU_", "CUDA_VISIBLE_DEVICES", "NCCL_")


def _git(*args):
  try:
    out = subprocess.run(["git", "-C", REPO, *args], capture_output=True, text=True,
                         timeout=10)
  except (OSError, subprocess.TimeoutExpired):
    return None
  return out.stdout.strip() if out.returncode == 0 else None


def _version(name):
  try:
    return importlib.metadata.version(name)
  except importlib.metadata.PackageNotFoundError:
    return None


def _diff() -> dict:
  diff = _git("diff", "HEAD")
  status = _git("status", "--porcelain") or ""
  out = {"git_diff": diff, "git_untracked": [line[3:] for line in status.splitlines()
                                             if line.startswith("??")]}
  if diff is not None and len(diff) > DIFF_LIMIT:
    out["git_diff"] = diff[:DIFF_LIMIT]
    out["git_diff_note"] = (f"truncated to the first {DIFF_LIMIT:,} of {len(diff):,} "
                            "characters")
  return out


def _jax_flags() -> dict:
  flags = {}
  for name in JAX_FLAGS:
    try:
      flags[name] = getattr(jax.config, name)
    except AttributeError:  # not a flag in this JAX version
      continue
  return {k: v if isinstance(v, (bool, int, float, str, type(None))) else str(v)
          for k, v in flags.items()}


def topology() -> list:
  """One entry per device of the run: id, kind, process, and coords where the platform has them."""
  out = []
  for d in jax.devices():
    entry = {"id": d.id, "kind": d.device_kind, "platform": d.platform,
             "process_index": d.process_index}
    for attr in ("coords", "core_on_chip", "slice_index"):
      value = getattr(d, attr, None)
      if value is not None:
        entry[attr] = list(value) if isinstance(value, (tuple, list)) else value
    out.append(entry)
  return out


def describe(config) -> dict:
  status = _git("status", "--porcelain")
  devices = jax.devices()
  return {
      "created": datetime.datetime.now(datetime.timezone.utc).isoformat(),
      "git_commit": _git("rev-parse", "HEAD"),
      "git_dirty": bool(status) if status is not None else None,
      **_diff(),
      "command": sys.argv,
      "python": platform.python_version(),
      "packages": {name: _version(name) for name in PACKAGES},
      "platform": jax.default_backend(),
      "xla_flags": os.environ.get("XLA_FLAGS", ""),
      "jax_flags": _jax_flags(),
      "env": {k: v for k, v in sorted(os.environ.items()) if k.startswith(ENV_PREFIXES)},
      "devices": {"count": jax.device_count(), "local_count": jax.local_device_count(),
                  "kind": devices[0].device_kind, "process_count": jax.process_count(),
                  "topology": topology()},
      "host": platform.node(),
      "seed": config.seed,
      "data_seed": config.seed,  # the input pipeline's order and augmentation derive from it
  }


def copy_user_code(workdir: str) -> list:
  """Copies every loaded module of user code into workdir/code/; one entry per module:
  the name it was loaded by, its path, sha256 and the copy (relative to the workdir)."""
  entries, folder = [], os.path.join(workdir, "code")
  for name, info in sorted(plugins.USER_CODE.items()):
    base = os.path.basename(info["path"]) if name.endswith(".py") or os.sep in name \
        else f"{name}.py"
    copy = os.path.join(folder, base)
    if os.path.exists(copy) and _sha256(copy) != info["sha256"]:   # another file, same name
      copy = os.path.join(folder, f"{info['sha256'][:12]}-{base}")
    os.makedirs(folder, exist_ok=True)
    shutil.copyfile(info["path"], copy + ".tmp")
    if _sha256(copy + ".tmp") != info["sha256"]:
      os.remove(copy + ".tmp")
      writers.console(f"warning: {info['path']} changed since the run loaded it; not copied")
      continue
    os.replace(copy + ".tmp", copy)
    entries.append({"name": name, "path": info["path"], "sha256": info["sha256"],
                    "copy": os.path.relpath(copy, workdir)})
  return entries


def _sha256(path: str) -> str:
  with open(path, "rb") as f:
    return hashlib.sha256(f.read()).hexdigest()


def write(workdir: str, config):
  if jax.process_index() != 0:
    return
  writers.write_atomic(os.path.join(workdir, "config.json"),
                       config.to_json_best_effort(indent=2, sort_keys=True) + "\n")
  writers.write_json(os.path.join(workdir, "capsule.json"),
                     {**describe(config), "user_code": copy_user_code(workdir)}, indent=2)


def log_launch(workdir: str, config, outcome: str):
  """Appends the launch to workdir/launches.jsonl (process 0; a workdir that is no directory
  is left alone)."""
  path = os.path.join(os.path.abspath(os.path.expanduser(workdir)), "launches.jsonl")
  if jax.process_index() != 0 or not os.path.isdir(os.path.dirname(path)):
    return
  line = json.dumps({"time": datetime.datetime.now().isoformat(timespec="seconds"),
                     "command": sys.argv, "outcome": outcome,
                     "config": json.loads(config.to_json_best_effort())})
  with open(path, "a") as f:
    f.write(line + "\n")
    f.flush()
    os.fsync(f.fileno())


class Record:
  """A loop watcher that writes the record once the run's checks have passed."""

  def __init__(self, config):
    self.config = config

  def start(self, setup, workdir: str):
    write(workdir, self.config)
    log_launch(workdir, self.config, "started")

  def __call__(self, step, split, metrics) -> bool:
    return False

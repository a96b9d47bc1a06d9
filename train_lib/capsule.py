"""The reproducibility record of a run: config.json and capsule.json in the workdir.

    capsule.write(workdir, config)
"""

import datetime
import importlib.metadata
import json
import os
import platform
import subprocess
import sys

import jax

PACKAGES = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "grain",
            "tensorflow-datasets", "ml-collections", "numpy", "array-record")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


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


def describe(config) -> dict:
  status = _git("status", "--porcelain")
  devices = jax.devices()
  return {
      "created": datetime.datetime.now(datetime.timezone.utc).isoformat(),
      "git_commit": _git("rev-parse", "HEAD"),
      "git_dirty": bool(status) if status is not None else None,
      "command": sys.argv,
      "python": platform.python_version(),
      "packages": {name: _version(name) for name in PACKAGES},
      "platform": jax.default_backend(),
      "devices": {"count": jax.device_count(), "local_count": jax.local_device_count(),
                  "kind": devices[0].device_kind, "process_count": jax.process_count()},
      "host": platform.node(),
      "seed": config.seed,
  }


def write(workdir: str, config):
  if jax.process_index() != 0:
    return
  with open(os.path.join(workdir, "config.json"), "w") as f:
    f.write(config.to_json_best_effort(indent=2, sort_keys=True) + "\n")
  with open(os.path.join(workdir, "capsule.json"), "w") as f:
    json.dump(describe(config), f, indent=2)
    f.write("\n")

"""Running main.py as a user would, in a subprocess."""

import json
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# The suite's tiny models spend most of their CPU time in XLA's LLVM compilation (threefry's
# hash, inlined at every random draw, is large). LLVM's optimisation level 1 compiles a
# launch ~25% faster than the default and runs the steps about as fast (level 0 compiles
# faster still but runs a scan 4x slower). Every test process, in-process runs and main.py
# alike, uses it.
TEST_XLA_FLAGS = "--xla_backend_optimization_level=1"


def xla_flags(devices: int) -> str:
  return f"--xla_force_host_platform_device_count={devices} {TEST_XLA_FLAGS}"


def main_env(devices: int = 1) -> dict:
  return dict(os.environ, JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1",
              XLA_FLAGS=xla_flags(devices))


def run_main(*args, devices: int = 1, timeout: int = 600, check: bool = True):
  proc = subprocess.run([sys.executable, os.path.join(REPO, "main.py"), *args], cwd=REPO,
                        env=main_env(devices), capture_output=True, text=True, timeout=timeout)
  if check and proc.returncode != 0:
    raise AssertionError(f"main.py {' '.join(args)} exited {proc.returncode}:\n"
                         f"{proc.stderr[-3000:]}")
  return proc


def last_json(stdout: str) -> dict:
  return json.loads(stdout.strip().splitlines()[-1])


def read_metrics(workdir: str):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


def without_timings(record: dict) -> dict:
  """A metrics line less its wall-clock readings, which differ between identical runs."""
  return {k: v for k, v in record.items()
          if not (k.endswith("_per_sec") or k.startswith("time/") or k in ("data_wait_fraction", "mfu"))}

"""Multi-process runs on JAX's own runtime: jax.distributed, set up before any device use.

    distributed.initialize(coordinator_address, num_processes, process_id)  # main.py does this
    distributed.preemption_synced()   # True when SIGTERM is JAX's: all processes stop together

Explicit (any launcher): coordinator HOST:PORT (process 0's), process count and id, as flags
or as JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID. Detected: srun with more
than one task (SLURM), Open MPI's mpirun, a Cloud TPU VM; JAX reads the rest from there.
Anything else, or --num_processes=1, is a single-process run over all the local devices.
"""

import glob
import importlib.util
import os

import jax

from train_lib.errors import UserError


def plan(coordinator_address: str = "", num_processes=None, process_id=None,
         env=os.environ):
  """Keyword arguments for jax.distributed.initialize, or None for one process."""
  address = coordinator_address or env.get("JAX_COORDINATOR_ADDRESS", "")
  count = _number(num_processes, env, "JAX_NUM_PROCESSES", "num_processes")
  index = _number(process_id, env, "JAX_PROCESS_ID", "process_id")
  if count == 1 and not index and not coordinator_address:
    return None  # on its own, also under a launcher that started several processes
  if count is not None or index is not None:
    if count is None or index is None:
      raise UserError("--num_processes and --process_id go together; pass both (and "
                      "--coordinator_address=HOST:PORT of process 0)")
    if not address:
      raise UserError(f"--num_processes={count} needs --coordinator_address=HOST:PORT "
                      "(process 0's host and a free port)")
    if count < 1 or not 0 <= index < count:
      raise UserError(f"--process_id={index} must be in [0, {count}) and "
                      f"--num_processes={count} positive")
    return {"coordinator_address": address, "num_processes": count, "process_id": index}
  cluster = detect_cluster(env)
  if address and cluster is None:
    raise UserError(f"--coordinator_address={address} needs --num_processes and "
                    "--process_id outside SLURM, Open MPI or a TPU VM")
  if address:
    return {"coordinator_address": address}
  return {} if cluster else None


def _number(value, env, name, flag):
  if value is not None:
    return value
  if env.get(name, "") == "":
    return None
  try:
    return int(env[name])
  except ValueError:
    raise UserError(f"{name}={env[name]!r} must be an integer (like --{flag})") from None


def detect_cluster(env=os.environ):
  """The launcher JAX will read the process layout from, or None."""
  tasks = env.get("SLURM_STEP_NUM_TASKS", env.get("SLURM_NTASKS", "1"))  # this srun's tasks
  if "SLURM_JOB_ID" in env and "SLURM_PROCID" in env and int(tasks) > 1:
    return "slurm"
  if "OMPI_MCA_orte_hnp_uri" in env and int(env.get("OMPI_COMM_WORLD_SIZE", 1)) > 1:
    return "openmpi"
  if on_tpu_vm():
    return "tpu"
  return None


def on_tpu_vm() -> bool:
  """A TPU VM: libtpu installed and TPU chips present (the check jax makes at import,
  done here with public means: jax's own flag for it is private)."""
  if importlib.util.find_spec("libtpu") is None:
    return False
  return bool(glob.glob("/dev/accel[0-9]*") or glob.glob("/dev/vfio/[0-9]*"))


def initialize(coordinator_address: str = "", num_processes=None, process_id=None,
               env=os.environ) -> bool:
  """Joins the processes of a multi-process run; False (and nothing done) for one."""
  kwargs = plan(coordinator_address, num_processes, process_id, env)
  if kwargs is None:
    return False
  try:
    jax.distributed.initialize(**kwargs)
  except ValueError as e:  # JAX could not complete the layout from the environment
    raise UserError(f"jax.distributed.initialize: {e}") from None
  return True


def preemption_synced() -> bool:
  """True in a multi-process run whose SIGTERM goes to JAX's preemption service: then
  multihost_utils.reached_preemption_sync_point picks the step every process saves."""
  # Several processes means jax.distributed is initialised; it starts the preemption
  # service unless jax_enable_preemption_service is off.
  return jax.process_count() > 1 and bool(jax.config.jax_enable_preemption_service)

"""Everything that turns (config, workdir) into a run.

    import train_lib
    result = train_lib.run("train", config, "runs/default")   # or "eval", "sample"

Errors a user can fix raise train_lib.UserError (exit code 2 from main.py).
"""

from train_lib import distributed  # noqa: F401
from train_lib.errors import Diverged, Preempted, UserError  # noqa: F401

MODES = ("train", "eval", "sample")


def enable_compilation_cache(path: str):
  """Compiled steps persist across restarts: a rerun skips XLA compilation."""
  import os
  import jax
  if path:
    jax.config.update("jax_compilation_cache_dir", os.path.expanduser(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


def run(mode: str, config, workdir: str) -> dict:
  from train_lib import loop
  enable_compilation_cache(config.train.compilation_cache)
  if mode == "train":
    return loop.train(config, workdir)
  if mode == "eval":
    return loop.evaluate(config, workdir)
  if mode == "sample":
    from train_lib import sample
    return sample.generate_from_workdir(config, workdir)
  raise UserError(f"--mode={mode} is unknown; use one of {MODES}")

"""Everything that turns (config, workdir) into a run.

    import train_lib
    result = train_lib.run("train", config, "runs/default")   # or "eval", "sample", "ablate",
    # "shardings", "sanity" (raises ChecksFailed, exit code 1, if a check fails), "lr_range"

Errors a user can fix raise train_lib.UserError (exit code 2 from main.py). A config
field that the run never reads is reported as a warning line (train_lib/config_reads.py).
"""

from train_lib import distributed  # noqa: F401
from train_lib.errors import ChecksFailed, Diverged, Preempted, UserError  # noqa: F401

MODES = ("train", "eval", "sample", "shardings", "ablate", "sanity", "lr_range")


def run(mode: str, config, workdir: str) -> dict:
  from train_lib import config_reads
  config = config_reads.track(config)
  result = _run(mode, config, workdir)
  config_reads.report(config, mode)  # unless reported already (train: after its first step)
  return result


def _run(mode: str, config, workdir: str) -> dict:
  from train_lib import loop, setup
  if mode == "ablate":
    from train_lib import ablate
    return ablate.run(config, workdir)
  if "variants" in config:
    raise UserError(f"this is an ablation config; run it with --mode=ablate, not {mode}")
  setup.enable_compilation_cache(config.train.compilation_cache)
  if mode == "train":
    return loop.train(config, workdir)
  if mode == "eval":
    return loop.evaluate(config, workdir)
  if mode == "sample":
    from train_lib import sample
    return sample.generate_from_workdir(config, workdir)
  if mode == "shardings":  # each array's shape, sharding and bytes per device; no training
    from train_lib import partitioning
    s = setup.build(config)
    print(partitioning.describe(s.abstract_state, s.state_sharding), flush=True)
    return {"mode": "shardings", "mesh": dict(s.mesh.shape),
            "bytes_per_device": partitioning.bytes_per_device(s.abstract_state,
                                                              s.state_sharding)}
  if mode == "sanity":
    from train_lib import sanity
    return sanity.run(config, workdir)
  if mode == "lr_range":
    from train_lib import lr_range
    return lr_range.run(config, workdir)
  raise UserError(f"--mode={mode} is unknown; use one of {MODES}")

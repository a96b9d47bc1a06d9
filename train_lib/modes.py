"""--mode: the one place where the core (train, eval) and the tools (train_lib/tools/) meet.

    result = modes.run("sanity", config, workdir)
"""

from train_lib import config_io, config_reads, loop, partitioning, setup
from train_lib.errors import UserError
from train_lib.tools import ablate, compile as compile_tool, lr_range, sample, sanity, tokenizer, train as train_with_tools

MODES = ("train", "eval", "sample", "shardings", "ablate", "sanity", "lr_range", "compile",
         "tokenizer")


def run(mode: str, config, workdir: str) -> dict:
  config_io.check_keys(config)   # a typo in a config file, as on the command line: exit 2
  config = config_reads.track(config)
  result = _run(mode, config, workdir)
  config_reads.report(config, mode)  # unless reported already (train: after its first step)
  return result


def _run(mode: str, config, workdir: str) -> dict:
  if mode == "ablate":
    return ablate.run(config, workdir)
  if "variants" in config:
    raise UserError(f"this is an ablation config; run it with --mode=ablate, not {mode}")
  if mode == "tokenizer":   # fit one on the train split; nothing is built on a device
    return tokenizer.run(config, workdir)
  if mode == "compile":   # ahead of time, for a TPU topology or the devices present
    return compile_tool.run(config, workdir)
  setup.enable_compilation_cache(config.train.compilation_cache)
  if mode == "train":
    return train_with_tools(config, workdir)
  if mode == "eval":
    return loop.evaluate(config, workdir)
  if mode == "sample":
    return sample.generate_from_workdir(config, workdir)
  if mode == "shardings":  # each array's shape, sharding and bytes per device; no training
    s = setup.build(config)
    print(partitioning.describe(s.abstract_state, s.state_sharding), flush=True)
    return {"mode": "shardings", "mesh": dict(s.mesh.shape),
            "bytes_per_device": partitioning.bytes_per_device(s.abstract_state,
                                                              s.state_sharding)}
  if mode == "sanity":
    return sanity.run(config, workdir)
  if mode == "lr_range":
    return lr_range.run(config, workdir)
  raise UserError(f"--mode={mode} is unknown; use one of {MODES}")

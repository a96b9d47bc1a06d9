"""Does --mode=compile's memory prediction hold? The compiled train step's per-device memory
(XLA's memory analysis, as `--config.compile.topology=local` reports it) against the peak
that the same executable really uses when it runs on this machine's devices.

    python bench/compile_memory.py                                   # one GPU: the rows below
    python bench/compile_memory.py --configs=gpt2_124m:synthetic --steps=5

For each config: compile the step ahead of time (train_lib/tools/compile.py), then create
the real state, feed real batches and run --steps steps with that same executable, and read
the device's peak_bytes_in_use. Nothing else is allocated on the device in between, so the
peak is the step's (and the state's creation, if that is larger). Prints a markdown table.
"""

import argparse
import importlib
import json
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

CONFIGS = ("gpt2_124m:synthetic", "gpt_1b3:synthetic")


def measure(spec: str, steps: int) -> list:
  # one process per config: peak_bytes_in_use cannot be reset
  code = (f"import sys; sys.path.insert(0, {os.path.dirname(os.path.dirname(os.path.abspath(__file__)))!r}); "
          f"import json; from bench.compile_memory import one; print(json.dumps(one({spec!r}, {steps})))")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
  if out.returncode:
    raise SystemExit(f"{spec}: {out.stderr[-2000:]}")
  return json.loads(out.stdout.strip().splitlines()[-1])


def one(spec: str, steps: int) -> list:
  import jax
  from train_lib import config_reads, state as state_lib
  from train_lib.tools import compile as compile_tool
  module, _, arg = spec.partition(":")
  config = config_reads.track(importlib.import_module(f"configs.{module}").get_config(
      arg or None))
  tgt = compile_tool.target("local", config)
  compiled = compile_tool.compile_steps(config, tgt.devices)
  predicted = compile_tool.memory(compiled["train"])
  s = compiled["setup"]
  state = state_lib.create(s.model, s.tx, s.task, s.dummy_batch, s.seed, s.state_sharding)
  for _ in range(steps):
    state, metrics = compiled["train"](state, s.data.next_train())
  jax.block_until_ready(metrics)
  stats = jax.devices()[0].memory_stats()
  if not stats:
    raise SystemExit(f"{jax.devices()[0].platform} reports no memory_stats: run this on a GPU")
  return [predicted["peak"], predicted["argument"], predicted["temp"],
          stats["peak_bytes_in_use"], stats["bytes_limit"]]


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--configs", default=",".join(CONFIGS))
  parser.add_argument("--steps", type=int, default=3)
  args = parser.parse_args()
  import jax
  from train_lib import writers
  rows = []
  for spec in args.configs.split(","):
    pred, argument, temp, peak, limit = measure(spec, args.steps)
    rows.append([spec, f"{argument / 2**30:.2f}", f"{temp / 2**30:.2f}", f"{pred / 2**30:.2f}",
                 f"{peak / 2**30:.2f}", f"{peak / pred:.3f}", f"{limit / 2**30:.1f}"])
    print(f"done {spec}", flush=True)
  print(f"device: {jax.devices()[0].device_kind}, jax {jax.__version__}")
  print(writers.table(["config", "args GiB", "temp GiB", "predicted peak GiB",
                       "measured peak GiB", "measured / predicted", "limit GiB"], rows,
                      markdown=True))


if __name__ == "__main__":
  main()

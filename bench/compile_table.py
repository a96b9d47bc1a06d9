"""Shipped configs compiled ahead of time for TPU topologies (--mode=compile): memory per
chip, fits or not, and the collectives. No TPU needed: libtpu compiles on this CPU host.

    JAX_PLATFORMS=cpu python bench/compile_table.py                 # the README's table
    JAX_PLATFORMS=cpu python bench/compile_table.py --only=gpt2_124m@v5e:2x2
    python bench/compile_table.py --json=compile_table.json

Each row is one `--mode=compile` of the shipped config as it is (its own mesh: gpt2_124m
data parallel, gpt_1b3 and llama2_7b FSDP over every device). Prints a markdown table.
"""

import argparse
import importlib
import json
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

ROWS = ("gpt2_124m@v5e:2x2", "gpt_1b3@v5e:4x4", "gpt_1b3@v5p:2x2x2",
        "llama2_7b@v5e:16x16", "llama2_7b@v5p:4x4x4")


def one(spec: str, workdir: str) -> dict:
  from train_lib import errors, modes
  name, topology = spec.split("@")
  module, _, arg = name.partition(":")
  config = importlib.import_module(f"configs.{module}").get_config(arg or None)
  config.compile.topology = topology
  try:
    return modes.run("compile", config, workdir)
  except errors.UserError as e:   # does not fit: compile.json holds the numbers
    if "does not fit" not in str(e):
      raise
    with open(os.path.join(workdir, "compile.json")) as f:
      return json.load(f)


def row(spec: str, r: dict) -> list:
  from train_lib.tools.compile import _gib
  train = r["memory_per_device"]["train"]
  comms = "; ".join(f"{k} {v['count']}x {v['bytes'] / 2**30:.2f} GiB"
                    for k, v in r["collectives"]["train"].items()) or "none"
  mesh = "x".join(f"{k}{v}" for k, v in r["mesh"].items() if v > 1) or "1 device"
  return [spec.split("@")[0], r["topology"], f"{r['devices']} x {r['device_kind']}", mesh,
          f"{r['parameters'] / 1e9:.2f}B", _gib(r["state_bytes_per_device"]),
          _gib(train["temp"]), _gib(r["peak_bytes"]), _gib(r["memory_limit_bytes"]),
          "yes" if r["fits"] else "NO", comms, f"{r['compile_s']['train']:.0f}"]


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--only", default="", help="comma-separated config@topology rows")
  parser.add_argument("--json", default="")
  args = parser.parse_args()
  from train_lib import writers
  specs = args.only.split(",") if args.only else ROWS
  results, rows = {}, []
  for spec in specs:
    with tempfile.TemporaryDirectory() as workdir:
      results[spec] = one(spec, workdir)
    rows.append(row(spec, results[spec]))
    print(f"done {spec}", flush=True)
  print(writers.table(["config", "topology", "devices", "mesh", "params", "state GiB/chip",
                       "temp GiB/chip", "peak GiB/chip", "HBM GiB/chip", "fits",
                       "train-step collectives (per step, per chip)", "compile s"], rows,
                      markdown=True))
  if args.json:
    with open(args.json, "w") as f:
      json.dump(results, f, indent=1)


if __name__ == "__main__":
  main()

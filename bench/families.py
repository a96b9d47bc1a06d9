"""The families table from finished training runs: parameters, held-out result, throughput.

    python bench/families.py runs/families/baseline/seed_0 runs/families/lstm/seed_0 ... \
        runs/vit runs/resnet50 --baseline=runs/families/baseline/seed_0

Each argument is a workdir that main.py trained. Parameters are counted from its config.json
(the model's abstract init, no device work); the result is the last held-out line of its
metrics.jsonl (loss, and accuracy or bits per byte where the task logs them); throughput
is the median of its train lines' steps/s and items/s, leaving out the first two log
intervals (compilation, warm-up). --baseline adds each run's throughput as a ratio to that
run's, measured on the same machine in the same session.
"""

import argparse
import json
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402

from bench import table  # noqa: E402
from train_lib import config_io, setup, state as state_lib  # noqa: E402


def read(workdir):
  config = config_io.from_json(os.path.join(workdir, "config.json"))
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    lines = [json.loads(line) for line in f if line.strip()]
  train = [l for l in lines if l.get("split") == "train" and "steps_per_sec" in l][2:]
  held = [l for l in lines if l.get("split") == config.data.eval_split and "loss" in l]
  s = setup.build(config)
  items = next((k for k in ("tokens_per_sec", "examples_per_sec") if train and k in train[0]),
               None)
  last = held[-1] if held else {}
  return {"workdir": workdir, "model": config.model.name, "data": config.data.name,
          "params": state_lib.num_params(s.abstract_state.params),
          "step": last.get("step"), "loss": last.get("loss"),
          "accuracy": last.get("accuracy"), "bpb": last.get("bits_per_byte"),
          "steps_per_sec": statistics.median(l["steps_per_sec"] for l in train) if train else None,
          "items_per_sec": statistics.median(l[items] for l in train) if items else None,
          "unit": "tok/s" if items == "tokens_per_sec" else "ex/s"}


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("workdirs", nargs="+")
  parser.add_argument("--baseline", default="")
  parser.add_argument("--json", default="")
  a = parser.parse_args()
  rows = [read(w) for w in a.workdirs]
  base = next((r for r in rows if a.baseline and os.path.samefile(r["workdir"], a.baseline)),
              None)
  opt = lambda k, fmt: (lambda r: "-" if r[k] is None else fmt.format(r[k]))  # noqa: E731
  print(f"{jax.devices()[0].device_kind}, jax {jax.__version__}")
  table.print_table([
      ("run", -36, lambda r: r["workdir"]), ("model", -12, lambda r: r["model"]),
      ("params", 12, lambda r: f"{r['params']:,}"), ("step", 6, opt("step", "{}")),
      ("held-out loss", 13, opt("loss", "{:.4f}")), ("accuracy", 8, opt("accuracy", "{:.4f}")),
      ("bits/byte", 9, opt("bpb", "{:.3f}")), ("steps/s", 8, opt("steps_per_sec", "{:.1f}")),
      ("items/s", 12, lambda r: "-" if r["items_per_sec"] is None
       else f"{r['items_per_sec']:,.0f} {r['unit']}"),
      ("vs baseline", 11, lambda r: "-" if not base or r["steps_per_sec"] is None
       else f"{r['steps_per_sec'] / base['steps_per_sec']:.2f}x")], rows)
  if a.json:
    with open(a.json, "w") as f:
      json.dump(rows, f, indent=1)


if __name__ == "__main__":
  main()

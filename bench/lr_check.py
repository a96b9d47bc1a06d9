"""Does --mode=lr_range suggest a learning rate that trains well? Sweep, then a grid of runs.

    python bench/lr_check.py --json=lr_check.json        # one GPU: the four configs below
    python bench/lr_check.py --configs=shakespeare_char --steps=shakespeare_char=500 \
        --grid=3e-4,1e-3,3e-3                            # one config, shorter runs
    python bench/lr_check.py --configs=digits_mlp:runlocal,shakespeare_char:runlocal \
        --steps=60 --grid=1e-3,1e-2                      # a CPU smoke run, about a minute

For each config, at full size unless its spec says otherwise (`name:runlocal`):
1. the range test (`--mode=lr_range` as shipped, seed 0): its suggestion, the learning rate
   of its smoothed minimum, and its reason;
2. real runs, one per learning rate of --grid and one at the suggestion, each with the
   same number of steps (--steps, default: the config's train.num_steps times --scale) and
   the config's own optimizer and schedule (warmup kept, at most a fifth of the steps),
   seeds 0..--seeds-1, scored by the held-out loss at the end (mean over seeds; a run that
   diverges scores infinity); the best of its five evaluations is shown beside it.
Prints a markdown table per config and a summary: the suggestion's ratio to the grid's best
learning rate and whether the run at the suggestion trains well: a held-out loss within
--tolerance (relative) of the grid's best, or, with 2 seeds or more, above it by less than
two standard errors of the difference (seed noise: the runs cannot be told apart). Exits 1
unless every suggestion trains well.

--source_dir sets data.source_dir (the Fashion-MNIST IDX files) for configs that read it;
--json writes everything, the range tests' curves included.

On one H200 (120 steps/s for shakespeare_char, ~12 s per compile; fashion_mnist_cnn 300
steps/s) the defaults take about 6-7 minutes: shakespeare_char 7 runs x 1,000 steps
(~25 s each), fashion_mnist_cnn 7 x 2,000 (~12 s), default and digits_mlp 7 x 1,500
(~5 s), and the four range tests. Each run prints its wall time, to scale --steps by.
"""

import argparse
import importlib
import json
import math
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402

from train_lib import loop, writers  # noqa: E402
from train_lib.errors import Diverged  # noqa: E402
from train_lib.tools import lr_range  # noqa: E402

CONFIGS = "shakespeare_char,fashion_mnist_cnn,default,digits_mlp"
STEPS = "shakespeare_char=1000,fashion_mnist_cnn=2000"   # the others: their own num_steps
GRID = "1e-4,3e-4,1e-3,3e-3,1e-2,3e-2"


def load(spec: str, args, seed: int = 0):
  """The config of a spec "name[:arg]", with the data locations and the seed set."""
  name, _, arg = spec.partition(":")
  config = importlib.import_module(f"configs.{name}").get_config(arg or None)
  config.seed = seed
  if args.tfds_dir:
    config.data.tfds_dir = args.tfds_dir
  if args.source_dir and config.data.name == "fashion_mnist":
    config.data.source_dir = args.source_dir
  return config


def per_config(value: str, spec: str):
  """A flag that is N for every config or spec=N pairs: this spec's N, else None."""
  for item in filter(None, value.split(",")):
    key, sep, n = item.rpartition("=")
    if not sep or key == spec:
      return int(n)
  return None


def steps_for(spec: str, args) -> int:
  """--steps: N for every config, or spec=N pairs; else train.num_steps x --scale."""
  steps = per_config(args.steps, spec)
  return steps or max(1, round(load(spec, args).train.num_steps * args.scale))


def standard_error(a: list, b: list) -> float:
  """Of the difference of two means over seeds (0 with fewer than 2 seeds or a diverged
  run: then only --tolerance decides)."""
  if min(len(a), len(b)) < 2 or not all(map(math.isfinite, a + b)):
    return 0.0
  return math.sqrt(statistics.variance(a) / len(a) + statistics.variance(b) / len(b))


def train(spec: str, args, lr: float, steps: int, seed: int, workdir: str) -> dict:
  """One real run: the held-out loss (inf if it diverged), accuracy and wall seconds."""
  config = load(spec, args, seed)
  config.optim.learning_rate = lr
  config.optim.warmup_steps = min(config.optim.warmup_steps, steps // 5)
  config.train.num_steps = steps
  config.train.log_every = max(1, steps // 5)
  config.train.eval_every = max(1, steps // 5)   # the best held-out loss of five evals too
  config.train.checkpoint_every = 0    # one checkpoint, at the end
  start = time.perf_counter()
  try:
    result = loop.train(config, workdir)
  except Diverged as e:
    writers.console(f"lr_check: {spec} at {lr:g} diverged: {e}")
    result = {"loss": math.inf}
  loss = result["loss"] if math.isfinite(result["loss"]) else math.inf
  held_out = [v for split, curve in writers.read_curves(workdir).items() if split != "train"
              for v in curve.values() if math.isfinite(v)]   # the five evals' losses
  return {"loss": loss, "best_loss": min([loss] + held_out),
          "accuracy": result.get("accuracy"), "seconds": time.perf_counter() - start}


def check(spec: str, args, grid, root: str) -> dict:
  steps, seeds = steps_for(spec, args), per_config(args.seeds, spec) or 1
  start = time.perf_counter()
  found = lr_range.run(load(spec, args), os.path.join(root, "lr_range"))
  sweep_seconds = time.perf_counter() - start
  suggested = found["suggested_learning_rate"]
  rows = []
  for lr in grid + [suggested]:
    kind = "suggested" if len(rows) == len(grid) else "grid"
    same = [r for r in rows if r["learning_rate"] == lr]
    if same:   # the suggestion is a grid point: that row is its run
      rows.append({**same[0], "kind": kind})
      continue
    runs = [train(spec, args, lr, steps, seed, os.path.join(root, f"{kind}_{lr:g}_{seed}"))
            for seed in range(seeds)]
    accuracies = [r["accuracy"] for r in runs if r["accuracy"] is not None]
    rows.append({"learning_rate": lr, "kind": kind,
                 "loss": sum(r["loss"] for r in runs) / len(runs),
                 "losses": [r["loss"] for r in runs],
                 "best_loss": sum(r["best_loss"] for r in runs) / len(runs),
                 "accuracy": sum(accuracies) / len(accuracies) if accuracies else None,
                 "seconds": sum(r["seconds"] for r in runs)})
  best = min(rows[:-1], key=lambda r: r["loss"])
  mine = rows[-1]
  bound = best["loss"] * (1 + args.tolerance)
  for r in rows:   # within --tolerance, or not told apart from the best over seeds
    r["best"] = r is best
    r["trains_well"] = r["loss"] <= bound or (
        r["loss"] - best["loss"] <= 2 * standard_error(r["losses"], best["losses"]))
  summary = {"config": spec, "steps": steps, "seeds": seeds, "suggested": suggested,
             "lowest_loss_learning_rate": found["lowest_loss_learning_rate"],
             "best_learning_rate": best["learning_rate"], "best_loss": best["loss"],
             "suggested_loss": mine["loss"],
             "ratio": max(suggested / best["learning_rate"], best["learning_rate"] / suggested),
             "trains_well": mine["trains_well"], "sweep_seconds": sweep_seconds}
  print_config(spec, args, found, rows, summary)
  curve = read_curve(os.path.join(root, "lr_range", "lr_range.csv"))
  return {"summary": summary, "lr_range": found, "rows": rows, "curve": curve}


def print_config(spec, args, found, rows, summary):
  fmt = lambda v, f: "-" if v is None else "diverged" if v == math.inf else format(v, f)
  print(f"\n### {spec}: {summary['steps']} steps per run, held-out loss at the end, mean of "
        f"{summary['seeds']} seed(s)\n\nrange test ({summary['sweep_seconds']:.0f} s): "
        f"{found['reason']}\n")
  table = []
  for r in rows:
    marks = ["suggested" if r["kind"] == "suggested" else "",
             "best" if r["best"] else "trains well" if r["trains_well"] else ""]
    table.append([f"{r['learning_rate']:g}", fmt(r["loss"], ".4f"), fmt(r["best_loss"], ".4f"),
                  " ".join(fmt(l, ".4f") for l in r["losses"]), fmt(r["accuracy"], ".3f"),
                  f"{r['seconds']:.0f}", ", ".join(filter(None, marks))])
  print(writers.table(["learning rate", "held-out loss", "best of 5 evals", "per seed",
                       "held-out accuracy", "wall s", ""], table, markdown=True))
  print(f"\nsuggested {summary['suggested']:g}: {summary['ratio']:.1f}x from the grid's best "
        f"({summary['best_learning_rate']:g}); its held-out loss "
        f"{fmt(summary['suggested_loss'], '.4f')} is "
        f"{'within' if summary['trains_well'] else 'not within'} {args.tolerance:.0%} (or 2 "
        f"standard errors over seeds) of the best, {fmt(summary['best_loss'], '.4f')}",
        flush=True)


def read_curve(path: str) -> dict:
  with open(path) as f:
    lines = [line.strip().split(",") for line in f][1:]
  return {key: [float(line[i]) for line in lines]
          for i, key in ((1, "learning_rate"), (2, "loss"), (3, "smoothed_loss"))}


def finite(value):
  """JSON has no infinity: a diverged run's loss is written as null."""
  if isinstance(value, dict):
    return {k: finite(v) for k, v in value.items()}
  if isinstance(value, list):
    return [finite(v) for v in value]
  return None if isinstance(value, float) and not math.isfinite(value) else value


def print_summary(summaries, args):
  print(f"\n### Summary: is the suggestion within {args.tolerance:.0%} (or 2 standard errors "
        "over seeds) of the grid's best held-out loss?\n")
  print(writers.table(
      ["config", "steps", "suggested", "lowest-loss lr", "grid's best lr", "ratio",
       "loss at suggested", "best loss", "trains well"],
      [[s["config"], s["steps"], f"{s['suggested']:.3g}",
        f"{s['lowest_loss_learning_rate']:.3g}", f"{s['best_learning_rate']:g}",
        f"{s['ratio']:.1f}x", f"{s['suggested_loss']:.4f}", f"{s['best_loss']:.4f}",
        "yes" if s["trains_well"] else "no"] for s in summaries], markdown=True), flush=True)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--configs", default=CONFIGS, help="comma-separated name[:arg] specs")
  parser.add_argument("--steps", default=STEPS,
                      help="steps per real run: N for all, or spec=N pairs (others: --scale)")
  parser.add_argument("--scale", type=float, default=1.0,
                      help="steps = the config's train.num_steps x this, unless --steps names it")
  parser.add_argument("--grid", default=GRID, help="comma-separated learning rates")
  parser.add_argument("--seeds", default="1",
                      help="seeds per learning rate: N for all, or spec=N pairs (others: 1)")
  parser.add_argument("--tolerance", type=float, default=0.1,
                      help="trains well: held-out loss <= the grid's best x (1 + this)")
  parser.add_argument("--tfds_dir", default="")
  parser.add_argument("--source_dir", default="",
                      help="data.source_dir for fashion_mnist configs (the IDX files)")
  parser.add_argument("--workdir", default="", help="keep the runs here (default: a temp dir)")
  parser.add_argument("--json", default="", help="write every result and curve here")
  args = parser.parse_args()
  grid = sorted(float(x) for x in args.grid.split(","))
  print(f"lr_check: {jax.devices()[0].device_kind}, jax {jax.__version__}; grid "
        f"{', '.join(f'{lr:g}' for lr in grid)}", flush=True)
  start = time.perf_counter()
  results = []
  with tempfile.TemporaryDirectory() as tmp:
    for spec in args.configs.split(","):
      root = os.path.join(args.workdir or tmp, spec.replace(":", "_").replace("=", "_"))
      results.append(check(spec, args, grid, root))
      if args.json:   # after every config: a call cut short keeps what it measured
        writers.write_json(args.json, finite({"args": vars(args), "jax": jax.__version__,
                                              "device": jax.devices()[0].device_kind,
                                              "configs": results}), indent=1)
  summaries = [r["summary"] for r in results]
  print_summary(summaries, args)
  print(f"\nlr_check: {time.perf_counter() - start:.0f} s in all", flush=True)
  sys.exit(0 if all(s["trains_well"] for s in summaries) else 1)


if __name__ == "__main__":
  main()

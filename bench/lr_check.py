"""Does --mode=lr_range suggest a learning rate that trains well? Sweep, then a grid of runs.

    python bench/lr_check.py                                  # digits_mlp and shakespeare_char
    python bench/lr_check.py --configs=digits_mlp:runlocal --steps=300 --seeds=1 \
        --grid=1e-4,1e-3,1e-2,1e-1

For each config: the range test's suggestion (seed 0); then short real runs (the config's
own schedule, `--steps` steps, seeds 0..--seeds-1) per learning rate of the grid, scored by
the held-out loss at the end, averaged over seeds. A learning rate "trains well" when its
loss is within --tolerance (relative) of the grid's best. Prints a markdown table per
config and how far the suggestion lies from the best and from the nearest that trains well;
exits 1 unless each suggestion is within a factor of 10 of one that trains well.
"""

import argparse
import importlib
import math
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from train_lib import loop  # noqa: E402
from train_lib.tools import lr_range

GRID = "1e-4,3e-4,1e-3,3e-3,1e-2,3e-2,1e-1"


def load(spec: str):
  name, _, arg = spec.partition(":")
  return importlib.import_module(f"configs.{name}").get_config(arg or None)


def check(spec: str, steps: int, grid, seeds: int, tolerance: float, tfds_dir: str) -> bool:
  with tempfile.TemporaryDirectory() as tmp:
    config = load(spec)
    config.data.tfds_dir = tfds_dir
    suggested = lr_range.run(config, os.path.join(tmp, "lr_range"))["suggested_learning_rate"]
    rows = []
    for lr in grid:
      runs = []
      for seed in range(seeds):
        config = load(spec)
        config.data.tfds_dir = tfds_dir
        config.seed = seed
        config.optim.learning_rate = lr
        config.train.num_steps = steps
        config.train.log_every = steps
        config.train.eval_every = 0
        config.train.checkpoint_every = 0
        runs.append(loop.train(config, os.path.join(tmp, f"lr_{lr:g}_{seed}")))
      losses = [r["loss"] if math.isfinite(r["loss"]) else math.inf for r in runs]
      rows.append((lr, sum(losses) / seeds, losses, sum(r["accuracy"] for r in runs) / seeds))
  best_lr, best = min(rows, key=lambda r: r[1])[:2]
  good = [lr for lr, loss, _, _ in rows if loss <= best * (1 + tolerance)]
  ratio = lambda lr: max(suggested / lr, lr / suggested)
  nearest = min(good, key=ratio)
  print(f"\n{spec}: {steps} steps per run, held-out loss at the end, mean of {seeds} "
        f"seed(s); suggested learning rate {suggested:g}\n")
  print("| learning rate | held-out loss | per seed | held-out accuracy | |")
  print("| --- | --- | --- | --- | --- |")
  for lr, loss, losses, accuracy in rows:
    mark = "best" if lr == best_lr else "trains well" if lr in good else ""
    print(f"| {lr:g} | {loss:.4f} | {' '.join(f'{l:.4f}' for l in losses)} | "
          f"{accuracy:.3f} | {mark} |")
  print(f"\nsuggested {suggested:g}: {ratio(best_lr):.1f}x from the best ({best_lr:g}), "
        f"{ratio(nearest):.1f}x from {nearest:g}, which trains well (held-out loss within "
        f"{tolerance:.0%} of the best)", flush=True)
  return ratio(nearest) <= 10


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--configs", default="digits_mlp:runlocal,shakespeare_char:runlocal")
  parser.add_argument("--steps", type=int, default=200)
  parser.add_argument("--grid", default=GRID)
  parser.add_argument("--seeds", type=int, default=3)
  parser.add_argument("--tolerance", type=float, default=0.1)
  parser.add_argument("--tfds_dir", default="")
  args = parser.parse_args()
  grid = [float(x) for x in args.grid.split(",")]
  ok = [check(spec, args.steps, grid, args.seeds, args.tolerance, args.tfds_dir)
        for spec in args.configs.split(",")]
  sys.exit(0 if all(ok) else 1)


if __name__ == "__main__":
  main()

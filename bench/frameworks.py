"""Trains every training framework's config in full and prints one table: the result each
reports, its speed and its wall time. The Fashion-MNIST classifier that FID-FMNIST reads
is trained first (configs/fashion_mnist_cnn.py), and its workdir is named to the DDPM's
and the DCGAN's fid evaluator; both then write samples (--mode=sample).

    python bench/frameworks.py --workdir=/tmp/fw [--only=mlm,simclr,ddpm,dcgan] \\
        [--json=out.json] [-- --config.data.source_dir=DIR ...]   # passed to every run

Run on one GPU; each run is a `main.py` subprocess, as a user would launch it.
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from bench import table  # noqa: E402

RUNS = {  # name: (config, result keys shown), in the order they run
    "classifier": ("fashion_mnist_cnn", ("accuracy", "loss")),
    "mlm": ("shakespeare_mlm", ("loss", "accuracy")),
    "dcgan": ("fashion_mnist_dcgan", ("fid/fid_fmnist", "fid/train_vs_test",
                                      "fid/noise_vs_test", "g_loss")),
    "simclr": ("fashion_mnist_simclr", ("probe/accuracy", "probe/pixels_accuracy",
                                        "probe/init_accuracy", "loss")),
    "ddpm": ("fashion_mnist_ddpm", ("fid/fid_fmnist", "fid/train_vs_test",
                                    "fid/noise_vs_test", "loss")),
}


def main_py(args, log, env=None):
  """main.py with `args` (and `env` added to the environment); its result and wall time."""
  t = time.perf_counter()
  proc = subprocess.run([sys.executable, os.path.join(REPO, "main.py"), *args], cwd=REPO,
                        capture_output=True, text=True, env={**os.environ, **(env or {})})
  with open(log, "a") as f:
    f.write(f"$ main.py {' '.join(args)}\n{proc.stderr}\n{proc.stdout}\n")
  if proc.returncode:
    raise RuntimeError(f"main.py {' '.join(args)} exited {proc.returncode}: "
                       f"{proc.stderr.strip().splitlines()[-1:]}")
  return json.loads(proc.stdout.strip().splitlines()[-1]), time.perf_counter() - t


def speed(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    lines = [json.loads(l) for l in f]
  rates = [r[k] for r in lines if r["split"] == "train" for k in r if k.endswith("_per_sec")
           and k != "steps_per_sec"]
  steps = [r["steps_per_sec"] for r in lines if "steps_per_sec" in r]
  unit = next(k for r in lines for k in r if k.endswith("_per_sec") and k != "steps_per_sec")
  return statistics.median(steps[1:] or steps), statistics.median(rates[1:] or rates), unit


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--only", default=",".join(RUNS))
  parser.add_argument("--json", default="")
  parser.add_argument("extra", nargs="*", help="overrides passed to every main.py run")
  a = parser.parse_args()
  os.makedirs(a.workdir, exist_ok=True)
  log = os.path.join(a.workdir, "log.txt")
  wanted = a.only.split(",")
  classifier = os.path.join(a.workdir, "classifier")
  rows, records = [], {}
  for name in [n for n in RUNS if n in wanted or (n == "classifier" and
                                                   {"ddpm", "dcgan"} & set(wanted))]:
    config, keys = RUNS[name]
    workdir = os.path.join(a.workdir, name)
    args = [f"--config=configs/{config}.py", f"--workdir={workdir}", *a.extra]
    if name in ("ddpm", "dcgan"):
      args.append(f"--config.evals.fid.classifier={classifier}")
    try:
      result, wall = main_py(args, log)
      sps, rate, unit = speed(workdir)
      sample = None
      if name in ("ddpm", "dcgan"):
        sample, _ = main_py([*args, "--mode=sample"], log)
        if a.json:   # the grid beside the record
          shutil.copy(os.path.join(workdir, "plots", "samples.png"),
                      os.path.join(os.path.dirname(os.path.abspath(a.json)),
                                   f"samples_{name}.png"))
      records[name] = {"config": config, "result": result, "wall_s": wall,
                       "steps_per_sec": sps, unit: rate, "sample": sample}
      shown = ", ".join(f"{k} {result[k]:.4g}" for k in keys if k in result)
      rows.append({"run": name, "config": config, "result": shown, "sps": sps,
                   "rate": f"{rate:,.0f} {unit[:-8]}/s", "wall": wall})
    except Exception as e:  # one failed run is a row, not the end of the table
      rows.append({"run": name, "config": config, "error": table.error(e)})
      records[name] = {"config": config, "error": str(e)}
    if a.json:  # after every run: a long table that is cut short keeps what it had
      with open(a.json, "w") as f:
        json.dump(records, f, indent=1)
  table.print_table([("run", -12, lambda r: r["run"]), ("config", -24, lambda r: r["config"]),
                     ("steps/s", 9, lambda r: f"{r['sps']:.1f}"),
                     ("throughput", 20, lambda r: r["rate"]),
                     ("wall s", 8, lambda r: f"{r['wall']:.0f}"),
                     ("  result (held-out)", -90, lambda r: "  " + r["result"])], rows,
                    label_columns=2)


if __name__ == "__main__":
  main()

"""dtype=fp8 against bfloat16: step throughput on GPT-2 124M and the 1.3B GPT, and the loss
curve over Shakespeare at equal settings (issue 19 item 5).

    python bench/fp8.py --part=speed --json=/tmp/fp8_speed.json          # one GPU, ~4 min
    python bench/fp8.py --part=curve --dtypes=bfloat16 --json=/tmp/c1.json   # ~5 min each
    python bench/fp8.py --part=curve --dtypes=fp8 --json=/tmp/c2.json

speed: bench/train_step.py's measurement (one device-resident batch, windows of steps with
one synchronisation each) of configs/gpt2_124m.py:synthetic and configs/gpt_1b3.py:synthetic
in each dtype, in this order in one process; the ratio is fp8's tokens/s over bf16's.
curve: `main.py --config=configs/gpt2_124m.py` on the embedded Shakespeare bytes for
--steps steps at batch --batch x 1024 (one micro-batch), warm-up 100 and the config's cosine
decay, seed 0, the same in both dtypes; reports the mean train loss of the last 100 steps and
the held-out loss at the end. Goal: fp8 within 1% of bf16 at the end.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench import table  # noqa: E402
from train_lib import writers  # noqa: E402

CONFIGS = {"gpt2_124m": "configs/gpt2_124m.py", "gpt_1b3": "configs/gpt_1b3.py"}


def speed(args, rows, keep):
  import importlib
  from bench import train_step
  for name in args.models.split(","):
    for dtype in args.dtypes.split(","):
      config = importlib.import_module(f"configs.{name}").get_config("synthetic=True")
      config.dtype = dtype
      try:
        r = train_step.bench_one(config, args.steps_timed, 2)
        row = {"model": name, "dtype": dtype, "tokens_per_sec": r["tokens_per_sec"],
               "step_ms": r["step_ms"], "compile_s": r["compile_s"], "loss": r["loss"]}
      except Exception as e:   # out of memory, say: report and go on
        row = {"model": name, "dtype": dtype, "error": f"{type(e).__name__}: {str(e)[:300]}"}
      keep(row)
  table = []
  for name in args.models.split(","):
    got = {r["dtype"]: r for r in rows if r["model"] == name and "tokens_per_sec" in r}
    ratio = (got["fp8"]["tokens_per_sec"] / got["bfloat16"]["tokens_per_sec"]
             if {"fp8", "bfloat16"} <= set(got) else None)
    table.append([name] + [f"{got[d]['tokens_per_sec']:,.0f}" if d in got else "-"
                           for d in ("bfloat16", "fp8")] + [f"{ratio:.2f}x" if ratio else "-"])
  print(writers.table(["model", "bf16 tokens/s", "fp8 tokens/s", "fp8 / bf16"], table,
                      markdown=True))


def curve(args, rows, keep):
  for dtype in args.dtypes.split(","):
    with tempfile.TemporaryDirectory() as workdir:
      proc = subprocess.run(
          [sys.executable, os.path.join(ROOT, "main.py"), f"--config={CONFIGS['gpt2_124m']}",
           f"--workdir={workdir}", f"--config.dtype={dtype}", "--config.seed=0",
           f"--config.train.num_steps={args.steps}", f"--config.data.batch_size={args.batch}",
           "--config.optim.grad_accum_steps=1", "--config.optim.warmup_steps=100",
           "--config.train.log_every=10", f"--config.train.eval_every={args.steps}",
           "--config.train.checkpoint_every=0"], cwd=ROOT, capture_output=True, text=True)
      if proc.returncode:
        keep({"dtype": dtype, "error": table.child_error(proc.stderr)})
        continue
      lines = [json.loads(x) for x in open(os.path.join(workdir, "metrics.jsonl"))]
    train = [r for r in lines if r["split"] == "train" and "loss" in r]
    tail = [r["loss"] for r in train if r["step"] > args.steps - 100]
    keep({"dtype": dtype, "steps": args.steps, "batch": args.batch,
          "last_100_train_loss": sum(tail) / len(tail),
          "held_out_loss": json.loads(proc.stdout.strip().splitlines()[-1])["loss"],
          "curve": [(r["step"], r["loss"]) for r in train]})


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--part", choices=("speed", "curve"), default="speed")
  parser.add_argument("--models", default="gpt2_124m,gpt_1b3")
  parser.add_argument("--dtypes", default="bfloat16,fp8")
  parser.add_argument("--steps_timed", type=int, default=10)
  parser.add_argument("--steps", type=int, default=2000)
  parser.add_argument("--batch", type=int, default=64)
  parser.add_argument("--json", default="")
  args = parser.parse_args()
  import jax
  rows = []

  def keep(row):   # the JSON after every row: a call cut short keeps what it measured
    rows.append(row)
    print(json.dumps({k: v for k, v in row.items() if k != "curve"}), flush=True)
    if args.json:
      writers.write_json(args.json, {"device": jax.devices()[0].device_kind,
                                     "jax": jax.__version__, "part": args.part,
                                     "rows": rows}, indent=1)

  (speed if args.part == "speed" else curve)(args, rows, keep)


if __name__ == "__main__":
  main()

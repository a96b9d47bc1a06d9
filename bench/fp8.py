"""dtype=fp8 against bfloat16: step throughput on GPT-2 124M and the 1.3B GPT, and the loss
curve over Shakespeare at equal settings (issue 19 item 5).

    python bench/fp8.py --part=speed --json=/tmp/fp8_speed.json          # one GPU, ~4 min
    python bench/fp8.py --part=curve --dtypes=bfloat16 --json=/tmp/c1.json   # ~5 min each
    python bench/fp8.py --part=curve --dtypes=fp8 --json=/tmp/c2.json

speed: bench/train_step.py's measurement (one device-resident batch, windows of steps with
one synchronisation each) of configs/gpt2_124m.py:synthetic and configs/gpt_1b3.py:synthetic
in each dtype, in this order in one process; the ratios are each dtype's tokens/s over bf16's.
--dtypes may name qwix_fp8: bf16 with qwix's fp8 rules on the same matmuls (current scaling,
no state; needs `pip install qwix`), against flax's delayed scaling (dtype=fp8).
curve: `main.py --config=configs/gpt2_124m.py` on the embedded Shakespeare bytes for
--steps steps at batch --batch x 1024 (one micro-batch), warm-up 100 and the config's cosine
decay, seed 0, the same in both dtypes; reports the mean train loss of the last 100 steps and
the held-out loss at the end. Goal: fp8 within 1% of bf16 at the end.
"""

import argparse
import ast
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


QWIX = "qwix_fp8"   # bf16 compute; qwix's fp8 (e4m3, e5m2 gradients, current scaling)


def qwix_fp8(model):
  """The model with qwix intercepting the attention and MLP matmuls (the head stays bf16),
  as flax's ops do for dtype=fp8; qwix scales each tensor by its own amax at every call."""
  import jax.numpy as jnp
  import qwix
  rule = qwix.QtRule(module_path=r".*(attn|mlp).*", weight_qtype=jnp.float8_e4m3fn,
                     act_qtype=jnp.float8_e4m3fn, bwd_qtype=jnp.float8_e5m2)
  return qwix.quantize_model(model, qwix.QtProvider([rule]), methods=("__call__", "fused_nll"))


def literal(text: str):
  """An --override value: a Python literal (3, 1e-3, True, (1, 2)) or else the string."""
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return text


def speed(args, rows, keep):
  import importlib
  from bench import train_step
  dtypes = args.dtypes.split(",")
  overrides = {k: literal(v) for k, v in (o.split("=", 1) for o in args.override)}
  for name in args.models.split(","):
    for dtype in dtypes:
      config = importlib.import_module(f"configs.{name}").get_config("synthetic=True")
      config.update_from_flattened_dict(overrides)
      config.dtype = "bfloat16" if dtype == QWIX else dtype
      try:
        r = train_step.bench_one(config, args.steps_timed, 2,
                                 wrap=qwix_fp8 if dtype == QWIX else None)
        row = {"model": name, "dtype": dtype, "tokens_per_sec": r["tokens_per_sec"],
               "step_ms": r["step_ms"], "compile_s": r["compile_s"], "loss": r["loss"]}
      except Exception as e:   # out of memory, say: report and go on
        row = {"model": name, "dtype": dtype, "error": f"{type(e).__name__}: {str(e)[:300]}"}
      keep(row)
  cells = []
  for name in args.models.split(","):
    got = {r["dtype"]: r for r in rows if r["model"] == name and "tokens_per_sec" in r}
    base = got.get("bfloat16", {}).get("tokens_per_sec")
    cells.append([name] + [f"{got[d]['tokens_per_sec']:,.0f}" if d in got else "-"
                           for d in dtypes] +
                 [f"{got[d]['tokens_per_sec'] / base:.2f}x" if d in got and base else "-"
                  for d in dtypes if d != "bfloat16"])
  print(writers.table(["model"] + [f"{d} tokens/s" for d in dtypes] +
                      [f"{d} / bf16" for d in dtypes if d != "bfloat16"], cells, markdown=True))


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
  parser.add_argument("--override", action="append", default=[],
                      help="KEY=VALUE on every config (speed), e.g. model.num_layers=2")
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

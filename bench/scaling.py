"""Multi-device scaling: the same model on 1 and on N devices in one invocation.

    python bench/scaling.py --config=configs/gpt2_124m.py:synthetic --per_device_batch=48
    python bench/scaling.py --config=configs/gpt_1b3.py:synthetic --mesh=fsdp --per_device_batch=16

Each row keeps the per-device micro-batch fixed (global batch = per_device_batch x devices,
one micro-batch per step) and splits the devices over the --mesh axis (data: replicated
state; fsdp: sharded parameters and optimizer state). Timing as in bench/train_step.py.
Scaling efficiency = tokens/s on N / (N x tokens/s on 1); MFU is against N times the bf16
matmul peak measured on one device in the same run.
"""

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402

from bench import table  # noqa: E402
from bench.train_step import apply_overrides, bench_one, load_config, matmul_peak_tflops  # noqa: E402


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--config", default="configs/gpt2_124m.py:synthetic")
  parser.add_argument("--mesh", default="data", choices=("data", "fsdp"))
  parser.add_argument("--per_device_batch", type=int, default=32)
  parser.add_argument("--devices", default="", help="device counts, e.g. 1,2 (default 1,N)")
  parser.add_argument("--overrides", default="", help="key=value,... applied to the config")
  parser.add_argument("--steps", type=int, default=20)
  parser.add_argument("--warmup", type=int, default=5)
  parser.add_argument("--json", default="")
  args = parser.parse_args()
  counts = [int(c) for c in args.devices.split(",")] if args.devices else sorted(
      {1, jax.device_count()})
  peak = matmul_peak_tflops(8192 if jax.default_backend() != "cpu" else 1024)
  rows = []
  for n in counts:
    config = load_config(args.config)
    apply_overrides(config, args.overrides)
    config.mesh.update(data=1, fsdp=1, tensor=1)
    config.mesh[args.mesh] = n
    config.data.batch_size = args.per_device_batch * n
    config.optim.grad_accum_steps = 1
    r = bench_one(config, args.steps, args.warmup, devices=jax.devices()[:n])
    r.update(devices=n, mesh=f"{args.mesh}={n}",
             mfu=r["tokens_per_sec"] * r["flops_per_token"] / (n * peak * 1e12))
    rows.append(r)
    print(json.dumps(r), flush=True)
  base = rows[0]["tokens_per_sec"] / rows[0]["devices"]
  dev = jax.devices()[0]
  print(f"\n{args.config} on {dev.device_kind}, jax {jax.__version__}; {rows[0]['params']:,} "
        f"parameters; per-device micro-batch {args.per_device_batch}; bf16 matmul peak "
        f"measured {peak:.0f} TFLOP/s per device")
  table.print_table([
      ("devices", 8, lambda r: r["devices"]), (" mesh", -9, lambda r: f" {r['mesh']}"),
      ("step ms", 9, lambda r: f"{r['step_ms']:.1f}"),
      ("tokens/s", 12, lambda r: f"{r['tokens_per_sec']:,.0f}"),
      ("MFU", 7, lambda r: f"{r['mfu']:.1%}"),
      ("scaling", 9, lambda r: f"{r['tokens_per_sec'] / (base * r['devices']):.1%}"),
      ("mem GB", 8, table.memory_gb)], rows)
  table.write_json(args.json, peak, dev.device_kind, rows)


if __name__ == "__main__":
  main()

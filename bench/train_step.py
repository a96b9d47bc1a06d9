"""Train-step benchmark: tokens/s, MFU, step time, compile time and memory per variant.

    python bench/train_step.py --config=configs/gpt2_124m.py:synthetic --micro_batches=32,64 \
        --variant="baseline:model.attention_impl=xla,model.loss_chunk=0" \
        --variant="cudnn+chunked:model.attention_impl=cudnn,model.loss_chunk=128"

One micro-batch per step (grad_accum_steps=1; --accum=K: K micro-batches per optimizer step),
the same device-resident batch every step (the input pipeline is measured by
bench/input_pipeline.py). After --warmup steps it times --steps steps two ways: one by one,
each synchronised ("synced ms", median), and in windows of --window steps launched back to
back with one synchronisation per window, as the training loop runs them ("step ms",
median window / window size; tokens/s and MFU use it). MFU is taken
against the bf16 matmul peak measured in the same run (8192^3 products) and, in the last
column, against the datasheet peak. FLOPs per token: 6N + 12*L*D*T (N without position
embeddings), nanoGPT's formula. "mem GB" is XLA's compiled footprint of the step
(arguments + outputs + temporaries - aliased), read from memory_analysis().
"""

import argparse
import dataclasses
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from bench import table  # noqa: E402
from train_lib import config_io, flops, partitioning, setup, state as state_lib, step  # noqa: E402
from train_lib.tools import ablate  # noqa: E402


def load_config(spec):
  return ablate.load_config(spec, where="--config")


def apply_overrides(config, overrides):
  """"a.b=1,c.d=x" onto config, each value parsed to its field's type."""
  for item in filter(None, overrides.split(",")):
    key, _, value = item.partition("=")
    config_io.set_field(config, key, value)


def matmul_peak_tflops(n=8192, reps=20):
  k1, k2 = jax.random.split(jax.random.PRNGKey(0))
  a = jax.random.normal(k1, (n, n), jnp.bfloat16)
  b = jax.random.normal(k2, (n, n), jnp.bfloat16)
  f = jax.jit(lambda a, b: a @ b)
  f(a, b).block_until_ready()
  best = 0.0
  for _ in range(3):  # back-to-back launches, one sync: the device never idles
    t = time.perf_counter()
    outs = [f(a, b) for _ in range(reps)]
    jax.block_until_ready(outs)
    best = max(best, 2 * n**3 * reps / (time.perf_counter() - t) / 1e12)
  return best


def bench_one(config, steps, warmup, profile_dir="", devices=None, window=5, wrap=None):
  """wrap(model) -> model: a stand-in with the same variables (bench/fp8.py's qwix rows)."""
  s = setup.build(config, devices)
  if wrap:
    s = dataclasses.replace(s, model=wrap(s.model))
  batch_sharding = partitioning.batch_sharding(s.mesh)
  state = state_lib.create(s.model, s.tx, s.task, s.dummy_batch, config.seed, s.state_sharding)
  fn = step.compile_train_step(s.model, s.task, s.tx, s.schedule,
                               config.optim.grad_accum_steps, s.state_sharding,
                               batch_sharding, s.rules)
  batch = s.data.next_train()
  t = time.perf_counter()
  compiled = fn.lower(state, batch).compile()
  compile_s = time.perf_counter() - t
  mem = compiled.memory_analysis()
  mem_gb = None
  if mem is not None:
    mem_gb = (mem.argument_size_in_bytes + mem.output_size_in_bytes +
              mem.temp_size_in_bytes - mem.alias_size_in_bytes) / 2**30
  for _ in range(warmup):
    state, metrics = compiled(state, batch)
  jax.block_until_ready(metrics)
  synced = []
  for _ in range(steps):
    t = time.perf_counter()
    state, metrics = compiled(state, batch)
    jax.block_until_ready(metrics)
    synced.append(time.perf_counter() - t)
  windows = []
  for _ in range(max(steps // window, 1)):
    t = time.perf_counter()
    for _ in range(window):
      state, metrics = compiled(state, batch)
    jax.block_until_ready(metrics)
    windows.append((time.perf_counter() - t) / window)
  step_s = statistics.median(windows)
  if profile_dir:  # a few more steps under the profiler; the timings above are untouched
    os.makedirs(profile_dir, exist_ok=True)
    with open(os.path.join(profile_dir, "step.hlo.txt"), "w") as f:
      f.write(compiled.as_text())
    with jax.profiler.trace(profile_dir, create_perfetto_trace=True):
      for _ in range(3):
        state, metrics = compiled(state, batch)
      jax.block_until_ready(metrics)
  tokens = s.task.items_per_batch(config.data.batch_size)
  return {"step_ms": step_s * 1e3, "synced_ms": statistics.median(synced) * 1e3,
          "tokens_per_sec": tokens / step_s,
          "flops_per_token": flops.train_flops_per_item(s), "compile_s": compile_s,
          "memory_gb": mem_gb, "loss": float(metrics["loss"]),
          "params": state_lib.num_params(state.params)}


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--config", default="configs/gpt2_124m.py:synthetic")
  parser.add_argument("--micro_batches", default="32")
  parser.add_argument("--variant", action="append", default=[],
                      help="name:key=value,key=value (repeatable); none = the config as is")
  parser.add_argument("--steps", type=int, default=30)
  parser.add_argument("--warmup", type=int, default=5)
  parser.add_argument("--window", type=int, default=5)
  parser.add_argument("--accum", type=int, default=1,
                      help="micro-batches per optimizer step (the config's own: 0)")
  parser.add_argument("--json", default="")
  parser.add_argument("--profile", default="",
                      help="directory: trace 3 more steps per variant (perfetto + HLO text); "
                      "summarise with bench/profile_summary.py")
  args = parser.parse_args()
  variants = [v.partition(":")[::2] for v in args.variant] or [("config", "")]
  # 8192^3 products fill a GPU; on a CPU they would take minutes, so measure smaller ones.
  peak = matmul_peak_tflops(8192 if jax.default_backend() != "cpu" else 1024)
  sheet = setup.datasheet_peak_tflops()
  rows = []
  for name, overrides in variants:
    for mb in map(int, args.micro_batches.split(",")):
      config = load_config(args.config)
      apply_overrides(config, overrides)
      accum = args.accum or config.optim.grad_accum_steps
      config.data.batch_size = mb * accum
      config.optim.grad_accum_steps = accum
      try:
        r = bench_one(config, args.steps, args.warmup,
                      args.profile and os.path.join(args.profile, f"{name}_mb{mb}"),
                      window=args.window)
      except Exception as e:  # e.g. out of memory: report and go on
        r = {"error": table.error(e)}
      r.update(variant=name, micro_batch=mb, accum=accum)
      if "tokens_per_sec" in r:
        r["mfu"] = r["tokens_per_sec"] * r["flops_per_token"] / (peak * 1e12)
      rows.append(r)
      print(json.dumps(r), flush=True)
  dev = jax.devices()[0]
  print(f"\n{args.config} on {jax.device_count()}x {dev.device_kind}, jax {jax.__version__}; "
        f"bf16 matmul peak measured {peak:.0f} TFLOP/s (datasheet {sheet:.0f})")
  sheet_mfu = lambda r: r["tokens_per_sec"] * r["flops_per_token"] / (sheet * 1e12) if sheet else 0
  table.print_table([
      ("variant", -28, lambda r: r["variant"]), ("mb", 4, lambda r: r["micro_batch"]),
      ("accum", 6, lambda r: r["accum"]), ("step ms", 9, lambda r: f"{r['step_ms']:.1f}"),
      ("synced ms", 10, lambda r: f"{r['synced_ms']:.1f}"),
      ("tokens/s", 11, lambda r: f"{r['tokens_per_sec']:,.0f}"),
      ("MFU", 7, lambda r: f"{r['mfu']:.1%}"), ("MFU sheet", 10, lambda r: f"{sheet_mfu(r):.1%}"),
      ("compile s", 10, lambda r: f"{r['compile_s']:.1f}"),
      ("mem GB", 8, table.memory_gb)], rows, 2)
  table.write_json(args.json, peak, dev.device_kind, rows, jax=jax.__version__)


if __name__ == "__main__":
  main()

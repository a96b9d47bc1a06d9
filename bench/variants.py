"""Where a config's step time goes: the same config trained under variants (config
overrides or environment variables), each a `main.py` subprocess, steps/s from its progress
lines (median after the first) and the ratio to the first variant, from the same call.

    python bench/variants.py --workdir=/tmp/var --steps=1000          # shakespeare_char's
    python bench/variants.py --config=configs/gpt2_124m.py:synthetic --steps=200 \\
        --variant="cudnn=" --variant="xla norm=--config.model.norm_impl=xla"

A --variant is NAME=ARGS: ARGS are main.py flags and NAME=VALUE environment settings
separated by spaces ("rbg=JAX_DEFAULT_PRNG_IMPL=rbg" sets one variable). Evals and
checkpoints are off, so the rates are the steps' own (bench/RESULTS.md run 18).
"""

import argparse
import os
import shlex
import shutil
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from bench import frameworks, table  # noqa: E402

DEFAULT = ["as shipped=", "rbg=JAX_DEFAULT_PRNG_IMPL=rbg",
           "no attention dropout=--config.model.attention_dropout=0.0",
           "no dropout=--config.model.attention_dropout=0.0 --config.model.dropout=0.0"]


def parse(variant: str):
  """'NAME=ARGS' -> (name, main.py flags, environment)."""
  name, sep, rest = variant.partition("=")
  if not sep or not name:
    raise SystemExit(f"--variant {variant!r}: use NAME=ARGS (ARGS may be empty)")
  words = shlex.split(rest)
  env = dict(w.split("=", 1) for w in words if not w.startswith("-") and "=" in w)
  flags = [w for w in words if w.startswith("-")]
  stray = [w for w in words if not w.startswith("-") and "=" not in w]
  if stray:
    raise SystemExit(f"--variant {name!r}: {stray} is neither a flag nor NAME=VALUE")
  return name, flags, env


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--config", default="configs/shakespeare_char.py")
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--steps", type=int, default=1000)
  parser.add_argument("--log_every", type=int, default=0, help="0: a quarter of --steps")
  parser.add_argument("--variant", action="append", help="NAME=ARGS; repeatable")
  args = parser.parse_args()
  variants = [parse(v) for v in (args.variant or DEFAULT)]
  log_every = args.log_every or max(1, args.steps // 4)
  common = [f"--config={args.config}", f"--config.train.num_steps={args.steps}",
            f"--config.train.log_every={log_every}", "--config.train.eval_every=0",
            "--config.train.checkpoint_every=0", "--config.train.divergence_factor=0"]
  os.makedirs(args.workdir, exist_ok=True)
  log = os.path.join(args.workdir, "variants.log")
  rows = []
  for i, (name, flags, env) in enumerate(variants):
    workdir = os.path.join(args.workdir, str(i))
    shutil.rmtree(workdir, ignore_errors=True)
    try:
      _, wall = frameworks.main_py([*common, *flags, f"--workdir={workdir}"], log, env)
      sps, rate, unit = frameworks.speed(workdir)
      rows.append({"variant": name, "steps_per_sec": sps, "rate": rate, "unit": unit,
                   "wall_s": wall})
    except Exception as e:   # noqa: BLE001  a failed variant is a row; the rest go on
      message = str(e)   # main_py's "main.py ARGS exited N: [its error line]"
      rows.append({"variant": name, "error": message[message.index(" exited ") + 1:][:200]
                   if " exited " in message else table.error(e)})
    print(rows[-1], flush=True)
  base = rows[0].get("steps_per_sec")   # the first variant's: the ratios say "vs first"
  print(f"\n{args.config}, {args.steps} steps, no evals or checkpoints; log {log}")
  table.print_table([
      ("variant", -28, lambda r: r["variant"]),
      ("steps/s", 9, lambda r: f"{r['steps_per_sec']:.1f}"),
      ("items/s", 12, lambda r: f"{r['rate']:,.0f} {r['unit'].split('_')[0]}"),
      ("vs first", 9, lambda r: f"{r['steps_per_sec'] / base:.2f}x" if base else "-"),
      ("wall s", 7, lambda r: f"{r['wall_s']:.0f}")], rows)


if __name__ == "__main__":
  main()

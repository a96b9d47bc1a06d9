"""Whetstone entry point: parse flags, call train_lib.run.

    python main.py --config=configs/default.py --workdir=runs/default
    python main.py --config=configs/default.py:runlocal --workdir=/tmp/d --config.seed=1
    python main.py --config=configs/default.py --workdir=runs/default --mode=eval

Exit codes: 0 success, 2 bad input, 3 diverged, 75 preempted (checkpoint saved).
"""

import json
import sys

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Experiment config file, optionally with an argument: file.py:arg.",
    lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints and logs.")
_MODE = flags.DEFINE_string("mode", "train", "train | eval")


def fail(message: str, code: int = 2):
  print(f"error: {message}", file=sys.stderr)
  sys.exit(code)


def parse_flags(argv):
  import jax
  jax.config.parse_flags_with_absl()  # JAX's own flags (--jax_platforms=cpu, ...)
  try:
    rest = flags.FLAGS(argv)
  except Exception as e:  # flag and config-file errors come as many exception types
    fail(_one_line(e))
  for name in ("config", "workdir"):
    if flags.FLAGS[name].value is None:
      fail(f"--{name} is required; usage: python main.py --config=configs/default.py "
           "--workdir=runs/default")
  return rest


def _one_line(e: Exception) -> str:
  text = " ".join(str(e).split())
  return text or type(e).__name__


def main(argv):
  if len(argv) > 1:
    fail(f"unexpected arguments {argv[1:]}; every option is a --flag")
  import train_lib
  logging.set_verbosity(logging.WARNING)
  try:
    result = train_lib.run(_MODE.value, _CONFIG.value, _WORKDIR.value)
  except (train_lib.UserError, train_lib.Diverged, train_lib.Preempted) as e:
    fail(str(e), e.exit_code)
  print(json.dumps(result), flush=True)


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)

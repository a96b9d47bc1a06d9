"""Whetstone entry point: parse flags, call train_lib.modes.run.

    python main.py --config=configs/default.py --workdir=runs/default
    python main.py --config=configs/default.py:runlocal --workdir=/tmp/d --config.seed=1
    python main.py --config=configs/default.py --workdir=runs/default --mode=eval
    python main.py --config=runs/default/config.json --workdir=runs/default_again  # replay
    python main.py --config=configs/ablations/shakespeare_arch.py --workdir=runs/abl --mode=ablate

Several processes (hosts), one command each; srun, mpirun and TPU VMs need no flags:
    python main.py ... --coordinator_address=host0:1234 --num_processes=2 --process_id=0

Exit codes: 0 success, 1 a sanity check failed, 2 bad input, 3 diverged, 75 preempted
(checkpoint saved), 130 interrupted (SIGINT) outside the training steps. Only process 0
prints the result line and writes the workdir's logs.
"""

import os
import signal
import sys


def _stop(signum, frame):
  """SIGTERM or SIGINT outside the training steps (inside them the loop's own handler saves,
  then exits 75). Before them nothing unsaved exists: one line and exit at once, SIGTERM 75
  (the same command starts again or continues), SIGINT 130. After them, while the run saves
  and evaluates, the signal is deferred to the end of the run (train_lib.loop.StopSignals)."""
  stop = getattr(sys.modules.get("train_lib.loop"), "StopSignals", None)
  if stop is not None and stop.inside:
    stop.deferred.append(signum)
    return
  what = ("after its run ended; its checkpoint is saved" if stop is not None and stop.completed
          else "before training started; nothing was trained in this launch")
  os.write(2, f"error: stopped by {signal.Signals(signum).name} {what}\n".encode())  # not
  # print: the handler may interrupt one
  os._exit(75 if signum == signal.SIGTERM else 130)   # nothing to save or wait for


for _sig in (signal.SIGTERM, signal.SIGINT):   # from the first instruction: no traceback
  signal.signal(_sig, _stop)

import json  # noqa: E402
import re  # noqa: E402

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Experiment config file, optionally with an argument: file.py:arg; "
    "or a run's config.json to replay that run.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints and logs.")
_MODE = flags.DEFINE_string(
    "mode", "train", "train | eval | sample | shardings | ablate | sanity | lr_range | compile | tokenizer")


class _ConfigParser(flags.ArgumentParser):
  """A config file (file.py[:arg]) as config_flags reads it, or a run's config.json,
  which replays that run."""

  def __init__(self, file_parser):
    self.file_parser = file_parser

  def parse(self, path):
    if not path.endswith(".json"):
      return self.file_parser.parse(path)
    from train_lib import config_io  # after JAX's flags are parsed
    config = config_io.from_json(path)
    config.lock()
    return config

  def flag_type(self):
    return self.file_parser.flag_type()


flags.FLAGS["config"].parser = _ConfigParser(flags.FLAGS["config"].parser)
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", "", "Multi-process runs: HOST:PORT of process 0 (else "
    "$JAX_COORDINATOR_ADDRESS, or detected under srun, mpirun and on TPU VMs).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Multi-process runs: how many.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "Multi-process runs: this one's index.")


def fail(message: str, code: int = 2):
  print(f"error: {message}", file=sys.stderr)
  sys.exit(code)


def parse_flags(argv):
  import jax
  jax.config.parse_flags_with_absl()  # JAX's own flags (--jax_platforms=cpu, ...)
  _check_config_file(argv)
  try:
    rest = flags.FLAGS(argv)
  except Exception as e:  # flag and config-file errors come as many exception types
    fail(_explain(e, argv))
  for name in ("config", "workdir"):
    if flags.FLAGS[name].value is None:
      fail(f"--{name} is required; usage: python main.py --config=configs/default.py "
           "--workdir=runs/default")
  return rest


def _check_config_file(argv):
  for arg in argv[1:]:
    if arg.startswith("--config="):
      path = arg.split("=", 1)[1].split(":", 1)[0]
      if not os.path.isfile(path):
        fail(f"config file {path} not found; pass e.g. --config=configs/default.py")


def _explain(e: Exception, argv) -> str:
  raw = str(e).replace("\\n", "\n").replace("\\'", "'")
  lines = [l.strip() for l in raw.splitlines() if l.strip()]
  text = " ".join(lines)
  typo = re.search(r'Did you mean "([^"]+)" instead of "([^"]+)"', text)
  if typo:
    flag = next((a.split("=")[0] for a in argv if a.startswith("--config.") and
                 typo.group(2) in a.split("=")[0].split(".")), typo.group(2))
    return f"unknown config key {flag.lstrip('-')}: did you mean {typo.group(1)!r}?"
  bare = text.strip("\"' ")   # ml_collections' KeyError / AttributeError: the name alone
  paths = [a.split("=")[0].lstrip("-").split(".") for a in argv if a.startswith("--config.")]
  unknown = sorted({".".join(p[:p.index(bare, 1) + 1]) for p in paths if bare in p[1:]})
  if isinstance(e, (KeyError, AttributeError)) and len(unknown) == 1:
    parent, name = unknown[0].rsplit(".", 1)
    return (f"unknown config key {unknown[0]}: {parent} has no field {name!r}; the config "
            "file and configs/base.py list the fields")
  if isinstance(e, (KeyError, AttributeError)) and unknown:
    return (f"unknown config key: one of {', '.join(unknown)} names no field {bare!r}; the "
            "config file and configs/base.py list the fields")
  if "Traceback (most recent call last)" in raw:  # get_config raised: keep its last line
    where = next((a for a in reversed(argv) if a.startswith("--config=")), "--config")
    return f"{where}: {lines[-1]}"
  return text or type(e).__name__


def _check_typed(config, prefix="config."):
  """A field set to None has no type, so any override of it would pass unchecked."""
  for key, value in config.items():
    if hasattr(value, "get_type"):
      _check_typed(value, f"{prefix}{key}.")
    elif value is None and config.get_type(key) is type(None):
      fail(f"{prefix}{key} is None, which has no type; give it a default value or declare it "
           f"with ml_collections.config_dict.placeholder(TYPE)")


def main(argv):
  if len(argv) > 1:
    fail(f"unexpected arguments {argv[1:]}; every option is a --flag")
  _check_typed(_CONFIG.value)
  import train_lib  # here, not at the top: a flag error is reported before the stack loads
  from train_lib import distributed, modes
  logging.set_verbosity(logging.ERROR)
  try:
    distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
    result = modes.run(_MODE.value, _CONFIG.value, _WORKDIR.value)
  except (train_lib.UserError, train_lib.Diverged, train_lib.Preempted,
          train_lib.ChecksFailed) as e:
    fail(str(e), e.exit_code)
  except RuntimeError as e:
    if "Unable to initialize backend" in str(e):  # e.g. a bad --jax_platforms
      fail(_explain(e, argv))
    raise
  import jax
  if jax.process_index() == 0:
    print(json.dumps(result), flush=True)



if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)

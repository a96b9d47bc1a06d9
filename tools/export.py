"""A Whetstone checkpoint's parameters written in a foreign format (train_lib/weights/).

    python tools/export.py --workdir=runs/gpt2 --format=hf_gpt2 --out=gpt2/model.safetensors
    python tools/export.py --workdir=runs/gpt2 --format=hf_gpt2 --out=m.safetensors --step=1000

Any format registered in train_lib/weights/ is served by its name (hf_gpt2, hf_vit, timm_vit,
torchvision_resnet, ...); the format's Rules say each tensor's name and layout. The workdir's
config.json is replayed (train_lib/config_io.from_json) and the newest verified checkpoint,
or --step, restored as --mode=eval restores it (checkpointing.open_for_reading, setup.build:
the data must be readable as it was for training), but onto one CPU device: the tensors are
written from host memory anyway, and one device fits a run trained on any mesh or device
count. Its parameters (and batch statistics) go through weights.save into a safetensors file,
written under a temporary name and moved into place, so `--out` is never left half-written.
A format whose function has `config_file = (name, make)` also gets that JSON file beside
`--out` (hf_vit: the config.json that from_pretrained needs). Bad input (an unknown format, a workdir without a run or a checkpoint, a missing step, a
model the format does not fit) is one line on stderr and exit code 2.
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402

import plugins  # noqa: E402
from train_lib import checkpointing, config_io, partitioning, setup as setup_lib  # noqa: E402
from train_lib import weights, writers  # noqa: E402
from train_lib.errors import UserError  # noqa: E402


def host_device():
  """The first CPU device; the first local device where JAX runs without a CPU backend."""
  try:
    return jax.devices("cpu")[0]
  except RuntimeError:
    return jax.local_devices()[0]


def restore_variables(workdir: str, step: int = -1):
  """(config, step, {"params": ..., **model_state} as numpy) of a run's checkpoint."""
  workdir = os.path.abspath(os.path.expanduser(workdir))
  path = os.path.join(workdir, "config.json")
  if not os.path.isfile(path):
    raise UserError(f"--workdir={workdir}: no config.json; point it at a run's directory")
  try:
    config = config_io.from_json(path)
  except ValueError as e:
    raise UserError(str(e)) from None
  ckpt, wanted = checkpointing.open_for_reading(workdir, step)
  for axis in partitioning.mesh_axes(config.mesh):   # one device: every axis of size 1
    config.mesh[axis] = 1
  s = setup_lib.build(config, devices=[host_device()])
  target = checkpointing.sharded_target(s.abstract_state, s.state_sharding)
  state = ckpt.restore(wanted, target, config=config)
  ckpt.close()
  return config, wanted, jax.device_get({"params": state.params, **state.model_state})


def export(workdir: str, fmt: str, out: str, step: int = -1) -> int:
  """Writes `out`; returns the step exported. Raises UserError for bad input."""
  try:
    weights.REGISTRY.resolve(fmt)   # an unknown format fails before anything is restored
  except plugins.PluginError as e:
    raise UserError(f"--format: {e}") from None
  out = os.path.abspath(os.path.expanduser(out))
  if not os.path.isdir(os.path.dirname(out)):
    raise UserError(f"--out={out}: no folder {os.path.dirname(out)}; create it first")
  config, wanted, variables = restore_variables(workdir, step)
  tmp = f"{out}.tmp{os.getpid()}"
  try:
    weights.save(fmt, variables, config.model, tmp)
    os.replace(tmp, out)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)
  companion = getattr(weights.resolve(fmt), "config_file", None)
  if companion is not None:   # e.g. hf_vit: the config.json that from_pretrained needs
    name, make = companion
    writers.write_json(os.path.join(os.path.dirname(out), name), make(config.model, variables),
                       indent=2)
  return wanted


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--workdir", required=True, help="a run's directory")
  parser.add_argument("--format", required=True,
                      help="a train_lib/weights format: " + ", ".join(weights.REGISTRY.names()))
  parser.add_argument("--out", required=True, help="the file to write (.safetensors)")
  parser.add_argument("--step", type=int, default=-1, help="checkpoint step (default newest)")
  args = parser.parse_args(argv)
  try:
    step = export(args.workdir, args.format, args.out, args.step)
  except UserError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  print(f"wrote {args.out}: {args.format} from step {step} of {args.workdir}")
  return 0


if __name__ == "__main__":
  sys.exit(main())

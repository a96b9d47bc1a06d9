"""Foreign weights in and out: `--config.init_from=FORMAT:PATH` and tools/export.py.

    variables = weights.load("hf_gpt2:gpt2/model.safetensors", variables, config.model)
    weights.save("hf_gpt2", variables, config.model, "out/model.safetensors")

A format is a file here that registers a function giving the name mapping for a model:

    @register("torchvision_resnet")
    def rules(model_config, variables) -> list[Rule]: ...

Each Rule names one foreign tensor, the path of the variable it fills
(("params", "stem", "kernel"), ("batch_stats", ...)) and the two layout conversions.
Loading checks every name before anything is used: a missing, extra or mis-shaped tensor
is one error that lists each one. Paths under `skip` (config.init_skip, e.g. a head of
another size for fine-tuning) keep their fresh init, and their foreign tensors are ignored.
A format's function may set `fn.ignore`, a regular expression of foreign names that carry
nothing to load (torchvision's num_batches_tracked, say), and `fn.rename`, applied to every
foreign name before matching (for files that come under more than one naming). Foreign
files are read as safetensors, or with torch.load(weights_only=True) for .pt/.pth/.bin
where torch is installed; nothing is ever unpickled. Written files are safetensors with
metadata {"format": "pt", "whetstone_format": FORMAT} (transformers checks "format").
"""

import os
import re
from typing import Callable, NamedTuple

import flax
import numpy as np

import plugins
from train_lib.errors import UserError

REGISTRY = plugins.Registry("weights format", __name__)
register = REGISTRY.register


def same(x):
  return x


class Rule(NamedTuple):
  theirs: str                    # the tensor's name in the foreign file
  ours: tuple                    # path in the variables: ("params", "head", "kernel")
  to_ours: Callable = same       # foreign array -> our layout
  to_theirs: Callable = same     # our array -> the foreign layout


def resolve(fmt: str):
  try:
    return REGISTRY.resolve(fmt)
  except plugins.PluginError as e:
    raise UserError(f"init_from format: {e}") from None


def parse(spec: str):
  fmt, sep, path = spec.partition(":")
  if not sep or not fmt or not path:
    raise UserError(f"init_from={spec!r}: write FORMAT:PATH, e.g. "
                    "hf_gpt2:path/model.safetensors")
  return fmt, os.path.expanduser(path)


def check(spec: str) -> None:
  """UserError, before any device work, if `spec` names an unknown format or no file."""
  fmt, path = parse(spec)
  resolve(fmt)
  path = os.path.join(path, "model.safetensors") if os.path.isdir(path) else path
  if not os.path.isfile(path):
    raise UserError(f"init_from={spec!r}: no file {path}")


def read_tensors(path: str) -> dict:
  """name -> numpy array from a .safetensors file (or a torch file, loaded weights-only)."""
  if os.path.isdir(path):
    path = os.path.join(path, "model.safetensors")
  if not os.path.isfile(path):
    raise UserError(f"init_from: no file {path}")
  if path.endswith(".safetensors"):
    from safetensors.numpy import load_file
    try:
      return load_file(path)
    except Exception as e:  # a torn or foreign file: safetensors says what is wrong
      raise UserError(f"init_from: cannot read {path} as safetensors ({e})") from None
  try:
    import torch
  except ImportError:
    raise UserError(f"init_from: {path} is a torch file and torch is not installed; "
                    "convert it with safetensors.torch.save_file(torch.load(path, "
                    "weights_only=True), 'model.safetensors')") from None
  tensors = torch.load(path, map_location="cpu", weights_only=True)
  if isinstance(tensors, dict) and "state_dict" in tensors:
    tensors = tensors["state_dict"]
  return {k: v.float().numpy() if v.is_floating_point() else v.numpy()
          for k, v in tensors.items()}


def _skipped(path: tuple, skip) -> bool:
  joined = "/".join(path[1:])   # without the collection name
  return any(joined == s or joined.startswith(s.rstrip("/") + "/") for s in skip)


def _check(rules, tensors, flat, skip, ignore) -> None:
  mapped = {r.ours for r in rules}
  live = [r for r in rules if not _skipped(r.ours, skip)]
  unmapped = ["/".join(r.ours) for r in rules if r.ours not in flat]
  missing = [r.theirs for r in live if r.theirs not in tensors]
  used = {r.theirs for r in rules}
  extra = [k for k in tensors if k not in used and not re.fullmatch(ignore, k)]
  unfilled = ["/".join(p) for p in flat if p not in mapped and not _skipped(p, skip)]
  shapes = []
  for rule in live:
    if rule.theirs in tensors and rule.ours in flat:
      got, want = np.shape(rule.to_ours(tensors[rule.theirs])), tuple(flat[rule.ours].shape)
      if got != want:
        shapes.append(f"{rule.theirs} {tuple(tensors[rule.theirs].shape)} -> "
                      f"{'/'.join(rule.ours)} {got} but the model has {want}")
  problems = [f"{label}: {', '.join(sorted(names))}" for label, names in (
      ("missing", missing), ("extra", extra), ("mis-shaped", shapes),
      ("left unfilled", unfilled), ("not in this model", unmapped)) if names]
  if problems:
    raise UserError("init_from: the weights do not fit the model (a head of another size "
                    "goes in config.init_skip); " + "; ".join(problems))


def init_state(state, config, task, shardings):
  """A fresh train state with its parameters (and batch statistics) from config.init_from;
  the optimizer state and the task's own state are made for the new parameters."""
  import jax
  from jax.experimental import multihost_utils
  variables = {"params": state.params, **state.model_state}
  host = jax.tree.map(lambda x: np.asarray(multihost_utils.process_allgather(x, tiled=True)),
                      variables)
  new = load(config.init_from, host, config.model, config.init_skip)
  params = new.pop("params")
  state = state.replace(params=params, model_state=new, extra=task.init_extra(params))
  return jax.device_put(state, shardings)


def load(spec: str, variables: dict, model_config, skip=()) -> dict:
  """`variables` ({"params": ..., "batch_stats": ...}, numpy or jax arrays) with every
  tensor of the foreign file put in its place; skipped paths keep their values."""
  fmt, path = parse(spec)
  fn = resolve(fmt)
  flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(variables))
  rules = fn(model_config, variables)
  tensors = read_tensors(path)
  rename = getattr(fn, "rename", None)
  if rename is not None:   # a format whose files come under more than one naming
    tensors = {rename(name): t for name, t in tensors.items()}
  _check(rules, tensors, flat, tuple(skip), getattr(fn, "ignore", r"(?!)"))
  out = dict(flat)
  for rule in rules:
    if not _skipped(rule.ours, skip):
      out[rule.ours] = np.asarray(rule.to_ours(tensors[rule.theirs]),
                                  dtype=flat[rule.ours].dtype)
  return flax.traverse_util.unflatten_dict(out)


def export(fmt: str, variables: dict, model_config) -> dict:
  """The foreign tensors (name -> numpy array) for `variables`."""
  fn = resolve(fmt)
  flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(variables))
  rules = fn(model_config, variables)
  missing = sorted("/".join(r.ours) for r in rules if r.ours not in flat)
  if missing:
    raise UserError(f"export {fmt}: the model has no variables {missing}")
  return {r.theirs: np.ascontiguousarray(np.asarray(r.to_theirs(np.asarray(flat[r.ours]))))
          for r in rules}


def save(fmt: str, variables: dict, model_config, path: str) -> None:
  from safetensors.numpy import save_file
  save_file(export(fmt, variables, model_config), path, metadata={"format": "pt", "whetstone_format": fmt})

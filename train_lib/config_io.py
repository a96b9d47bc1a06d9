"""Configs read back and changed outside the command line.

    config = config_io.from_json("runs/x/config.json")   # a run's config, typed again: a replay
    config_io.set_field(config, "optim.learning_rate", "3e-4")   # one override, typed

The command line's --config.KEY=VALUE goes through ml_collections' config_flags; ablation
variants and bench/ scripts go through set_field, with the same types and errors.
"""

import ast
import difflib
import json

import ml_collections

from configs import base


def set_field(config, key: str, value):
  """config[key] = value for an existing dotted key; a string is parsed to the field's type
  (the command line's "1e-3", "true", "(64, 64)"). Raises ValueError naming the problem."""
  *parents, name = key.split(".")
  node = config
  for part in parents:
    if not isinstance(node.get(part), ml_collections.ConfigDict):
      raise ValueError(f"no config section {part!r} in {key!r}")
    node = node[part]
  if name not in node:
    close = difflib.get_close_matches(name, list(node.keys()), n=1)
    raise ValueError(f"no config field {key}" + (f"; did you mean {close[0]!r}?" if close else ""))
  current = node[name]
  if isinstance(value, str) and not isinstance(current, str) and current is not None:
    value = _parse(value, type(current), key)
  try:
    node[name] = value
  except (TypeError, ValueError) as e:
    raise ValueError(f"{key}={value!r}: {e}") from None


def _parse(text: str, kind, key: str):
  if kind is bool:
    if text.lower() in ("1", "true", "yes"):
      return True
    if text.lower() in ("0", "false", "no"):
      return False
    raise ValueError(f"{key}={text!r} is not a boolean; use true or false")
  try:
    return kind(text) if kind in (int, float) else ast.literal_eval(text)
  except (ValueError, SyntaxError):
    raise ValueError(f"{key}={text!r} is not a {kind.__name__}") from None


def from_json(path: str):
  """A run's config.json back into a ConfigDict with the types of this file.

  Fields declared here take their types (JSON lists become tuples where the default is a
  tuple); fields not declared here (the model's) come back as written, lists as tuples.
  """
  try:
    with open(path) as f:
      values = json.load(f)
  except (OSError, ValueError) as e:
    raise ValueError(f"cannot read {path} as a run's config.json ({e})") from None
  if not isinstance(values, dict):
    raise ValueError(f"{path} holds no config object")
  config = base.get_config()
  _merge(config, values)
  return config


def _merge(config, values: dict):
  for key, value in values.items():
    if isinstance(value, dict):
      if not isinstance(config.get(key), ml_collections.ConfigDict):
        config[key] = ml_collections.ConfigDict()
      _merge(config[key], value)
    else:
      config[key] = _tuples(value)


def _tuples(value):
  return tuple(_tuples(v) for v in value) if isinstance(value, list) else value

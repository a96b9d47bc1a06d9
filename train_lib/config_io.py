"""Configs read back and changed outside the command line.

    config = config_io.from_json("runs/x/config.json")   # a run's config, typed again: a replay
    config_io.set_field(config, "optim.learning_rate", "3e-4")   # one override, typed
    config_io.check_keys(config)     # every key known: a typo in a config file exits 2

The command line's --config.KEY=VALUE goes through ml_collections' config_flags; ablation
variants and bench/ scripts go through set_field, with the same types and errors.
"""

import ast
import difflib
import hashlib
import json
import os

import ml_collections

import plugins
from configs import base
from train_lib.errors import UserError


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
  Plug-ins of user code that the run copied into its workdir (capsule.json's user_code)
  are named by those copies, checked against their sha256.
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
  _use_copied_code(config, os.path.dirname(os.path.abspath(path)))
  return config


def _use_copied_code(config, workdir: str):
  """Every "name:Attr" whose name the run loaded as user code -> "copy.py:Attr"."""
  try:
    with open(os.path.join(workdir, "capsule.json")) as f:
      entries = json.load(f).get("user_code") or []
  except (OSError, ValueError, AttributeError):
    return
  copies = {}
  for entry in entries:
    copy = os.path.join(workdir, entry["copy"])
    if os.path.isabs(entry["copy"]) or ".." in entry["copy"].split(os.sep) or \
        os.path.islink(copy):   # never follow a path out of the workdir
      raise ValueError(f"capsule.json names user code outside {workdir}: {entry['copy']!r}")
    try:
      with open(copy, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    except OSError:
      raise ValueError(f"the run's copy of {entry['name']} is missing ({copy}); replay "
                       "needs workdir/code/ as the run left it") from None
    if digest != entry["sha256"]:
      raise ValueError(f"{copy} does not match the sha256 in capsule.json: it was edited "
                       "after the run; restore it or name the code yourself")
    copies[entry["name"]] = copy

  def walk(node):
    for key, value in node.items():
      if isinstance(value, ml_collections.ConfigDict):
        walk(value)
      elif isinstance(value, str) and value.rpartition(":")[0] in copies:
        node[key] = f"{copies[value.rpartition(':')[0]]}:{value.rpartition(':')[2]}"
  walk(config)


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


# Sections whose fields, beyond those declared in configs/base.py, belong to the plug-in
# that the section names: (section, the plug-in kind's registry) -> the class declares them.
def _plugin_fields(kind: str, name: str):
  """(declared field names or None where the class declares none, is it user code)."""
  if kind == "model":
    import models
    cls = models.resolve(name)
    return models.fields(cls), ":" in name
  if kind == "task":
    from train_lib import tasks as registry
  elif kind == "data":
    import input_pipeline as registry
  else:
    from train_lib import evaluators as registry
  cls = registry.REGISTRY.resolve(name)
  declared = getattr(cls, "config_fields", None)
  return (None if declared is None else set(declared)), ":" in name


def check_keys(config):
  """Refuses (UserError) a key that the config sets but nothing declares: not in
  configs/base.py, nor a field of the model, task, data source or evaluator it names, nor
  (optim.groups.G) a field of optim. A near miss says "did you mean". Sections whose
  class is user code are left to the class (models report what they do not declare)."""
  defaults = base.get_config()
  if "variants" in config:   # an ablation: its runs' configs are checked one by one
    return
  problems = []

  def unknown(path, key, known):
    close = difflib.get_close_matches(key, sorted(known), n=1)
    problems.append(f"{path}{key}" + (f" (did you mean {close[0]!r}?)" if close else ""))

  for key in config.keys():
    if key not in defaults:
      unknown("", key, defaults.keys())
  for section, kind in (("model", "model"), ("task", "task"), ("data", "data")):
    if section not in config or "name" not in config[section]:
      continue
    try:
      declared, user = _plugin_fields(kind, config[section].name)
    except plugins.PluginError as e:
      raise UserError(str(e)) from None
    if declared is None or user:
      continue
    known = set(defaults[section].keys()) | declared
    if section == "model":   # others' fields are reported by the run, near misses refused
      for key in config.model.keys():
        if key != "name" and key not in known and difflib.get_close_matches(key, known, n=1):
          unknown("model.", key, known)
      continue
    for key in config[section].keys():
      if key not in known:
        unknown(f"{section}.", key, known)
  for section in ("optim", "train", "eval", "sample", "sanity", "lr_range", "mesh", "wandb",
                  "mlflow"):
    if isinstance(config.get(section), ml_collections.ConfigDict):
      for key in config[section].keys():
        if key not in defaults[section]:
          unknown(f"{section}.", key, defaults[section].keys())
  for group, fields in (config.optim.get("groups") or {}).items():
    for key in fields.keys():
      if key not in defaults.optim or key == "groups":
        unknown(f"optim.groups.{group}.", key, set(defaults.optim.keys()) - {"groups"})
  for label, ec in (config.get("evals") or {}).items():
    if not isinstance(ec, ml_collections.ConfigDict) or "name" not in ec:
      continue
    try:
      declared, user = _plugin_fields("evaluator", ec.name)
    except plugins.PluginError as e:
      raise UserError(f"evals.{label}: {e}") from None
    if declared is not None and not user:
      known = {"name", "every"} | declared
      for key in ec.keys():
        if key not in known:
          unknown(f"evals.{label}.", key, known)
  if problems:
    raise UserError(f"unknown config key{'s' if len(problems) > 1 else ''} "
                    f"{', '.join(problems)}: not declared in configs/base.py nor by the "
                    "plug-in its section names; fix the config file")

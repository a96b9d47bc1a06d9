"""Model registry: config.model -> a Flax Linen module.

    from models import build
    model = build(config.model, num_classes=10, dtype=jnp.bfloat16)
    variables = model.init(rng, x, train=False)
    logits = model.apply(variables, x, train=False)

A model is one file in models/ whose class is decorated with @register("name");
a user model outside the repo is named "package.module:Class" or "path/file.py:Class"
(plugins.py). A model receives the fields of config.model that it declares (its dataclass
fields); `undeclared(config.model)` lists the others, which the run reports (a field set
for another model) or refuses (a near miss of a declared one: a typo).
"""

import dataclasses
import difflib
import inspect

import plugins


ModelError = plugins.PluginError   # a model name or argument that cannot be used


REGISTRY = plugins.Registry("model", __name__)
register = REGISTRY.register


def resolve(name: str):
  """The module class for a registered name, "package.module:Class" or "file.py:Class"."""
  return REGISTRY.resolve(name)


def fields(cls) -> set:
  """The constructor arguments a model class declares (less Flax's parent and name)."""
  if dataclasses.is_dataclass(cls):
    names = {f.name for f in dataclasses.fields(cls) if f.init}
  else:
    names = set(inspect.signature(cls).parameters)
  return names - {"parent", "name"}


def undeclared(model_config) -> list:
  """[(field, the declared field it nearly matches or None)] of config.model's fields that
  its class does not declare."""
  declared = fields(resolve(model_config.name))
  return [(k, next(iter(difflib.get_close_matches(k, declared, n=1)), None))
          for k in model_config.keys() if k != "name" and k not in declared]


def build(model_config, **extra):
  """Instantiates config.model with the fields its class declares; `extra` (num_classes,
  dtype, ...) are passed when declared."""
  cls = resolve(model_config.name)
  declared = fields(cls)
  kwargs = {k: v for k, v in model_config.items() if k in declared}
  kwargs.update({k: v for k, v in extra.items() if k in declared})
  return cls(**kwargs)

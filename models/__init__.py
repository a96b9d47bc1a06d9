"""Model registry: config.model -> a Flax Linen module.

    from models import build
    model = build(config.model, num_classes=10, dtype=jnp.bfloat16)
    variables = model.init(rng, x, train=False)
    logits = model.apply(variables, x, train=False)

A model is one file in models/ whose class is decorated with @register("name");
a user model outside the repo is named "package.module:Class" or "path/file.py:Class"
(plugins.py). Every field of config.model except `name` is passed to the constructor.
"""

import inspect

import plugins


ModelError = plugins.PluginError   # a model name or argument that cannot be used


REGISTRY = plugins.Registry("model", __name__)
register = REGISTRY.register


def resolve(name: str):
  """The module class for a registered name, "package.module:Class" or "file.py:Class"."""
  return REGISTRY.resolve(name)


def build(model_config, **extra):
  """Instantiates config.model; `extra` (num_classes, dtype, ...) are passed when accepted."""
  cls = resolve(model_config.name)
  kwargs = {k: v for k, v in model_config.items() if k != "name"}
  fields = set(inspect.signature(cls).parameters)
  unknown = sorted(set(kwargs) - fields)
  if unknown:
    raise ModelError(f"model {model_config.name!r} has no argument(s) {unknown}; "
                     f"it accepts {sorted(fields - {'parent', 'name'})}")
  kwargs.update({k: v for k, v in extra.items() if k in fields})
  return cls(**kwargs)

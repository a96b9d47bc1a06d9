"""Model registry: config.model -> a Flax Linen module.

    from models import build
    model = build(config.model, num_classes=10, dtype=jnp.bfloat16)
    variables = model.init(rng, x, train=False)
    logits = model.apply(variables, x, train=False)

A model is one file in models/ whose class is decorated with @register("name");
a user model outside the repo is named "package.module:Class". Every field of
config.model except `name` is passed to the constructor.
"""

import importlib
import inspect
import pkgutil

_REGISTRY = {}


class ModelError(ValueError):
  """A model name or argument that cannot be used."""


def register(name):
  def wrap(cls):
    _REGISTRY[name] = cls
    return cls
  return wrap


def _discover():
  for info in pkgutil.iter_modules(__path__):
    if info.name != "layers":
      importlib.import_module(f"{__name__}.{info.name}")


def resolve(name: str):
  """Returns the module class for a registered name or "package.module:Class"."""
  if ":" in name:
    module_name, _, attr = name.partition(":")
    try:
      module = importlib.import_module(module_name)
    except ImportError as e:
      raise ModelError(f"cannot import model module {module_name!r} ({e}); "
                       "put its package on PYTHONPATH") from None
    if not hasattr(module, attr):
      raise ModelError(f"module {module_name!r} has no class {attr!r}")
    return getattr(module, attr)
  _discover()
  if name not in _REGISTRY:
    import difflib
    close = difflib.get_close_matches(name, _REGISTRY, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise ModelError(f"unknown model {name!r}; registered: {sorted(_REGISTRY)}.{hint}")
  return _REGISTRY[name]


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

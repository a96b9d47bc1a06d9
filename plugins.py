"""One way to name a plug-in: models, tasks, data sources and evaluators.

    REGISTRY = plugins.Registry("model", "models")      # in models/__init__.py
    @REGISTRY.register("cnn")                           # in models/cnn.py
    class CNN(nn.Module): ...
    REGISTRY.resolve("cnn")                             # a registered short name
    REGISTRY.resolve("my_lab.nets:Net")                 # an importable module (on PYTHONPATH)
    REGISTRY.resolve("path/to/net.py:Net")              # a file outside the repo
    @REGISTRY.register("tfds:")                         # a family of names:
    REGISTRY.resolve("tfds:lm1b")                       # "tfds:" + anything finds it

A registry finds its plug-ins by importing every module of its package, so adding one
is adding a file. This module imports nothing of the project, so every room may use it.

    plugins.USER_CODE    # {"path/to/net.py" or "my_lab.nets": {"path", "sha256"}}: every
                         # loaded module of user code that is neither installed nor in the
                         # repo (the run's capsule copies each into workdir/code/)
"""

import difflib
import hashlib
import importlib
import importlib.util
import os
import pkgutil
import sys


REPO = os.path.dirname(os.path.abspath(__file__))
USER_CODE = {}


def _sha256(path: str) -> str:
  with open(path, "rb") as f:
    return hashlib.sha256(f.read()).hexdigest()


def _is_user_code(path: str) -> bool:
  """Neither installed (site-packages, the interpreter's own) nor part of this repo."""
  path = os.path.realpath(path)
  installed = ("site-packages" in path.split(os.sep) or "dist-packages" in path.split(os.sep)
               or path.startswith(os.path.realpath(sys.base_prefix) + os.sep))
  return not installed and not path.startswith(os.path.realpath(REPO) + os.sep)


class PluginError(ValueError):
  """A plug-in name that cannot be resolved; the message says what to do."""


def load(spec: str, kind: str = "plug-in"):
  """The object named by "package.module:Name" or "path/to/file.py:Name"."""
  where, _, attr = spec.rpartition(":")
  if not where or not attr:
    raise PluginError(f"{kind} {spec!r}: write 'package.module:Name' or 'path/file.py:Name'")
  if where.endswith(".py") or os.sep in where:
    path = os.path.abspath(os.path.expanduser(where))
    if not os.path.isfile(path):
      raise PluginError(f"{kind} {spec!r}: no file {path}")
    # One module per file content: a second load of the same file reuses it (jit caches
    # and pickled configs see one class), an edited file gets a module of its own.
    digest = _sha256(path)
    name = f"whetstone_user_{os.path.splitext(os.path.basename(path))[0]}_{digest[:12]}"
    if name not in sys.modules:
      module_spec = importlib.util.spec_from_file_location(name, path)
      module = importlib.util.module_from_spec(module_spec)
      sys.modules[name] = module
      try:
        module_spec.loader.exec_module(module)
      except Exception:
        del sys.modules[name]
        raise
    module = sys.modules[name]
    if _is_user_code(path):
      USER_CODE[where] = {"path": path, "sha256": digest}
  else:
    try:
      module = importlib.import_module(where)
    except ImportError as e:
      raise PluginError(f"{kind} {spec!r}: cannot import {where!r} ({e}); put its package "
                        "on PYTHONPATH or name the file as path/file.py:Name") from None
    path = getattr(module, "__file__", None)
    if path and os.path.isfile(path) and _is_user_code(path):
      USER_CODE[where] = {"path": os.path.abspath(path), "sha256": _sha256(path)}
  if not hasattr(module, attr):
    raise PluginError(f"{kind} {spec!r}: {where!r} has no attribute {attr!r}")
  return getattr(module, attr)


class Registry:
  """Short names of one kind of plug-in, found in the modules of `package`."""

  def __init__(self, kind: str, package: str, fallback=None):
    self.kind, self.package, self.fallback = kind, package, fallback
    self._entries, self._discovered = {}, False

  def register(self, name: str):
    def wrap(obj):
      self._entries[name] = obj
      return obj
    return wrap

  def _discover(self):
    if self._discovered:
      return
    self._discovered = True
    package = importlib.import_module(self.package)
    for info in pkgutil.iter_modules(package.__path__):
      if not info.ispkg and not info.name.startswith("_"):
        importlib.import_module(f"{self.package}.{info.name}")

  def names(self) -> list:
    self._discover()
    return sorted(self._entries)

  def resolve(self, name: str):
    if ":" in name:
      prefix = name.split(":", 1)[0] + ":"
      self._discover()
      if prefix in self._entries:   # a registered family of names: "tfds:" + a TFDS name
        return self._entries[prefix]
      return load(name, self.kind)
    self._discover()
    if name in self._entries:
      return self._entries[name]
    if self.fallback is not None:
      return self.fallback
    close = difflib.get_close_matches(name, self._entries, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise PluginError(f"unknown {self.kind} {name!r}; registered: {self.names()}, or name "
                      f"your own as 'package.module:Name' or 'path/file.py:Name'.{hint}")

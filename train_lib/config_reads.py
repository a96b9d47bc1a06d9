"""Config fields that no code reads, reported at start-up: a typo must not go unnoticed.

    config = config_reads.track(config)        # a copy that records every field read
    ...                                        # setup, the first train step
    config_reads.report(config, "train")       # one warning line per unread field, once

A field is reported when nothing read it during the run and it was set by the
experiment: it is not declared in configs/base.py, or its value differs from the
declared default. Declared defaults that an option leaves unread (optim.momentum under
adamw) are not reported; a value set for them is, since it has no effect. Sections a
mode leaves unread by design are listed in UNREAD_BY_DESIGN.
"""

import ml_collections

from configs import base
from train_lib import writers

# What each mode never reads, on purpose: unread fields under these prefixes are not
# reported. A mode not listed here reports every unread field that was set.
TOOLS = ("sanity.", "lr_range.", "compile.")   # the settings of the tools' modes
UNREAD_BY_DESIGN = {
    "train": ("sample.", "eval.", *TOOLS),   # the other modes' own settings
    "eval": ("sample.", "train.", *TOOLS),
    "sample": ("train.", "data.eval_split", "evals.", *TOOLS),
    "ablate": (),
    "shardings": ("sample.", "eval.", "evals.", "train.", "optim.", *TOOLS),  # the layout only
    "sanity": ("sample.", "eval.", "evals.", "train.", "lr_range.", "optim.schedule", "optim.warmup_steps",
               "optim.end_learning_rate_factor"),   # overfits at a constant learning rate
    "lr_range": ("sample.", "eval.", "evals.", "train.", "sanity.", "optim.schedule",
                 "optim.warmup_steps", "optim.end_learning_rate_factor",
                 "optim.learning_rate",              # sweeps its own learning rates
                 "data.eval_split", "data.eval_batch_size", "data.eval_limit"),  # no eval
    "compile": ("sample.", "eval.", "evals.", "sanity.", "lr_range.", "data.eval_limit",
                "data.eval_split",
                "train.",),    # compiles the steps; runs none
    "tokenizer": tuple(f"{k}." for k in ("compile", "eval", "evals", "lr_range", "mesh",
                                        "model", "optim", "sample", "sanity", "task", "train",
                                        "mlflow", "wandb")) +   # reads the corpus only
                 ("dtype", "seed", "init_from", "init_skip", "writers", "data.batch_size",
                  "data.eval_batch_size", "data.eval_limit", "data.seq_len", "data.prefetch",
                  "data.worker_threads", "data.cache_mb", "data.tokenizer", "data.eval_split",
                  "data.train_split"),   # the local corpora have train + validation
}


class _Reads:
  """The shared record of one tracked config: fields read, and whether reported."""

  def __init__(self):
    self.paths, self.paused, self.reported = set(), 0, False



class _TrackedConfigDict(ml_collections.ConfigDict):
  """A ConfigDict that records the dotted path of every field read through it."""

  def __getitem__(self, key):
    value = super().__getitem__(key)
    reads = self.__dict__.get("_reads")  # None in copies made by ConfigDict's own methods
    if reads is not None and not reads.paused:
      path = f"{self.__dict__['_path']}{key}"
      if path not in (self.__dict__.get("_written") or ()):
        reads.paths.add(path)
    return value

  def __setitem__(self, key, value):
    super().__setitem__(key, value)
    written = self.__dict__.get("_written")   # a copy's own edits (see copy)
    if written is not None:
      written.add(f"{self.__dict__['_path']}{key}")

  def _whole(self, method, *args, **kwargs):
    reads = self.__dict__.get("_reads") or _Reads()
    reads.paused += 1   # serializing or printing the whole config reads no field
    try:
      return getattr(super(), method)(*args, **kwargs)
    finally:
      reads.paused -= 1

  def to_dict(self, *args, **kwargs):
    return self._whole("to_dict", *args, **kwargs)

  def to_json(self, *args, **kwargs):
    return self._whole("to_json", *args, **kwargs)

  def to_json_best_effort(self, *args, **kwargs):
    return self._whole("to_json_best_effort", *args, **kwargs)

  def __repr__(self):
    return self._whole("__repr__")

  def __str__(self):
    return self._whole("__str__")

  def __eq__(self, other):
    return self._whole("__eq__", other)


def track(config):
  """A copy of `config` whose reads are recorded (an already tracked config is returned)."""
  if isinstance(config, _TrackedConfigDict):
    return config
  copy = config.copy_and_resolve_references()
  reads = _Reads()
  _retype(copy, "", reads)
  return copy


def copy(config):
  """A copy of `config` whose reads count as reads of `config` (the compile search
  compiles edited copies; what they read was read), except reads of the fields the copy
  itself set: those read the copy's value, not config's."""
  if not isinstance(config, _TrackedConfigDict):
    return config.copy_and_resolve_references()
  out = config._whole("copy_and_resolve_references")   # copying reads no field
  _retype(out, config.__dict__["_path"], config.__dict__["_reads"], set())
  return out


def _retype(config, path, reads, written=None):
  object.__setattr__(config, "__class__", _TrackedConfigDict)
  config.__dict__.update(_reads=reads, _path=path, _written=written)
  for key, value in config.items(preserve_field_references=True):
    if isinstance(value, ml_collections.ConfigDict):
      _retype(value, f"{path}{key}.", reads, written)


def unread(config, mode: str) -> list:
  """[(path, value)] of the fields set by the experiment that nothing has read."""
  if not isinstance(config, _TrackedConfigDict):
    return []
  reads, defaults = config.__dict__["_reads"], dict(_leaves(base.get_config()))
  skip = UNREAD_BY_DESIGN.get(mode, ())
  reads.paused += 1
  try:
    return [(path, value) for path, value in _leaves(config)
            if path not in reads.paths and not path.startswith(skip)
            and (path not in defaults or defaults[path] != value)]
  finally:
    reads.paused -= 1


def _leaves(config, prefix=""):
  for key, value in config.items():
    if isinstance(value, ml_collections.ConfigDict):
      yield from _leaves(value, f"{prefix}{key}.")
    else:
      yield f"{prefix}{key}", value


def report(config, mode: str) -> list:
  """Prints one warning line per unread field, the first time it is called for `config`."""
  if not isinstance(config, _TrackedConfigDict) or config.__dict__["_reads"].reported:
    return []
  config.__dict__["_reads"].reported = True
  fields = unread(config, mode)
  for path, value in fields:
    writers.console(f"warning: config field {path}={value!r} is set but nothing in "
                    f"--mode={mode} reads it (a typo, or an option this run does not use?)")
  return fields

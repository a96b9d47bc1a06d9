"""What every run and tool needs, validated before any device work: the mesh, the data,
the model, the task, the optimizer and the sharded abstract state.

    s = setup.build(config)             # a Setup; devices=... for a subset
    state = state_lib.create(s.model, s.tx, s.task, s.dummy_batch, s.seed, s.state_sharding)
    workdir = setup.prepare_workdir(workdir)

The loop (train_lib/loop.py), the evaluators and the tools (sanity, lr_range, sample,
bench/) all start here, so they see the same checks and the same layout.
"""

import dataclasses
import os
from typing import Any

import flax.linen as nn
import jax
import optax

import input_pipeline
import models
from train_lib import chips, optim, partitioning, state as state_lib, tasks, writers
from train_lib.errors import UserError
from train_lib.tasks.base import Task

# config.dtype -> compute dtype; "fp8": bfloat16 with fp8 matmuls where the model offers them
DTYPES = {"float32": "float32", "bfloat16": "bfloat16", "fp8": "bfloat16"}


@dataclasses.dataclass
class Setup:
  mesh: jax.sharding.Mesh
  data: input_pipeline.Data
  model: nn.Module
  task: Task
  tx: optax.GradientTransformation
  schedule: Any          # step -> learning rate; {group: schedule} with optim.groups
  abstract_state: Any    # a TrainState of jax.ShapeDtypeStruct leaves
  state_sharding: Any    # a TrainState of NamedSharding leaves
  dummy_batch: dict      # one row of zeros shaped like a train batch
  rules: tuple           # config.mesh.rules: logical axis name -> mesh axes
  seed: int = 0


def build(config, devices=None) -> Setup:
  """Everything a run needs, validated before any device work.

  `devices` (default: all) lets tests and tools build the mesh over a subset.
  """
  check_ranges(config)
  if config.dtype not in DTYPES:
    raise UserError(f"dtype={config.dtype!r} is unknown; use one of {sorted(DTYPES)}")
  if config.train.num_steps <= 0:
    raise UserError(f"train.num_steps={config.train.num_steps} must be positive")
  if config.optim.grad_accum_steps < 1:
    raise UserError(f"optim.grad_accum_steps={config.optim.grad_accum_steps} must be >= 1")
  if config.dtype == "fp8":
    check_fp8(config.model.name, devices)
  mesh = partitioning.make_mesh(config.mesh, devices)
  partitioning.check_batch(config.data.batch_size, mesh, "batch_size")
  partitioning.check_batch(config.data.eval_batch_size, mesh, "eval_batch_size")
  accum = config.optim.grad_accum_steps
  shards = mesh.shape["data"] * mesh.shape["fsdp"]
  if config.data.batch_size % (accum * shards):
    raise UserError(f"data.batch_size={config.data.batch_size} must be divisible by "
                    f"optim.grad_accum_steps={accum} x {shards} data shards")

  batch_sharding = partitioning.batch_sharding(mesh)
  try:
    data = input_pipeline.build(config.data, seed=config.seed, sharding=batch_sharding)
  except input_pipeline.DataError as e:
    raise UserError(str(e)) from None
  try:
    extra = {"num_classes": data.num_classes, "dtype": getattr(jax.numpy, DTYPES[config.dtype]),
             "fp8": config.dtype == "fp8"}
    if config.model.get("vocab_size", None) == 0 and data.vocab_size:
      extra["vocab_size"] = data.vocab_size   # model.vocab_size=0: the data's (its tokenizer's)
    model = models.build(config.model, **extra)
  except (models.ModelError, TypeError) as e:
    raise UserError(str(e)) from None
  ignored = [k for k, _ in models.undeclared(config.model)]
  if ignored:
    writers.console(f"model {config.model.name}: not passed (fields it does not declare): "
                    f"{', '.join(f'model.{k}' for k in ignored)}")
  task = tasks.build(config.task, data, model)
  _check_model_fits_data(model, data)
  tx, schedule = optim.build_groups(config.optim, task.groups, config.train.num_steps)
  dummy = data.dummy_batch()
  try:
    boxed = state_lib.abstract_state(model, tx, task, dummy, config.seed, boxed=True)
  except ValueError as e:  # a model's own argument check, raised while tracing init
    raise UserError(f"model {config.model.name!r}: {e}") from None
  rules = partitioning.check_rules(config.mesh.rules, mesh)
  return Setup(mesh, data, model, task, tx, schedule, nn.meta.unbox(boxed),
               partitioning.state_sharding(mesh, boxed, rules), dummy, rules, config.seed)


def check_fp8(model_name: str, devices=None):
  """dtype=fp8 needs a model with fp8 matmuls and, on a GPU, one with fp8 units (compute
  capability 8.9: Ada, Hopper and later); the CPU emulates them (tests)."""
  if "fp8" not in models.fields(models.resolve(model_name)):
    raise UserError(f"dtype=fp8: model {model_name!r} has no fp8 matmuls (a model declares "
                    "`fp8: bool`, as models/transformer.py does); use dtype=bfloat16")
  device = (devices or jax.devices())[0]
  capability = getattr(device, "compute_capability", None)
  if device.platform == "gpu" and capability and tuple(map(int, capability.split("."))) < (8, 9):
    raise UserError(f"dtype=fp8: {device.device_kind} (compute capability {capability}) has no "
                    "fp8 matmuls (8.9 or later: Ada, Hopper); use dtype=bfloat16")


# (section.field, the smallest value allowed, what the value means); each an integer
RANGES = (("data.batch_size", 1, "the global batch"), ("data.eval_batch_size", 1, "the eval batch"),
          ("data.prefetch", 0, "batches prefetched"), ("data.worker_threads", 0, "threads"),
          ("data.cache_mb", 0, "megabytes (0 = never cache)"),
          ("train.log_every", 1, "steps between log lines"),
          ("train.eval_every", 0, "steps between evals (0 = only at the end)"),
          ("train.checkpoint_every", 0, "steps between checkpoints (0 = only at the end)"),
          ("train.keep_checkpoints", 1, "checkpoints kept"))


def check_ranges(config):
  """Every sized or periodic field in range, before anything is built; optim's fields are
  checked by optim.build. One UserError naming the field and what it may be."""
  for key, low, meaning in RANGES:
    section, name = key.split(".")
    if name not in config[section]:
      continue
    value = config[section][name]
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
      raise UserError(f"{key}={value!r} is out of range: {meaning}, an integer >= {low}")
  tc = config.train
  if not tc.divergence_factor >= 0 or tc.divergence_patience < 1:
    raise UserError(f"train.divergence_factor={tc.divergence_factor} must be >= 0 (0 = off) "
                    f"and train.divergence_patience={tc.divergence_patience} >= 1")
  steps = tuple(tc.profile_steps)
  if steps and not (len(steps) == 2 and all(isinstance(v, int) and not isinstance(v, bool)
                                            for v in steps) and steps[0] >= 0 and steps[1] >= 1):
    raise UserError(f"train.profile_steps={steps} must be START,COUNT: two integers, "
                    "START >= 0 and COUNT >= 1, e.g. --config.train.profile_steps=10,5")


def _check_model_fits_data(model, data):
  vocab, max_len = getattr(model, "vocab_size", None), getattr(model, "max_len", None)
  if data.vocab_size and vocab is not None and vocab < data.vocab_size:
    raise UserError(f"model.vocab_size={vocab} is smaller than the data's vocabulary "
                    f"({data.vocab_size}); raise it")
  if data.seq_len and max_len is not None and max_len < data.seq_len:
    raise UserError(f"model.max_len={max_len} is shorter than data.seq_len={data.seq_len}")


def formula_flops_per_item(s: "Setup", params) -> float:
  """Training FLOPs per token from the model's own formula (flops_per_token, e.g. 6N +
  12LDT), where it has one (else 0): a cross-check of train_lib.flops' counted number."""
  fn = getattr(s.model, "flops_per_token", None)
  if fn is None or not s.data.seq_len:
    return 0.0
  return float(fn(state_lib.num_params(params), s.data.seq_len))


def datasheet_peak_tflops() -> float:
  """Dense bf16 peak of one device (train_lib/chips.py), for the mfu in metrics.jsonl."""
  return chips.peak_tflops(jax.devices()[0].device_kind)


def peak_flops(config) -> float:
  return (config.train.peak_tflops or datasheet_peak_tflops()) * 1e12


def prepare_workdir(workdir: str) -> str:
  given, workdir = workdir, os.path.abspath(os.path.expanduser(workdir))
  if workdir != given:
    writers.console(f"workdir {given} is {workdir}")
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise UserError(f"workdir {workdir} is a file, not a directory; choose another --workdir")
  parent = os.path.dirname(workdir)
  while parent and not os.path.exists(parent):
    parent = os.path.dirname(parent)
  if parent and not os.path.isdir(parent):
    raise UserError(f"workdir {workdir} cannot be made: {parent} is a file, not a directory; "
                    "choose another --workdir")
  for name, want_dir in (("checkpoints", True), ("quarantine", True), ("lock", False)):
    path = os.path.join(workdir, name)
    if os.path.lexists(path) and (os.path.isdir(path) != want_dir or os.path.islink(path)):
      what = "a symbolic link" if os.path.islink(path) else (
          "a directory" if os.path.isdir(path) else "a file")
      raise UserError(f"{path} is {what}, not a {'directory' if want_dir else 'plain file'}; "
                      "move it away or choose another --workdir")
  try:
    os.makedirs(workdir, exist_ok=True)
    probe = os.path.join(workdir, f".write_test_{jax.process_index()}_{os.getpid()}")
    with open(probe, "w"):
      pass
    os.remove(probe)
  except OSError as e:
    raise UserError(f"workdir {workdir} is not writable ({e.strerror}); "
                    "choose another --workdir") from None
  return workdir


def enable_compilation_cache(path: str):
  """Compiled steps persist across restarts: a rerun skips XLA compilation."""
  if path:
    jax.config.update("jax_compilation_cache_dir", os.path.expanduser(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)

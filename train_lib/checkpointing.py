"""Checkpoints: train state and data-iterator position, committed together per step.

    ckpt = Checkpointer(workdir, config.train)
    ckpt.save(step, state, data.train_iter)          # asynchronous; atomic per step
    state = ckpt.restore(step, target, data.train_iter)  # target: ShapeDtypeStructs with shardings
    ckpt.close()                                      # waits for pending saves

Restoring onto a different mesh, device count or process count works: arrays are read
straight into the target's shardings, and the data position is the same on every process.
"""

import dataclasses
import json
import os
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp

from train_lib.errors import UserError


def sharded_target(abstract_state, shardings):
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                      abstract_state, shardings)


class DataHandler(grain.checkpoint.CheckpointHandler):
  """grain's handler, which also restores onto another number of processes: each process
  saves its own file, but all of them hold the same position (the next global batch)."""

  def restore(self, directory, item=None, args=None):
    own = directory / f"process_{jax.process_index()}-of-{jax.process_count()}.json"
    saved = sorted(directory.glob("process_*-of-*.json"))
    if own.exists() or not saved:
      return super().restore(directory, item, args)
    item = item or args.item
    item.set_state(json.loads(saved[0].read_text()))
    return item


@ocp.args.register_with_handler(DataHandler, for_save=True)
@dataclasses.dataclass
class DataSave(ocp.args.CheckpointArgs):
  item: Any


@ocp.args.register_with_handler(DataHandler, for_restore=True)
@dataclasses.dataclass
class DataRestore(ocp.args.CheckpointArgs):
  item: Any


class Checkpointer:

  def __init__(self, workdir: str, train_config=None, *, read_only: bool = False):
    self.directory = os.path.join(workdir, "checkpoints")
    keep = train_config.keep_checkpoints if train_config else None
    period = train_config.keep_period if train_config else 0
    if read_only and not os.path.isdir(self.directory):
      raise UserError(f"no checkpoint in {workdir}: {self.directory} does not exist; "
                      "train first or point --workdir at a run")
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep or None, keep_period=period or None, create=not read_only,
        cleanup_tmp_directories=not read_only,
        enable_async_checkpointing=bool(train_config and train_config.async_checkpoints))
    self.manager = ocp.CheckpointManager(
        self.directory, options=options,
        item_handlers={"state": ocp.StandardCheckpointHandler(),
                       "data": DataHandler()})

  def all_steps(self):
    return sorted(self.manager.all_steps())

  def latest_step(self):
    return self.manager.latest_step()

  def save(self, step: int, state, data_iter) -> bool:
    return self.manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), data=DataSave(data_iter)),
        force=True)

  def restore(self, step: int, target, data_iter=None):
    """Restores `step` into `target`; also the data position when data_iter is given."""
    steps = self.all_steps()
    if step not in steps:
      raise UserError(f"step {step} not found in {self.directory}; available: {steps}")
    args = {"state": ocp.args.StandardRestore(target)}
    if data_iter is not None:
      args["data"] = DataRestore(data_iter)
    restored = self.manager.restore(step, args=ocp.args.Composite(**args))
    return restored["state"]

  def wait(self):
    self.manager.wait_until_finished()

  def close(self):
    self.manager.wait_until_finished()
    self.manager.close()


def open_for_reading(workdir: str, step: int = -1):
  """(Checkpointer, step) for eval and sample: the newest step, or `step` if >= 0.
  Refuses, before any device work, a workdir without checkpoints or a missing step."""
  workdir = os.path.abspath(os.path.expanduser(workdir))
  ckpt = Checkpointer(workdir, read_only=True)
  steps = ckpt.all_steps()
  if not steps:
    raise UserError(f"no checkpoint in {workdir}; train first or point --workdir at a run")
  wanted = steps[-1] if step < 0 else step
  if wanted not in steps:
    raise UserError(f"step {wanted} not found in {ckpt.directory}; available: {steps}")
  return ckpt, wanted

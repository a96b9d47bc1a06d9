"""Checkpoints: train state and data-iterator position, committed together per step.

    ckpt = Checkpointer(workdir, config.train)        # refuses links; drops unfinished saves
    step, state = ckpt.restore_newest(target, data, config)  # (None, None) in a fresh workdir
    ckpt.save(step, state, data.train_iter, config)   # asynchronous; atomic per step
    state = ckpt.restore(step, target)                # target: ShapeDtypeStructs with shardings
    ckpt.close()                                      # waits for pending saves

Every step is verified before its values are used: once a save has committed, the sha256 of
each of its files (arrays, array metadata, the data position) goes to the step's
checksums.json, and a restore first checks every file against it. A step that fails, or
carries no checksums (a save killed before they were written), is treated as damaged.
Retention deletes only steps older than the newest `keep_checkpoints` verified ones.

Nothing goes wrong silently. A newest step that cannot be read is moved to
workdir/quarantine/ (never deleted) and the next older one restored; train.restore_step=N
rolls back, moving newer steps aside so that later saves are not skipped; a save that fails
(disk full, permissions) stops the run with one line and removes its temporary folder; a
checkpoint that does not fit the model is refused with every differing path, shape and dtype
and the config keys that changed. Restoring onto another mesh or device count works: arrays
are read straight into the target's shardings, and the data position is global.
"""

import contextlib
import datetime
import fcntl
import concurrent.futures
import glob
import hashlib
import json
import logging as py_logging
import os
import shutil
import threading
import time

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp
from flax.traverse_util import flatten_dict
from jax.experimental import multihost_utils
from orbax.checkpoint._src.metadata import array_metadata_store
from orbax.checkpoint._src.serialization import type_handler_registry

from train_lib import optim, writers
from train_lib.errors import UserError

TMP_MARK = ".orbax-checkpoint-tmp"
# Config keys that shape the train state: the likely cause when a checkpoint does not fit.
STATE_KEYS = ("model.", "optim.", "task.", "dtype", "data.name", "data.synthetic",
              "data.vocab_size", "data.seq_len")


MANIFEST = "checksums.json"


class DamagedCheckpoint(UserError):
  """A step that exists but cannot be read (truncated or missing files)."""


def _sha256(path: str) -> str:
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 24), b""):
      digest.update(chunk)   # hashlib releases the GIL: files hash in parallel threads
  return digest.hexdigest()


def _files(step_dir: str) -> list:
  """The step's files, relative to it, without the checksums (and their temporary file)."""
  out = []
  for root, _, names in os.walk(step_dir):
    for name in names:
      rel = os.path.relpath(os.path.join(root, name), step_dir)
      if not rel.startswith(MANIFEST):
        out.append(rel)
  return sorted(out)


def _digests(step_dir: str, names) -> dict:
  with concurrent.futures.ThreadPoolExecutor(max(1, min(8, os.cpu_count() or 1))) as pool:
    digests = pool.map(lambda n: _sha256(os.path.join(step_dir, n)), names)
    return {n: [os.path.getsize(os.path.join(step_dir, n)), d] for n, d in zip(names, digests)}


def seal(step_dir: str) -> None:
  """Writes step_dir/checksums.json: the size and sha256 of every file of the step."""
  files = _files(step_dir)
  writers.write_json(os.path.join(step_dir, MANIFEST),
                     {"algorithm": "sha256", "files": _digests(step_dir, files)}, indent=0)


def sealed(directory: str, steps) -> list:
  """Those of `steps` whose save sealed them (wrote the MANIFEST of checksums)."""
  return [s for s in steps if os.path.exists(os.path.join(directory, str(s), MANIFEST))]


def verify(step_dir: str) -> str:
  """"" if every file of the step matches its checksums; else what does not."""
  try:
    with open(os.path.join(step_dir, MANIFEST)) as f:
      want = json.load(f)["files"]
  except FileNotFoundError:
    return (f"it has no {MANIFEST} (its save did not finish, or it predates checksums; "
            "move it back from quarantine/ only if you trust it)")
  except (OSError, ValueError, KeyError, TypeError) as e:
    return f"its {MANIFEST} is unreadable ({type(e).__name__})"
  have = _files(step_dir)
  problems = [f"{n} missing" for n in sorted(set(want) - set(have))]
  problems += [f"{n} not in {MANIFEST}" for n in sorted(set(have) - set(want))]
  common = [n for n in have if n in want]
  sizes = {n: os.path.getsize(os.path.join(step_dir, n)) for n in common}
  problems += [f"{n} has {sizes[n]} bytes, not {want[n][0]}" for n in common
               if sizes[n] != want[n][0]]
  same_size = [n for n in common if sizes[n] == want[n][0]]
  got = _digests(step_dir, same_size)
  problems += [f"{n} has another sha256 than when saved" for n in same_size
               if got[n][1] != want[n][1]]
  return "; ".join(problems[:5]) + (f" (and {len(problems) - 5} more)"
                                    if len(problems) > 5 else "")


def sharded_target(abstract_state, shardings):
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                      abstract_state, shardings)


def keypath(path) -> str:
  """A pytree key path as "params/Dense_0/kernel"."""
  return jax.tree_util.keystr(path, simple=True, separator="/")


def flatten(tree) -> dict:
  return {keypath(p): x for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]}


def layout(tree) -> dict:
  """The device count and mesh axes that hold a tree (from its first leaf's sharding)."""
  sharding = getattr(jax.tree.leaves(tree)[0], "sharding", None)
  mesh = getattr(sharding, "mesh", None)
  return {"devices": len(sharding.device_set) if sharding else 0,
          "mesh": dict(mesh.shape) if mesh is not None else {}}


def config_dict(config) -> dict:
  return json.loads(config.to_json_best_effort()) if config is not None else {}


def lock_workdir(workdir: str):
  """Holds workdir/lock for the life of the returned file: a second run on the same workdir
  is refused. The kernel drops the lock when the process dies, so a killed run never blocks."""
  f = open(os.path.join(workdir, "lock"), "a+")
  if jax.process_index() == 0:
    try:
      fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
      f.seek(0)
      holder = f.read().strip() or "unknown"
      f.close()
      raise UserError(f"workdir {workdir} is in use by another run ({holder}); wait for it "
                      "to end or choose another --workdir") from None
    f.seek(0)
    f.truncate()
    f.write(f"pid {os.getpid()} since {datetime.datetime.now().isoformat(timespec='seconds')}")
    f.flush()
  return f


def refuse_links(directory: str):
  """A checkpoint folder holds plain files and folders: a symbolic link could point anywhere."""
  for root, dirs, files in os.walk(directory):
    for name in dirs + files:
      path = os.path.join(root, name)
      if os.path.islink(path):
        raise UserError(f"refusing to read checkpoints in {directory}: {path} is a symbolic "
                        f"link (to {os.readlink(path)}); copy real files there instead")


class _QuietOrbax(py_logging.Filter):
  """Orbax logs save failures with tracebacks; they reach the user as one line instead."""

  def filter(self, record):
    return record.levelno < py_logging.ERROR or "orbax" not in record.pathname


def _write_small_arrays_whole():
  """In one process, orbax's replica-parallel save still splits each replicated array
  among its devices: one compiled slice per array shape, which a small array never earns
  back (ResNet-50's first save on 8 CPU devices compiled 184 slices, 5 s), since the same
  process writes every slice. There, an array whose per-device slice is under 1 MiB is
  written whole; larger ones, and every array of a multi-process run (where each process
  writes its share), keep orbax's default. The handler is orbax's default with that one
  option."""
  if jax.process_count() == 1:
    type_handler_registry.GLOBAL_TYPE_HANDLER_REGISTRY.add(
        jax.Array, ocp.type_handlers.ArrayHandler(
            array_metadata_store=array_metadata_store.Store(),
            min_slice_bytes_for_replica_parallel=2**20), override=True, ignore_warnings=True)


class Checkpointer:

  def __init__(self, workdir: str, train_config=None, *, read_only: bool = False):
    self.workdir = workdir
    self.directory = os.path.join(workdir, "checkpoints")
    self.keep = train_config.keep_checkpoints if train_config else 0
    self.period = train_config.keep_period if train_config else 0
    self.read_only, self._sealing, self._unsealed, self._verified = read_only, None, [], set()
    if read_only and not os.path.isdir(self.directory):
      raise UserError(f"no checkpoint in {workdir}: {self.directory} does not exist; "
                      "train first or point --workdir at a run")
    refuse_links(self.directory)
    for tmp in self._unfinished():
      writers.console(f"{'ignoring' if read_only else 'removing'} incomplete checkpoint {tmp} "
                      "(a save that did not finish)")
      if not read_only and jax.process_index() == 0:
        shutil.rmtree(tmp, ignore_errors=True)
    if not any(isinstance(f, _QuietOrbax) for f in py_logging.getLogger("absl").filters):
      py_logging.getLogger("absl").addFilter(_QuietOrbax())
    _write_small_arrays_whole()
    # Retention is ours (self._retain): only verified steps count towards keep_checkpoints.
    options = ocp.CheckpointManagerOptions(
        max_to_keep=None, create=not read_only,
        cleanup_tmp_directories=not read_only,
        enable_async_checkpointing=bool(train_config and train_config.async_checkpoints))
    self.manager = ocp.CheckpointManager(
        self.directory, options=options,
        item_handlers={"state": ocp.StandardCheckpointHandler(),
                       "data": grain.checkpoint.CheckpointHandler()})

  def _unfinished(self):
    return sorted(glob.glob(os.path.join(self.directory, f"*{TMP_MARK}*")))

  def all_steps(self):
    return sorted(self.manager.all_steps())

  def latest_step(self):
    return self.manager.latest_step()

  def save(self, step: int, state, data_iter, config=None) -> bool:
    """Starts saving `step`; raises UserError for this or an earlier save that failed."""
    newer = [s for s in self.all_steps() if s >= step]
    if newer:
      raise UserError(f"cannot save step {step}: {self.directory} already holds steps "
                      f"{newer}; to go back, set train.restore_step (newer steps move aside)")
    meta = {"config": config_dict(config), **layout(state)}
    self._finish_sealing()
    with self._surface_errors():
      saved = self.manager.save(step, args=ocp.args.Composite(
          state=ocp.args.StandardSave(state), data=grain.checkpoint.CheckpointSave(data_iter)),
          custom_metadata=meta, force=True)
      self.manager.check_for_errors()
    if saved:
      self._unsealed.append(step)
      if jax.process_index() == 0:   # checksums as soon as the save commits, off the loop
        self._sealing = threading.Thread(target=self._seal_when_committed,
                                         args=(list(self._unsealed),), daemon=True)
        self._sealing.start()
    return saved

  def _seal_when_committed(self, steps):
    while self.manager.is_saving_in_progress():
      time.sleep(0.02)
    for step in steps:
      step_dir = os.path.join(self.directory, str(step))
      if os.path.isdir(step_dir) and not os.path.exists(os.path.join(step_dir, MANIFEST)):
        seal(step_dir)

  def _finish_sealing(self):
    """Joins the checksum writer, then deletes steps beyond retention (every process, at
    the same point of the run)."""
    if self._sealing is not None:
      self._sealing.join()
      self._sealing = None
    if self._unsealed and jax.process_count() > 1:
      multihost_utils.sync_global_devices("checkpoint checksums written")
    self._unsealed = []
    self._retain()

  def _retain(self):
    if self.read_only or not self.keep:
      return
    steps = self.all_steps()
    done = sealed(self.directory, steps)
    kept = set(done[-self.keep:]) | {s for s in steps if s > (done or [-1])[-1]}
    kept |= {s for s in steps if self.period and s % self.period == 0}
    for step in steps:
      if step not in kept:
        self.manager.delete(step)

  @contextlib.contextmanager
  def _surface_errors(self):
    try:
      yield
    except Exception as e:  # orbax and tensorstore raise many types; all mean the save failed
      removed = self._unfinished()
      for path in removed:
        shutil.rmtree(path, ignore_errors=True)
      self.manager.reload()
      steps = sealed(self.directory, self.all_steps())
      message = " ".join(str(e).split()) or type(e).__name__
      raise UserError(f"saving a checkpoint in {self.directory} failed: {message}; removed "
                      f"{', '.join(removed) or 'no temporary folder'}; newest verified "
                      f"checkpoint: {steps[-1] if steps else 'none'}") from None

  def restore(self, step: int, target, data=None, config=None):
    """Restores `step` into `target`, and the data position into data.train_iter when `data`
    is given. UserError if it does not fit the model; DamagedCheckpoint if it cannot be read."""
    steps = self.all_steps()
    if step not in steps:
      raise UserError(f"step {step} not found in {self.directory}; available: {steps}")
    if step not in self._verified:
      self.check(step)
    try:
      meta = self.manager.metadata(step)
      have = flatten(meta.item_metadata["state"])
      saved = meta.custom_metadata or {}
      if not have:
        raise ValueError("its state holds no arrays (state/_METADATA missing?)")
    except Exception as e:  # unreadable metadata: a damaged step
      raise self._damaged(step, e) from None
    casts = self._check_fits(step, have, flatten(target), saved, config)
    try:
      state = self.manager.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(target)))["state"]
    except Exception as e:  # tensorstore and orbax raise many types for missing or bad files
      raise self._damaged(step, e) from None
    for path, was, now in casts:
      writers.console(f"cast {path} from {was} to {now} (train.allow_dtype_cast)")
    if data is not None:   # a training run resumes: what it would continue differently
      self._check_resume(step, saved.get("config", {}), config)
      self.restore_data(step, data, config, saved.get("config", {}))
    self._log_reshard(step, saved, target)
    return state

  def check(self, step: int) -> None:
    """DamagedCheckpoint unless every file of `step` matches its checksums (checked by the
    first process, the verdict shared with every process)."""
    problem = verify(os.path.join(self.directory, str(step))) if jax.process_index() == 0 else ""
    if jax.process_count() > 1:
      failed = multihost_utils.broadcast_one_to_all(np.int32(bool(problem)))
      problem = problem or ("it failed verification on process 0" if failed else "")
    if problem:
      raise DamagedCheckpoint(f"checkpoint step {step} in {self.directory} failed "
                              f"verification: {problem}")
    self._verified.add(step)

  def _damaged(self, step, e):
    reason = " ".join(str(e).split()) or type(e).__name__
    reason = reason if len(reason) < 400 else reason[:400] + " ..."
    return DamagedCheckpoint(f"checkpoint step {step} in {self.directory} cannot be read: "
                             f"{reason}")

  def _check_fits(self, step, have, want, saved, config):
    """The differences between a checkpoint's arrays and the target's, all in one error."""
    common = [p for p in want if p in have]
    missing = [p for p in want if p not in have]
    unexpected = [p for p in have if p not in want]
    shapes = [f"{p} {tuple(have[p].shape)} -> {tuple(want[p].shape)}" for p in common
              if tuple(have[p].shape) != tuple(want[p].shape)]
    casts = [(p, np.dtype(have[p].dtype), np.dtype(want[p].dtype)) for p in common
             if np.dtype(have[p].dtype) != np.dtype(want[p].dtype)]
    problems = [f"{what}: {', '.join(paths)}" for what, paths in (
        ("missing from the checkpoint", missing), ("not in the model", unexpected),
        ("shape differs", shapes)) if paths]
    allow_cast = config is not None and config.train.allow_dtype_cast
    if casts and not allow_cast:
      problems.append("dtype differs: " + ", ".join(f"{p} {a} -> {b}" for p, a, b in casts) +
                      " (--config.train.allow_dtype_cast=True casts them)")
    if problems:
      changed = config is not None and changed_keys(saved.get("config", {}), config_dict(config),
                                                    STATE_KEYS)
      raise UserError(f"checkpoint step {step} in {self.directory} does not fit the model: " +
                      "; ".join(problems) + (f"; config keys changed since it was saved: "
                                             f"{', '.join(changed)}" if changed else ""))
    return casts

  def _check_resume(self, step, saved, config):
    """Refuses (one line) a resume that would silently continue on another learning-rate
    schedule or another data order, unless the config allows it; an allowed change is logged."""
    if config is None or not saved:
      return
    tc, was = config.train, saved.get("train", {})
    change = optim.schedule_change(saved.get("optim", {}), was.get("num_steps", 0),
                                   config_dict(config)["optim"], tc.num_steps, step)
    if change:
      steps = (f"train.num_steps {was.get('num_steps')} -> {tc.num_steps}, "
               if was.get("num_steps") != tc.num_steps else "")
      if not tc.allow_schedule_change:
        raise UserError(f"resuming step {step} would change its learning-rate schedule "
                        f"({steps}{change}); keep the saved train.num_steps and optim "
                        "settings, or pass --config.train.allow_schedule_change=True")
      writers.console(f"schedule changed on resume (train.allow_schedule_change): {steps}{change}")
    if "seed" in saved and saved["seed"] != config.seed:
      if not tc.allow_seed_change:
        raise UserError(f"checkpoint step {step} was trained with seed={saved['seed']}, now "
                        f"seed={config.seed}: the data order would change mid-run; keep "
                        "--config.seed or pass --config.train.allow_seed_change=True")
      writers.console(f"seed {saved['seed']} -> {config.seed} on resume (train.allow_seed_change)")

  def restore_data(self, step, data, config=None, saved_config=None):
    """The data position: a global batch index, the same on every process, so it carries over
    to another process or device count; a changed batch size is refused unless the epoch may
    restart (grain would name a per-process file that another process count lacks)."""
    folder = os.path.join(self.directory, str(step), "data")
    own = f"process_{jax.process_index()}-of-{jax.process_count()}.json"
    try:
      names = sorted(os.listdir(folder))
      name = own if own in names else next(n for n in names if n.startswith("process_0-of-"))
      with open(os.path.join(folder, name)) as f:
        position = json.load(f)
      index = int(position["next_index"])
    except (OSError, ValueError, KeyError, TypeError, StopIteration) as e:
      raise self._damaged(step, e if str(e) else f"no data position in {folder}") from None
    if index != step and config is not None:   # one global batch per step
      if not config.train.allow_data_position_mismatch:
        raise UserError(f"checkpoint step {step} holds data position {index} (batches read), "
                        f"not {step}: its data iterator does not belong to that step; pass "
                        "--config.train.allow_data_position_mismatch=True to continue from it")
      writers.console(f"data position {index} at step {step} (train.allow_data_position_mismatch)")
    old = (saved_config or {}).get("data", {}).get("batch_size")
    new = config.data.batch_size if config is not None else old
    if old and new != old:
      if not config.data.restart_epoch_on_resume:
        raise UserError(f"checkpoint step {step} was saved with data.batch_size={old}, now "
                        f"{new}: its data position cannot carry over exactly; pass "
                        "--config.data.restart_epoch_on_resume=True to restart its epoch")
      epoch = index * old // data.num_train
      index = epoch * data.num_train // new
      writers.console(f"data.batch_size {old} -> {new}: restarting epoch {epoch} at batch "
                      f"{index} (data.restart_epoch_on_resume)")
    if name != own:
      writers.console(f"data position of step {step} carried over from {name} to {own}")
    data.train_iter.set_state({**position, "next_index": index})
    getattr(data.train_iter, "start_prefetch", lambda: None)()

  def _log_reshard(self, step, saved, target):
    now = layout(target)
    was = {k: saved.get(k) for k in now}
    if saved.get("devices") and now["devices"] and was != now:
      writers.console(f"resharded step {step} from mesh {was['mesh']} on {was['devices']} "
                      f"devices to mesh {now['mesh']} on {now['devices']} devices")

  def restore_newest(self, target, data=None, config=None):
    """(step, state) of the newest step that restores, (None, None) if there is none.

    A step that cannot be read moves to workdir/quarantine/ and the next older one is
    tried. With train.restore_step=N, newer steps move aside once N is restored, except
    those that a run with the same restore_step wrote (its own continuation)."""
    steps = self.all_steps()
    rollback = config.train.restore_step if config is not None else -1
    if rollback >= 0 and rollback not in steps:
      raise UserError(f"train.restore_step={rollback} not found in {self.directory}; "
                      f"available: {steps}")
    aside = [s for s in steps if s > rollback >= 0 and self._restore_step_of(s) != rollback]
    tried, damaged = [], []
    for step in reversed([s for s in steps if s not in aside]):
      try:
        state = self.restore(step, target, data, config)
      except DamagedCheckpoint as e:
        moved = self.move_aside(step, "damaged")
        tried.append(f"{e} (moved to {moved})")
        damaged.append(str(step))
        writers.console(f"{e}; moved it to {moved}, trying an older step")
        continue
      if damaged:
        writers.console(f"restored step {step}, the newest that verifies, in place of damaged "
                        f"step {', '.join(damaged)}")
      for s in aside:
        writers.console(f"rolled back to step {step} (train.restore_step): moved step {s} "
                        f"to {self.move_aside(s, 'rolled-back')}")
      return step, state
    if tried:
      raise UserError(f"no checkpoint in {self.directory} could be restored; tried: " +
                      "; ".join(tried))
    return None, None

  def _restore_step_of(self, step):
    try:
      return self.manager.metadata(step).custom_metadata["config"]["train"]["restore_step"]
    except Exception:  # an older or unreadable step: not this rollback's continuation
      return None

  def move_aside(self, step: int, reason: str) -> str:
    """Moves checkpoints/<step> to quarantine/<step>-<reason>-<time>; returns the new path."""
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")
    dest = os.path.join(self.workdir, "quarantine", f"{step}-{reason}-{stamp}")
    if jax.process_index() == 0:
      os.makedirs(os.path.dirname(dest), exist_ok=True)
      shutil.move(os.path.join(self.directory, str(step)), dest)
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices(f"moved step {step} aside")
    self.manager.reload()
    return dest

  def wait(self):
    with self._surface_errors():
      self.manager.wait_until_finished()
    self._finish_sealing()

  def close(self):
    self.wait()
    self.manager.close()


def changed_keys(old: dict, new: dict, prefixes=()) -> list:
  """ "key old -> new" for every dotted key whose value differs (restricted to prefixes)."""
  a, b = flatten_dict(old, sep="."), flatten_dict(new, sep=".")
  keys = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k) and
                (not prefixes or k.startswith(prefixes)))
  return [f"{k} {a.get(k)} -> {b.get(k)}" for k in keys]


def open_for_reading(workdir: str, step: int = -1):
  """(Checkpointer, step) for eval and sample: the newest verified step, or `step` if >= 0.
  Refuses, before any device work, a workdir without checkpoints, a missing step or a
  named step that fails verification; a newer step that fails is reported and passed over."""
  workdir = os.path.abspath(os.path.expanduser(workdir))
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise UserError(f"workdir {workdir} is a file, not a run's directory; point --workdir "
                    "at a run")
  ckpt = Checkpointer(workdir, read_only=True)
  steps = ckpt.all_steps()
  if not steps:
    raise UserError(f"no checkpoint in {workdir}; train first or point --workdir at a run")
  if step >= 0:
    if step not in steps:
      raise UserError(f"step {step} not found in {ckpt.directory}; available: {steps}")
    ckpt.check(step)
    return ckpt, step
  for wanted in reversed(steps):
    try:
      ckpt.check(wanted)
    except DamagedCheckpoint as e:
      writers.console(f"{e}; passing over it")
      continue
    if wanted != steps[-1]:
      writers.console(f"using step {wanted}, the newest checkpoint that verifies")
    return ckpt, wanted
  raise UserError(f"no checkpoint in {ckpt.directory} verifies (steps {steps}); see the "
                  "lines above, or train again")

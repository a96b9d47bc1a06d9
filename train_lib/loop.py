"""The run, top to bottom: mesh, input, model and optimizer, sharded state, steps,
checkpoints, loop, evaluation.

    result = loop.train(config, workdir)     # resumes from the newest checkpoint
    result = loop.train(config, workdir, watchers=[fn])  # fn(step, split, metrics) -> stop?
    result = loop.evaluate(config, workdir)  # newest (or config.eval.step) checkpoint
"""

import contextlib
import glob
import os
import queue
import shutil
import signal
import threading
import time

import jax
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

from train_lib import checkpointing, config_reads, distributed, evaluators, guards
from train_lib import flops as flops_lib
from train_lib import metrics as metrics_lib, partitioning
from train_lib import setup as setup_lib, state as state_lib, step, weights, writers
from train_lib.errors import Diverged, Preempted, UserError

def progress_line(task, current: int, num_steps: int, means: dict) -> str:
  """The console's line per log interval: the loss, the task's console metrics, speed."""
  parts = [f"step {current}/{num_steps}", f"loss {means['loss']:.4f}"]
  parts += [f"{k} {means[k]:.3f}" for k in task.console if k in means]
  sps = means["steps_per_sec"]
  items = means[f"{task.unit}_per_sec"]
  parts += [f"{sps:.1f} steps/s", f"{items:,.0f} tok/s" if task.unit == "tokens"
            else f"{items:.0f} ex/s"]
  if "mfu" in means:
    parts.append(f"MFU {means['mfu']:.1%}")
  if means.get("data_wait_fraction", 0.0) > 0.05:
    parts.append(f"data wait {means['data_wait_fraction']:.0%}")
  parts.append(f"ETA {writers.format_eta((num_steps - current) / sps)}")
  return " | ".join(parts)


def train(config, workdir: str, watchers=()) -> dict:
  """Trains, evaluates and checkpoints.

  A watcher is called as watcher(step, split, metrics) at every logged point (train and
  eval metrics) and may stop the run there by returning True: a checkpoint is saved and
  the result says "stopped_early". Optional methods: watcher.start(setup, workdir) once the
  checks have passed and the workdir is locked, before the first step; watcher.finish(
  result) after a run that ends without an error. train_lib.tools.train attaches the
  researcher's watchers (the run record, the diagnosis, the loss curves)."""
  fresh = not os.path.exists(os.path.abspath(os.path.expanduser(workdir)))
  workdir = setup_lib.prepare_workdir(workdir)
  try:
    with checkpointing.lock_workdir(workdir):
      try:
        result = _train(config, workdir, watchers)
        StopSignals.completed += 1
      finally:
        StopSignals.inside = False
  except UserError:
    if fresh:   # refused before a step: leave no workdir behind that holds only a lock
      _remove_empty_workdir(workdir)
    raise
  if StopSignals.deferred:   # arrived after the steps, while the run saved and evaluated
    name = signal.Signals(StopSignals.deferred.pop()).name
    raise Preempted(f"stopped by {name} after the training steps; the run completed its save "
                    f"and evaluation first ({result})")
  return result


def _remove_empty_workdir(workdir: str):
  """Removes what a refused first launch made (lock, empty logs) and the folder, if nothing
  else is there."""
  if jax.process_index() != 0:
    return
  for name in ("lock", "metrics.jsonl", "launches.jsonl"):
    path = os.path.join(workdir, name)
    if os.path.isfile(path) and (name == "lock" or not os.path.getsize(path)):
      os.remove(path)
  events = os.path.join(workdir, "tensorboard")
  if os.path.isdir(events) and all(n.startswith("events.") for n in os.listdir(events)):
    shutil.rmtree(events)
  try:
    os.rmdir(workdir)
  except OSError:   # something else is there: keep it
    pass


def _train(config, workdir: str, watchers) -> dict:
  if config.init_from and not glob.glob(os.path.join(workdir, "checkpoints", "[0-9]*")):
    weights.check(config.init_from)   # a fresh run will read it: before any device work
  s = setup_lib.build(config)
  tc = config.train
  batch_sharding = partitioning.batch_sharding(s.mesh)
  evals = evaluators.Suite(config, s, workdir)
  ckpt = checkpointing.Checkpointer(workdir, tc)
  writer = writers.Writer(workdir)
  try:
    target = checkpointing.sharded_target(s.abstract_state, s.state_sharding)
    latest, state = ckpt.restore_newest(target, s.data, config)
    if latest is not None:
      logging.info("resumed from step %d in %s", latest, ckpt.directory)
      writers.console(f"resumed from checkpoint at step {latest}")
    else:
      state = state_lib.create(s.model, s.tx, s.task, s.dummy_batch, config.seed,
                               s.state_sharding)
      if config.init_from:
        state = weights.init_state(state, config, s.task, s.state_sharding)
        writers.console(f"parameters from {config.init_from}" + (
            f" (kept at init: {', '.join(config.init_skip)})" if config.init_skip else ""))
    counted = s.data.eval_count()
    writers.console(f"model {config.model.name}: {state_lib.num_params(state.params):,} "
                    f"parameters; {s.data.num_train:,} train / {s.data.num_eval:,} eval "
                    f"examples per epoch" + (f" (the eval counts {counted:,} {s.task.unit})"
                                             if counted != s.data.num_eval else "") +
                    f"; mesh {dict(s.mesh.shape)}")
    for watcher in watchers:   # the checks against the checkpoint have passed: the run starts
      if hasattr(watcher, "start"):
        watcher.start(s, workdir)
    start = int(state.step)
    result = None
    if start < tc.num_steps:
      result = _train_loop(config, s, state, ckpt, writer, evals, batch_sharding, start,
                           watchers)
    else:
      writers.console(f"already trained to step {start}; evaluating")
    if result is None:  # already trained: `state` is the newest checkpoint, restored above
      result = {"step": start, "split": config.data.eval_split,
                **evals.run(state, start, final=True)}
    ckpt.close()
  except Diverged:
    ckpt.wait()  # the last good checkpoint commits before the run stops
    raise
  finally:
    writer.close()
  for watcher in watchers:
    if hasattr(watcher, "finish"):
      watcher.finish(result)
  return result


class StopSignals:
  """SIGTERM and SIGINT set a flag that the loop reads at the next step boundary.

  In a multi-process run SIGTERM is left to JAX's preemption service (SIGINT is passed on
  to it), which picks one step for every process: `requested` is true there on all of them.
  """

  # main.py's handler before and after the steps: between __enter__ and the end of
  # train() a signal is deferred (appended to `deferred`) so that the last save completes.
  inside, deferred, completed = False, [], 0

  def __init__(self):
    self.signum, self._old = None, {}
    self.synced = distributed.preemption_synced()

  def __enter__(self):
    StopSignals.inside = True
    if threading.current_thread() is threading.main_thread():
      for sig in (signal.SIGINT,) if self.synced else (signal.SIGTERM, signal.SIGINT):
        self._old[sig] = signal.signal(sig, self._handle)
    return self

  def _handle(self, signum, frame):
    self.signum = signum
    if self.synced:
      os.kill(os.getpid(), signal.SIGTERM)  # to JAX's handler, which tells every process

  def requested(self, steps_run: int) -> bool:
    """Whether to save and stop after this step; call it after every step."""
    if self.synced:
      return multihost_utils.reached_preemption_sync_point(steps_run)
    return self.signum is not None

  @property
  def name(self) -> str:
    return signal.Signals(self.signum or signal.SIGTERM).name

  def __exit__(self, *exc):
    for sig, handler in self._old.items():
      signal.signal(sig, handler)


def _train_loop(config, s, state, ckpt, writer, evals, batch_sharding, start, watchers):
  with StopSignals() as stop:
    return _train_steps(config, s, state, ckpt, writer, evals, batch_sharding, start,
                        stop, watchers)


def _notify(watchers, step: int, split: str, metrics: dict) -> bool:
  """Every watcher sees the point; any of them may ask the run to stop here."""
  return any([bool(watch(step, split, metrics)) for watch in watchers])


def _screen(guard, pending, last_saved, watchers):
  """The guard's finite steps; a run it stops shows its non-finite step to the watchers
  first (the diagnosis names likely causes)."""
  try:
    return guard.screen(pending, last_saved)
  except Diverged:
    step, metrics = guard.last_bad
    _notify(watchers, step, "train", metrics)
    raise


def _train_steps(config, s, state, ckpt, writer, evals, batch_sharding, start, stop,
                 watchers):
  tc = config.train
  train_step = step.compile_train_step(s.model, s.task, s.tx, s.schedule,
                                       config.optim.grad_accum_steps, s.state_sharding,
                                       batch_sharding, s.rules)
  batch = s.data.next_train()
  t0 = time.perf_counter()
  if tc.skip_nonfinite_steps:
    train_step = guards.skipping(train_step, s.state_sharding, batch_sharding)
  train_step = train_step.lower(state, batch).compile()
  compile_s = time.perf_counter() - t0
  writers.console(f"compiled train step in {compile_s:.1f}s")
  guard = guards.Guard(tc.skip_nonfinite_steps, ckpt.directory, tc.divergence_factor,
                       tc.divergence_patience, _initial_loss(ckpt.workdir, start))
  writer.write(start, "train", {"compile_seconds": compile_s})

  pending, screened, result, last_saved = [], [], None, ckpt.latest_step()
  peak = setup_lib.peak_flops(config)
  flops = flops_lib.train_flops_per_item(   # counted from the jaxpr, for the mfu
      s, rows=config.data.batch_size // config.optim.grad_accum_steps) if peak else 0.0
  profiler = Profiler(tc.profile_steps, ckpt.workdir)
  clock = Phases()
  for i in range(start, tc.num_steps):
    profiler.before(i, state)
    if i > start:
      with clock("data"):
        batch = s.data.next_train()
    state, metrics = train_step(state, batch)
    clock.dispatched(i, metrics)
    clock.steps += 1
    current = i + 1
    pending.append((current, metrics))
    last, stop_early = current == tc.num_steps, False
    if current % tc.log_every == 0 or last:
      first = pending[0][0]
      screened, pending = screened + _screen(guard, pending, last_saved, watchers), []
      if first == 1 and 1 not in guard.skipped:   # step 1's loss: the parameters at init
        guard.initial_loss = float(screened[0]["loss"])
        writer.write(0, "train", {"loss": guard.initial_loss})
        _notify(watchers, 0, "train", {"loss": guard.initial_loss})
    if (current % tc.log_every == 0 or last) and screened:
      means = {k: float((np.max if s.task.metrics.get(k) == metrics_lib.MAX else np.mean)(
          [m[k] for m in screened])) for k in screened[0]}
      means["loss_max"] = float(max(m["loss"] for m in screened))   # a spike inside the mean
      screened = []
      if guard.skipped:
        means["skipped_steps"] = len(guard.skipped)
      means.update(clock.rates(s.task, config.data.batch_size))
      if flops and peak:
        means["mfu"] = means[f"{s.task.unit}_per_sec"] * flops / peak
      writer.write(current, "train", means)
      writers.console(progress_line(s.task, current, tc.num_steps, means))
      stop_early = _notify(watchers, current, "train", means)
      guard.check_loss(current, means["loss"], last_saved)   # a finite explosion: exit 3
    if evals.due(current, last):
      with clock("eval"):
        metrics = evals.run(state, current, last)
      writer.write(current, config.data.eval_split, metrics)
      writers.console(f"eval {config.data.eval_split} at step {current}: " +
                      " ".join(f"{k} {v:.4f}" for k, v in metrics.items()
                               if isinstance(v, float)))
      result = {"step": current, "split": config.data.eval_split, **metrics}
      stop_early = _notify(watchers, current, config.data.eval_split, metrics) or stop_early
    stopping = stop.requested(current - start)
    periodic = tc.checkpoint_every and current % tc.checkpoint_every == 0
    if (periodic and not guard.exploding) or last or stopping or stop_early:
      with clock("checkpoint"):
        screened, pending = screened + _screen(guard, pending, last_saved, watchers), []
        guard.check_state(state, current, last_saved)
        ckpt.save(current, state, s.data.train_iter, config)
      last_saved = current
    if stopping and not last:
      ckpt.wait()
      profiler.stop()
      name = stop.name
      writers.console(f"{name}: saved checkpoint at step {current} in {ckpt.directory}")
      raise Preempted(f"preempted by {name} at step {current}, checkpoint saved; "
                      "rerun the same command to continue")
    if i == start:  # every field a training run reads has been read by now
      config_reads.report(config, "train")
    if stop_early and not last:
      ckpt.wait()
      profiler.stop()
      writers.console(f"stopped early at step {current} (asked by a watcher)")
      if result is None or result["step"] != current:
        result = {"step": current, "split": config.data.eval_split,
                  **evals.run(state, current, final=True)}
      return {**result, "stopped_early": True}
  profiler.stop()
  return result


def _initial_loss(workdir: str, start: int):
  """The train loss measured at initialisation (metrics.jsonl's step-0 line) of a resumed
  run, the same on every process; None on a fresh start (the loop measures it) or where
  the line is missing."""
  if not start:
    return None
  value = writers.read_curves(workdir, "loss").get("train", {}).get(0, np.nan)
  if jax.process_count() > 1:   # process 0 writes the logs; every process needs the value
    value = float(multihost_utils.broadcast_one_to_all(np.float64(value)))
  return value if np.isfinite(value) else None


def input_idle(waits, done) -> float:
  """Seconds the device sat idle for want of input: for each wait (previous step, start,
  end), the part of [start, end] after the previous step had finished on the device (done:
  step -> completion time). A wait while the device still works on queued steps costs
  nothing; the host runs ahead of the device under asynchronous dispatch."""
  return sum(max(0.0, end - max(start, done[prev])) for prev, start, end in waits)


class Phases:
  """Wall time per phase of the steps between two progress lines: waiting for data, eval,
  checkpoint, and the steps themselves (the rest). Rates count the steps' time only.
  dispatched(i, metrics) after each step lets a thread note when step i finished on the
  device, so the data wait can be split into the device's idle share (input_idle)."""

  def __init__(self):
    self._done, self._last, self._last_leaf, self._watcher = {}, None, None, None
    self._queue = queue.SimpleQueue()
    self._ready = threading.Condition()   # guards _done and _watcher
    self._reset()

  def _reset(self):
    self.t0, self.steps, self.seconds, self._waits = time.perf_counter(), 0, {}, []

  @contextlib.contextmanager
  def __call__(self, phase: str):
    t = time.perf_counter()
    if phase == "data" and self._last_leaf is not None and self._last_leaf.is_ready():
      self._noted(self._last, t)   # done before the wait: the watcher may lag (the GIL)
    try:
      yield
    finally:
      end = time.perf_counter()
      self.seconds[phase] = self.seconds.get(phase, 0.0) + end - t
      if phase == "data" and self._last is not None:
        self._waits.append((self._last, t, end))

  def dispatched(self, index: int, metrics):
    """Step index is queued on the device; its metrics become ready when it has run."""
    leaves = jax.tree.leaves(metrics)
    if not leaves:
      return
    self._last, self._last_leaf = index, leaves[0]
    with self._ready:
      self._queue.put((index, leaves[0]))
      if self._watcher is None:
        self._watcher = threading.Thread(target=self._watch, daemon=True)
        self._watcher.start()

  def _watch(self):
    """Notes each queued step's completion time, in order; ends after 5 s without one."""
    while True:
      try:
        index, leaf = self._queue.get(timeout=5)
      except queue.Empty:
        with self._ready:
          if self._queue.empty():
            self._watcher = None
            return
        continue
      try:
        leaf.block_until_ready()
      except Exception:  # noqa: BLE001  a failed step: the loop raises it when it reads it
        pass
      self._noted(index, time.perf_counter())

  def _noted(self, index, when):
    """Step index was done by `when` (the earliest of the watcher's and the loop's notes)."""
    with self._ready:
      self._done[index] = min(self._done.get(index, when), when)
      self._ready.notify_all()

  def rates(self, task, batch_size: int) -> dict:
    """steps_per_sec, items per second and the phase times since the last call."""
    total = time.perf_counter() - self.t0
    other = sum(v for k, v in self.seconds.items() if k != "data")
    data = self.seconds.get("data", 0.0)
    with self._ready:   # the steps of the interval are done: their metrics were fetched
      if not self._ready.wait_for(lambda: all(w[0] in self._done for w in self._waits),
                                  timeout=60):
        logging.warning("data wait: steps without a completion time; their waits not counted")
      idle = input_idle([w for w in self._waits if w[0] in self._done], self._done)
      self._done = {k: v for k, v in self._done.items() if k >= (self._last or 0)}
    training = max(total - other, 1e-9)   # the steps and their input
    sps = self.steps / training
    out = {"steps_per_sec": sps, f"{task.unit}_per_sec": sps * task.items_per_batch(batch_size),
           "time/step_sec": training - data, "time/data_sec": data,
           "time/eval_sec": self.seconds.get("eval", 0.0),
           "time/checkpoint_sec": self.seconds.get("checkpoint", 0.0),
           "data_wait_fraction": idle / training}
    self._reset()
    return out


class Profiler:
  """train.profile_steps=(START, COUNT): a trace of steps START+1 .. START+COUNT in
  workdir/profile/, for TensorBoard's profile plug-in (xprof) and Perfetto
  (profile/plugins/profile/<run>/*.trace.json.gz, perfetto_trace.json.gz)."""

  def __init__(self, steps, workdir: str):
    self.start, self.count = (int(steps[0]), int(steps[1])) if steps else (-1, 0)
    self.directory, self.state, self.active = os.path.join(workdir, "profile"), None, False

  def before(self, i: int, state):
    if i == self.start:
      jax.block_until_ready(state)
      jax.profiler.start_trace(self.directory, create_perfetto_trace=True)
      self.active = True
      writers.console(f"profiling steps {i + 1}-{i + self.count} into {self.directory}")
    elif self.active and i == self.start + self.count:
      jax.block_until_ready(state)
      self.stop()

  def stop(self):
    if self.active:
      self.active = False
      jax.profiler.stop_trace()
      writers.console(f"profile written to {self.directory}: tensorboard --logdir "
                      f"{self.directory}, or open perfetto_trace.json.gz in ui.perfetto.dev")


def evaluate(config, workdir: str) -> dict:
  workdir = os.path.abspath(os.path.expanduser(workdir))
  ckpt, wanted = checkpointing.open_for_reading(workdir, config.eval.step)
  s = setup_lib.build(config)
  evals = evaluators.Suite(config, s, workdir)
  target = checkpointing.sharded_target(s.abstract_state, s.state_sharding)
  state = ckpt.restore(wanted, target, config=config)
  ckpt.close()
  result = {"step": wanted, "split": config.data.eval_split, "mode": "eval",
            **evals.run(state, wanted, final=True)}
  writer = writers.Writer(workdir)
  writer.write(wanted, config.data.eval_split,
               {k: v for k, v in result.items() if isinstance(v, (int, float))
                and k != "step"}, mode="eval")
  writer.close()
  return result

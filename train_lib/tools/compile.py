"""--mode=compile: the config's real train and eval steps compiled ahead of time for a TPU
topology (no TPU needed: libtpu compiles on a CPU host) or for the devices present, with
the config's mesh and rules. Nothing is trained: the data source is opened for its shapes
and one batch, no step runs. It says whether the step fits the chip's memory, how it is
sharded and what it communicates.

    python main.py --config=configs/gpt_1b3.py --workdir=runs/c --mode=compile \\
        --config.compile.topology=v5p:2x2x2        # or local: the devices present
    --config.compile.search=micro_batch   # the largest micro-batch that fits (same batch)
    --config.compile.search=fsdp          # the smallest fsdp size that fits
    --config.compile.step_time_s=2.5      # the MFU the step would reach at that step time
    --config.compile.memory_gib=14        # fit in less than the chip's memory (headroom)

Prints a table and the JSON result (the last stdout line), saved as workdir/compile.json
with the compiled HLO beside it (workdir/compile/{train,eval}_step.hlo.txt). Exit 0 when
it fits; exit 2 with one line when it does not fit, when the mesh does not divide the
topology, or when the topology name is unknown.

Per-device memory is XLA's own account of the compiled program (memory_analysis):
arguments (state and batch) + outputs - outputs aliased to donated arguments + temporaries
+ generated code, against the chip's memory (train_lib/chips.py). Collectives are read
from the compiled HLO: each op's result bytes per device, counted as many times as the
step runs it (a loop body times its known trip count). FLOPs: XLA's cost analysis of the
compiled program (what the chip executes, remat recomputation included) beside the model
FLOPs counted from the jaxpr (train_lib/flops.py), which the MFU uses.
"""

import dataclasses
import importlib.util
import math
import os
import re
import time

import jax
import jax.numpy as jnp
import numpy as np

from train_lib import chips, config_reads, flops as flops_lib, partitioning, setup, step, writers
from train_lib.errors import UserError

SEARCHES = ("", "micro_batch", "fsdp")
# Slice shapes offered by Google Cloud (cloud.google.com/tpu/docs/<generation>); libtpu
# compiles for these (tests/test_compile.py checks every one) and for other shapes too.
KNOWN_TOPOLOGIES = {
    "v4": ("2x2x1", "2x2x2", "2x2x4", "2x4x4", "4x4x4", "4x4x8", "4x8x8", "8x8x8",
           "8x8x16", "8x16x16"),
    "v5e": ("2x2", "2x4", "4x4", "4x8", "8x8", "8x16", "16x16"),
    "v5p": ("2x2x1", "2x2x2", "2x2x4", "2x4x4", "4x4x4", "4x4x8", "4x8x8", "8x8x8",
            "8x8x16", "8x16x16", "16x16x16"),
    "v6e": ("2x2", "2x4", "4x4", "4x8", "8x8", "8x16", "16x16"),
}
COLLECTIVES = ("all-gather", "reduce-scatter", "all-reduce", "all-to-all",
               "collective-permute")


@dataclasses.dataclass
class Target:
  name: str            # "v5e:4x4" or "local"
  devices: list
  device_kind: str
  chips: int
  memory_bytes: float  # per device
  peak_flops: float    # per device, FLOP/s (0: unknown)
  memory_source: str


def known_names() -> list:
  return [f"{gen}:{shape}" for gen, shapes in KNOWN_TOPOLOGIES.items() for shape in shapes]


def target(name: str, config=None) -> Target:
  """The devices to compile for: a TPU topology by name, or "local"."""
  peak_override = (config.train.peak_tflops * 1e12) if config is not None else 0.0
  if name == "local":
    devices = jax.devices()
    kind = devices[0].device_kind
    stats = devices[0].memory_stats() or {}
    if "bytes_limit" in stats:
      memory, source = float(stats["bytes_limit"]), "jax memory_stats bytes_limit"
    else:  # the CPU: the host's memory, shared by its devices
      memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / len(devices)
      source = "host memory / devices"
    return Target(name, devices, kind, len(devices), memory,
                  peak_override or chips.peak_tflops(kind) * 1e12, source)
  gen, _, shape = name.partition(":")
  if gen not in chips.TPUS or not re.fullmatch(r"\d+(x\d+){1,2}", shape):
    raise UserError(f"compile.topology={name!r} is unknown; use local or one of "
                    f"{', '.join(known_names())}")
  if importlib.util.find_spec("libtpu") is None:
    raise UserError("compiling for a TPU topology needs libtpu: pip install -r "
                    "requirements.txt (it pins the libtpu of the pinned jax)")
  _quiet_libtpu(gen)
  from jax.experimental import topologies
  try:
    devices = topologies.get_topology_desc(platform="tpu", topology_name=name).devices
  except Exception as e:  # libtpu's INVALID_ARGUMENT for a shape it cannot build
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    if "INVALID_ARGUMENT" not in first:
      raise UserError(f"libtpu could not describe {name!r}: {first[:200]}") from None
    raise UserError(f"compile.topology={name!r} is not a topology libtpu can build "
                    f"({first[:160]}); use one of {', '.join(known_names())}") from None
  chip = chips.TPUS[gen]
  num_chips = math.prod(int(d) for d in shape.split("x"))
  per_chip = len(devices) / num_chips     # v4: one device per TensorCore
  return Target(name, list(devices), devices[0].device_kind, num_chips,
                chip.hbm_gib * 2**30 / per_chip,
                peak_override or chip.tflops * 1e12 / per_chip, chip.source)


# A one-host slice of each generation, as a TPU VM's metadata would name it.
_HOST_TYPES = {"v4": "v4-8", "v5e": "v5litepod-4", "v5p": "v5p-8", "v6e": "v6e-4"}


def _quiet_libtpu(gen: str):
  # libtpu looks for a TPU VM's metadata and logs warnings when none answers, and locks
  # /tmp/libtpu_lockfile against a second process; a compile-only client needs neither.
  for key, value in (("ALLOW_MULTIPLE_LIBTPU_LOAD", "1"), ("TPU_SKIP_MDS_QUERY", "1"), ("TPU_ACCELERATOR_TYPE", _HOST_TYPES[gen]),
                     ("TPU_WORKER_HOSTNAMES", "localhost"), ("TPU_WORKER_ID", "0"),
                     ("TF_CPP_MIN_LOG_LEVEL", "3")):
    os.environ.setdefault(key, value)


# ------------------------------------------------------------------------ compiling


class OutOfMemory(Exception):
  """The compiler itself found the program too large for the chip (libtpu does)."""


def _compile(lowered):
  try:
    return lowered.compile()
  except jax.errors.JaxRuntimeError as e:
    if "RESOURCE_EXHAUSTED" not in str(e):
      raise
    raise OutOfMemory(str(e).strip().splitlines()[0]) from None


def _abstract(tree, rows, sharding):
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct((rows, *x.shape[1:]), x.dtype,
                                                      sharding=sharding), tree)


def compile_steps(config, devices, same_eval=None) -> dict:
  """{"setup", "train": compiled train step, "eval": compiled eval step or None,
  "train_compile_s", "eval_compile_s"}: lowered on abstract (shape-only) state and
  batches. Raises OutOfMemory where the compiler refuses the program for the chip.
  same_eval: the result of an earlier call whose eval step this config shares."""
  s = setup.build(config, devices=devices)
  batch_sh = partitioning.batch_sharding(s.mesh)
  state = jax.tree.map(lambda x, sh: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sh),
                       s.abstract_state, s.state_sharding)
  train_batch = _abstract(s.dummy_batch, config.data.batch_size, batch_sh)
  begin = time.perf_counter()
  train = step.compile_train_step(s.model, s.task, s.tx, s.schedule,
                                  config.optim.grad_accum_steps, s.state_sharding, batch_sh,
                                  s.rules).lower(state, train_batch)
  train = _compile(train)
  train_s = time.perf_counter() - begin
  evaluated, eval_s = None, 0.0
  if same_eval is not None:
    evaluated, eval_s = same_eval["eval"], same_eval["eval_compile_s"]
  elif getattr(s.data, "num_eval", 0):
    eval_batch = _abstract(s.data.eval_batch(0), config.data.eval_batch_size, batch_sh)
    begin = time.perf_counter()
    evaluated = _compile(step.compile_eval_step(s.model, s.task, s.state_sharding, batch_sh,
                                                s.rules).lower(
        state, eval_batch, jax.ShapeDtypeStruct((), jnp.int32)))
    eval_s = time.perf_counter() - begin
  return {"setup": s, "train": train, "eval": evaluated, "train_compile_s": train_s,
          "eval_compile_s": eval_s}


def memory(compiled) -> dict:
  """Per-device bytes of a compiled program, from XLA's memory analysis."""
  m = compiled.memory_analysis()
  out = {"argument": m.argument_size_in_bytes, "output": m.output_size_in_bytes,
         "alias": m.alias_size_in_bytes, "temp": m.temp_size_in_bytes,
         "code": m.generated_code_size_in_bytes}
  out["peak"] = out["argument"] + out["output"] - out["alias"] + out["temp"] + out["code"]
  return out


def cost_flops(compiled) -> float:
  """XLA's FLOPs of one call of the compiled program, per device."""
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float((cost or {}).get("flops", 0.0))


# ------------------------------------------------------------------ the HLO's collectives

_DTYPE_BYTES = {"pred": 1, "s4": 0.5, "u4": 0.5, "s8": 1, "u8": 1, "s16": 2, "u16": 2,
                "f16": 2, "bf16": 2, "s32": 4, "u32": 4, "f32": 4, "s64": 8, "u64": 8,
                "f64": 8, "c64": 8, "c128": 16}
_SHAPE = re.compile(r"\b([a-z]+\d*(?:e\d+m\d+\w*)?)\[([\d,]*)\]")
_HEADER = re.compile(r"^(?:ENTRY\s+)?%?([\w.\-]+)\s*\(.*\)\s*->\s*.*\{\s*$")
_OP = re.compile(r"=\s*(.*?)\s+(" + "|".join(COLLECTIVES) + r")(-start)?\(")
_CALLS = re.compile(r"\b(body|condition|calls|to_apply|true_computation|false_computation|"
                    r"branch_computations|async_execution_thread_computations)="
                    r"(\{[^}]*\}|%?[\w.\-]+)")
_TRIPS = re.compile(r'"known_trip_count"\s*:\s*\{\s*"n"\s*:\s*"(\d+)"')


def _bytes(shape_text: str, start: bool) -> float:
  sizes = [math.prod(int(d) for d in dims.split(",") if d) * _DTYPE_BYTES.get(
      dtype, 1 if dtype.startswith("f8") else 4) for dtype, dims in _SHAPE.findall(shape_text)]
  if not sizes:
    return 0.0
  return float(max(sizes) if start else sum(sizes))   # a -start op's tuple holds in and out


def _trip_count(line: str, calls: dict, bodies: dict) -> int:
  """A while loop's trip count: XLA's known_trip_count where it wrote one, else the bound of
  a condition `i < N` on a constant (how jax's scan and fori_loop lower); 1 if neither."""
  trips = _TRIPS.search(line)
  if trips:
    return int(trips.group(1))
  cond = bodies.get(calls.get("condition", "").strip("%"), ())
  bounds = [int(m) for l in cond for m in re.findall(r"= [su]\d+\[\][^=]*constant\((\d+)\)", l)]
  if len(bounds) == 1 and any("direction=LT" in l for l in cond):
    return bounds[0]
  return 1


def collectives(hlo_text: str) -> dict:
  """{kind: {"count", "bytes"}} of the collectives one run of the program executes, per
  device: every op counted once per execution of its computation, a while loop's body as
  many times as its trip count (_trip_count; once where it cannot be read)."""
  bodies, entry, current = {}, None, None
  for line in hlo_text.splitlines():
    header = _HEADER.match(line)
    if header:
      current = header.group(1)
      bodies[current] = []
      if line.startswith("ENTRY"):
        entry = current
    elif current is not None:
      bodies[current].append(line)
  totals = {}

  def walk(name):   # {kind: [count, bytes]} of one execution of computation `name`
    if name in totals:
      return totals[name]
    totals[name] = out = {}
    for line in bodies.get(name, ()):
      op = _OP.search(line)
      if op and "-done" not in line.split("=", 1)[1].split("(", 1)[0]:
        counts = out.setdefault(op.group(2), [0, 0.0])
        counts[0] += 1
        counts[1] += _bytes(op.group(1), bool(op.group(3)))
      calls = _CALLS.findall(line)
      times = _trip_count(line, dict(calls), bodies)
      for role, names in calls:
        for callee in (n.strip(" {}%") for n in names.split(",")):
          for kind, (count, size) in walk(callee).items():
            counts = out.setdefault(kind, [0, 0.0])
            counts[0] += (times if role == "body" else 1) * count
            counts[1] += (times if role == "body" else 1) * size
    return out

  found = walk(entry) if entry else {}
  return {kind: {"count": found[kind][0], "bytes": found[kind][1]}
          for kind in COLLECTIVES if kind in found}


# ------------------------------------------------------------------------- the report


def report(config, tgt: Target, compiled: dict) -> dict:
  s = compiled["setup"]
  mem = {"train": memory(compiled["train"])}
  if compiled["eval"] is not None:
    mem["eval"] = memory(compiled["eval"])
  peak = max(m["peak"] for m in mem.values())
  state_bytes = partitioning.bytes_per_device(s.abstract_state, s.state_sharding)
  state_total = sum(x.size * np.dtype(x.dtype).itemsize
                    for x in jax.tree.leaves(s.abstract_state))
  batch = config.data.batch_size
  model_flops = flops_lib.train_flops_per_item(
      s, rows=batch // config.optim.grad_accum_steps) * s.task.items_per_batch(batch)
  xla_flops = cost_flops(compiled["train"]) * len(tgt.devices)
  step_time = config.compile.step_time_s
  system_peak = tgt.peak_flops * len(tgt.devices)
  result = {
      "mode": "compile", "topology": tgt.name, "device_kind": tgt.device_kind,
      "devices": len(tgt.devices), "chips": tgt.chips, "mesh": dict(s.mesh.shape),
      "memory_per_device": mem, "memory_limit_bytes": tgt.memory_bytes,
      "memory_limit_source": tgt.memory_source, "peak_bytes": peak,
      "fits": bool(peak <= tgt.memory_bytes), "headroom_bytes": tgt.memory_bytes - peak,
      "state_bytes_per_device": state_bytes, "state_bytes_total": state_total,
      "parameters": int(sum(x.size for x in jax.tree.leaves(s.abstract_state.params))),
      "model_flops_per_step": model_flops, "xla_flops_per_step": xla_flops,
      "peak_flops_per_device": tgt.peak_flops,
      "step_time_at_50pct_mfu_s": (model_flops / (0.5 * system_peak)) if system_peak else None,
      "collectives": {"train": collectives(compiled["train"].as_text())},
      "compile_s": {"train": round(compiled["train_compile_s"], 2),
                    "eval": round(compiled["eval_compile_s"], 2)},
  }
  if compiled["eval"] is not None:
    result["collectives"]["eval"] = collectives(compiled["eval"].as_text())
  if step_time > 0 and system_peak:
    result["mfu_at_step_time"] = model_flops / (step_time * system_peak)
    result["step_time_s"] = step_time
  return result


_NEEDS = re.compile(r"\(([\d.]+)([KMGT])\) exceeds available HBM")


def compile_and_report(config, tgt: Target, same_eval=None):
  """(the report, the compiled steps); where the compiler itself runs out of the chip's
  memory, a report with fits=False, its message and the bytes it says it needed."""
  try:
    compiled = compile_steps(config, tgt.devices, same_eval)
  except OutOfMemory as e:
    needs = _NEEDS.search(str(e))
    shape = partitioning.mesh_shape(config.mesh, len(tgt.devices))
    peak = float(needs.group(1)) * 2**(10 * "KMGT".index(needs.group(2)) + 10) if needs else None
    return {"mode": "compile", "topology": tgt.name, "device_kind": tgt.device_kind,
            "devices": len(tgt.devices), "chips": tgt.chips,
            "mesh": dict(zip(partitioning.mesh_axes(config.mesh), shape)),
            "fits": False, "peak_bytes": peak, "memory_limit_bytes": tgt.memory_bytes,
            "memory_limit_source": tgt.memory_source,
            "headroom_bytes": None if peak is None else tgt.memory_bytes - peak,
            "compiler_error": str(e)}, None
  return report(config, tgt, compiled), compiled


def _gib(b) -> str:
  return f"{b / 2**30:,.2f}"


def _size(b) -> str:
  return f"{b / 2**30:,.2f} GiB" if abs(b) >= 2**30 else f"{b / 2**20:,.1f} MiB"


def format_table(r: dict) -> str:
  if "compiler_error" in r:
    return writers.table(["", "value"], [
        ["topology", f"{r['topology']}: {r['devices']} x {r['device_kind']}"],
        ["mesh", " x ".join(f"{k}={v}" for k, v in r["mesh"].items())],
        ["memory", f"DOES NOT FIT: the compiler says {r['compiler_error']}"]])
  chips_note = "" if r["topology"] == "local" else f" ({r['chips']} chips)"
  rows = [["topology", f"{r['topology']}: {r['devices']} x {r['device_kind']}{chips_note}"],
          ["mesh", " x ".join(f"{k}={v}" for k, v in r["mesh"].items())],
          ["parameters", f"{r['parameters']:,}"],
          ["state per device", f"{_size(r['state_bytes_per_device'])} of "
                               f"{_size(r['state_bytes_total'])}"]]
  for prog, m in r["memory_per_device"].items():
    rows.append([f"{prog} step per device", (
        f"args {_size(m['argument'])} + out {_size(m['output'])} - aliased "
        f"{_size(m['alias'])} + temp {_size(m['temp'])} + code {_size(m['code'])} "
        f"= {_size(m['peak'])}")])
  verdict = "fits" if r["fits"] else "DOES NOT FIT"
  rows.append(["memory", f"{_size(r['peak_bytes'])} of {_size(r['memory_limit_bytes'])} "
                         f"per device ({r['memory_limit_source']}): {verdict}, "
                         f"{_size(abs(r['headroom_bytes']))} {'free' if r['fits'] else 'over'}"])
  rows.append(["FLOPs/step", f"model {r['model_flops_per_step']:.4g} (counted), "
                             f"XLA {r['xla_flops_per_step']:.4g} (compiled)"])
  if r.get("mfu_at_step_time") is not None:
    rows.append(["MFU", f"{r['mfu_at_step_time']:.1%} at {r['step_time_s']:g} s per step"])
  if r["step_time_at_50pct_mfu_s"]:
    rows.append(["step time at 50% MFU", f"{r['step_time_at_50pct_mfu_s']:.4g} s"])
  for prog, found in r["collectives"].items():
    text = ", ".join(f"{k} {v['count']}x, {_size(v['bytes'])}"
                     for k, v in found.items()) or "none"
    rows.append([f"{prog} collectives", text])
  rows.append(["compile s", ", ".join(f"{k} {v}" for k, v in r["compile_s"].items())])
  return writers.table(["", "value"], rows)


# ------------------------------------------------------------------------ the search


def _candidates(config, what: str, tgt: Target) -> list:
  """(value, config) pairs in the order that needs ever less memory."""
  out = []
  if what == "micro_batch":
    batch = config.data.batch_size
    shards = partitioning.batch_shards(partitioning.make_mesh(config.mesh, tgt.devices))
    for m in range(batch, 0, -1):
      if batch % m == 0 and m % shards == 0:
        c = config_reads.copy(config)
        c.optim.grad_accum_steps = batch // m
        out.append((m, c))
  else:  # fsdp: from 1 up to every device left after tensor and expert
    rest = len(tgt.devices) // (config.mesh.tensor * config.mesh.get("expert", 1))
    for f in range(1, rest + 1):
      if rest % f == 0:
        c = config_reads.copy(config)
        c.mesh.fsdp, c.mesh.data = f, -1
        out.append((f, c))
  return out


def search(config, tgt: Target):
  """(the report of the first candidate that fits, {what, value, next value, its peak, the
  config's own values of the fields the candidates set}):
  bisection on compiles, assuming memory falls monotonically along the candidates."""
  what = config.compile.search
  cands = _candidates(config, what, tgt)
  if not cands:
    raise UserError(f"compile.search={what}: no candidate divides the batch and the mesh")
  # the config's own values of the fields every candidate sets: reported as replaced
  replaced = ({"optim.grad_accum_steps": config.optim.grad_accum_steps}
              if what == "micro_batch" else
              {"mesh.fsdp": config.mesh.fsdp, "mesh.data": config.mesh.data})
  cache, shared = {}, {}   # the micro-batch leaves the eval step as it is: compiled once

  def compiled_report(i):
    if i not in cache:
      value, c = cands[i]
      cache[i], compiled = compile_and_report(c, tgt, shared.get("eval"))
      if what == "micro_batch" and compiled is not None:
        shared.setdefault("eval", compiled)
      peak = cache[i]["peak_bytes"]
      writers.console(f"compile search: {what}={value}: peak "
                      f"{'?' if peak is None else _gib(peak)} GiB, "
                      f"{'fits' if cache[i]['fits'] else 'does not fit'}")
    return cache[i]

  lo, hi = 0, len(cands) - 1
  if not compiled_report(hi)["fits"]:
    return compiled_report(hi), {"what": what, "value": None,
                                 "tried_least": cands[hi][0], "replaced": replaced}
  while lo < hi:       # the first index that fits is in [lo, hi]
    mid = (lo + hi) // 2
    if compiled_report(mid)["fits"]:
      hi = mid
    else:
      lo = mid + 1
  found = {"what": what, "value": cands[lo][0], "replaced": replaced}
  if what == "micro_batch":
    found["grad_accum_steps"] = config.data.batch_size // cands[lo][0]
  if lo > 0:
    before = compiled_report(lo - 1)
    found.update(next_value=cands[lo - 1][0], next_peak_bytes=before["peak_bytes"])
  return compiled_report(lo), found


# ------------------------------------------------------------------------------ run


def run(config, workdir: str) -> dict:
  cc = config.compile
  # Every compile is measured and reported; a persistent cache entry would hide it (and TPU
  # executables compiled here cannot be read back without a TPU client).
  jax.config.update("jax_enable_compilation_cache", False)
  if cc.search not in SEARCHES:
    raise UserError(f"compile.search={cc.search!r} is unknown; use one of "
                    f"{[s for s in SEARCHES if s]} (or leave it empty)")
  if cc.step_time_s < 0:
    raise UserError(f"compile.step_time_s={cc.step_time_s} must be >= 0 (0: not stated)")
  if cc.memory_gib < 0:
    raise UserError(f"compile.memory_gib={cc.memory_gib} must be >= 0 (0: the chip's memory)")
  tgt = target(cc.topology, config)
  if cc.memory_gib:
    tgt.memory_bytes, tgt.memory_source = cc.memory_gib * 2**30, "compile.memory_gib"
  partitioning.mesh_shape(config.mesh, len(tgt.devices))   # divides the topology, or exit 2
  workdir = setup.prepare_workdir(workdir)
  writers.console(f"compile: {config.model.name} for {tgt.name} ({len(tgt.devices)} x "
                  f"{tgt.device_kind})")
  if cc.search:
    result, found = search(config, tgt)
    result["search"] = found
  else:
    result, compiled = compile_and_report(config, tgt)
    if compiled is not None and jax.process_index() == 0:
      out = os.path.join(workdir, "compile")
      os.makedirs(out, exist_ok=True)
      for prog in ("train", "eval"):
        if compiled[prog] is not None:
          writers.write_atomic(os.path.join(out, f"{prog}_step.hlo.txt"),
                               compiled[prog].as_text())
  if jax.process_index() == 0:
    writers.write_json(os.path.join(workdir, "compile.json"), result, indent=1)
  writers.console(format_table(result))
  if not result["fits"]:
    if "compiler_error" in result:
      needs = f"the compiler says: {result['compiler_error']}"
    else:
      needs = (f"{_gib(result['peak_bytes'])} GiB per device needed, "
               f"{_gib(tgt.memory_bytes)} GiB available "
               f"({_gib(-result['headroom_bytes'])} GiB over)")
    if cc.search:
      raise UserError(f"does not fit {tgt.name} at any {cc.search}: even {cc.search}="
                      f"{result['search']['tried_least']}: {needs}")
    raise UserError(f"does not fit {tgt.name}: {needs}; try --config.compile.search="
                    "micro_batch or =fsdp, or a larger topology")
  return result

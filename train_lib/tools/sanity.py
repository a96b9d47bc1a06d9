"""--mode=sanity: six checks that a run can learn, before it spends real compute.

    python main.py --config=configs/default.py:runlocal --workdir=/tmp/s --mode=sanity
    result = sanity.run(config, workdir)  # raises ChecksFailed (exit code 1) if one fails
    # stdout: each check's tables, then "PASS name: detail" or
    #         "FAIL name: detail -- likely cause; what to try"; workdir/sanity.json has it all

In order: data (shapes, dtypes, ranges, label histogram, repeated or constant batches;
plots/data_examples.png or plots/text_examples.txt), model (per-layer outputs and
parameters, FLOPs per item from the compiled step's cost analysis), initial_loss (against
ln of the number of outputs), gradient_flow (leaves whose gradient is missing, zero or
non-finite; norms per module), overfit_one_batch (config.sanity.overfit_steps at the
config's peak learning rate, held constant, on one batch), label_signal (the same
learning rate on fresh batches, once with the real targets and once with targets shuffled
across each batch: held-out loss must fall clearly further with the real ones). Works on any mesh: batches
and state keep their shardings, and only scalars and small statistics come to the host.
"""

import copy
import dataclasses
import functools
import math
import os
import re
import sys
import traceback

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from train_lib import checkpointing, optim, partitioning, setup
from train_lib import flops as flops_lib
from train_lib.tools import capsule, plots
from train_lib import state as state_lib, step
from train_lib import metrics as metrics_lib, writers
from train_lib.errors import ChecksFailed, UserError

DTYPE_NAMES = {"float32": "f32", "bfloat16": "bf16", "float16": "f16", "int32": "i32",
               "uint8": "u8", "int64": "i64", "bool": "bool"}


@dataclasses.dataclass
class Check:
  name: str
  passed: bool
  detail: str
  fix: str = ""      # on failure: "likely cause; what to try"
  report: str = ""   # tables and curves, printed before the verdict
  data: dict = dataclasses.field(default_factory=dict)  # goes into sanity.json

  def line(self) -> str:
    if self.passed:
      return f"PASS {self.name}: {self.detail}"
    return f"FAIL {self.name}: {self.detail} -- {self.fix}"


def run(config, workdir: str, devices=None) -> dict:
  """Runs every check, prints and writes them; raises ChecksFailed if any failed."""
  sc = config.sanity
  if sc.data_batches < 2:
    raise UserError(f"sanity.data_batches={sc.data_batches} must be >= 2 (repeats are "
                    "found by comparing batches)")
  if sc.overfit_steps < 2:
    raise UserError(f"sanity.overfit_steps={sc.overfit_steps} must be >= 2")
  if not 0 < sc.overfit_fraction < 1:
    raise UserError(f"sanity.overfit_fraction={sc.overfit_fraction} must be in (0, 1)")
  for name in ("label_signal_steps", "label_signal_eval_every", "label_signal_eval_batches"):
    if sc[name] < 1:
      raise UserError(f"sanity.{name}={sc[name]} must be >= 1")
  if not 0 < sc.label_signal_fraction < 1:
    raise UserError(f"sanity.label_signal_fraction={sc.label_signal_fraction} must be in "
                    "(0, 1)")
  workdir = setup.prepare_workdir(workdir)
  s = setup.build(config, devices)
  capsule.write(workdir, config)
  ctx = Context(config, workdir, s)
  checks = []
  for name, fn in CHECKS:
    try:
      check = fn(ctx)
    except UserError:
      raise
    except Exception as e:  # a user's model may break a check; report it, run the rest
      traceback.print_exc(file=sys.stderr)
      first = (str(e).splitlines() or [""])[0]
      check = Check(name, False, f"raised {type(e).__name__}: {first}",
                    "the check could not run on this model or data; the traceback on "
                    "stderr says where")
    _print(check.report + check.line() if check.report else check.line())
    checks.append(check)
  failed = [c.name for c in checks if not c.passed]
  path = os.path.join(workdir, "sanity.json")
  if jax.process_index() == 0:
    writers.write_json(path, {"passed": not failed, "checks": [
        {"name": c.name, "passed": c.passed, "detail": c.detail, "fix": c.fix, **c.data}
        for c in checks]}, indent=1, default=_plain)
  if failed:
    raise ChecksFailed(f"{len(failed)} of {len(checks)} sanity checks failed "
                       f"({', '.join(failed)}); details in {path}")
  return {"sanity": "passed", "checks": [c.name for c in checks]}


class Context:
  """What the checks share: the run's setup, a few train batches, one initial state, one
  compiled train step at a constant learning rate and a gradient probe."""

  def __init__(self, config, workdir, s):
    self.config, self.workdir, self.s = config, workdir, s
    self.batch_sharding = partitioning.batch_sharding(s.mesh)
    self.batches = [s.data.next_train() for _ in range(config.sanity.data_batches)]
    self.learning_rate = config.optim.learning_rate
    self.tx, _ = optim.build(config.optim, config.sanity.overfit_steps,
                             schedule=optax.constant_schedule(self.learning_rate))
    self.state_sharding, self.state0 = state_lib.create_sharded(
        s.model, self.tx, s.task, s.dummy_batch, config.seed, s.mesh, s.rules)

  @functools.cached_property
  def host_batches(self):
    """The batches as numpy arrays, whole on every process."""
    return [jax.tree.map(partitioning.to_host, b) for b in self.batches]

  def fresh_state(self):
    """A copy of the initial state (the train step donates the state it is given)."""
    return jax.tree.map(lambda x: x.copy(), self.state0)

  @functools.cached_property
  def with_targets(self):
    """batch -> the batch in the form the train step takes: task.shuffle_targets(batch,
    None), where that form differs from the data's (lm carries its targets apart)."""
    task, batch = self.s.task, self.batches[0]
    like = lambda b: jax.tree.map(lambda x: (x.shape, x.dtype), b)
    form = jax.eval_shape(task.shuffle_targets, batch, None)
    if form is None or like(form) == like(batch):
      return lambda b: b
    return jax.jit(lambda b: task.shuffle_targets(b, None), out_shardings=self.batch_sharding)

  def compile_train_step(self, task):
    """task's train step at the constant learning rate, compiled for batches in the form
    with_targets gives (shuffled ones have it too)."""
    s = self.s
    fn = step.compile_train_step(s.model, task, self.tx, optax.constant_schedule(
        self.learning_rate), self.config.optim.grad_accum_steps, self.state_sharding,
        self.batch_sharding, s.rules)
    writers.console("sanity: compiling the train step")
    return fn.lower(self.state0, self.with_targets(self.batches[0])).compile()

  @functools.cached_property
  def _train_step(self):
    task = self.s.task
    if task.overfit_groups is not None:  # e.g. a GAN's discriminator alone
      task = copy.copy(task)
      task.groups = tuple(task.overfit_groups)
    return self.compile_train_step(task)

  def train_step(self, state, batch):
    """(state, metrics) of one step on a batch as the data gives it (state donated)."""
    return self._train_step(state, self.with_targets(batch))

  @functools.cached_property
  def _probe_fn(self):
    s = self.s
    fn = functools.partial(probe_gradients, s.model, s.task,
                           self.config.optim.grad_accum_steps)
    return jax.jit(fn, in_shardings=(self.state_sharding, self.batch_sharding)).lower(
        self.state0, self.batches[0]).compile()

  def probe(self, state, batch):
    """(loss, {leaf path: {"missing", "zero", "finite", "grad_sq", "param_sq", ...}})."""
    loss, stats = jax.device_get(self._probe_fn(state, batch))
    is_stats = lambda x: isinstance(x, dict) and "zero" in x
    leaves = jax.tree_util.tree_leaves_with_path(stats, is_leaf=is_stats)
    return float(loss), {checkpointing.keypath(p): v for p, v in leaves}

  @functools.cached_property
  def initial_probe(self):
    return self.probe(self.state0, self.batches[0])

def probe_gradients(model, task, accum_steps, state, batch):
  """The task's loss metric and per-leaf gradient statistics on (the first micro-batch
  of) a batch; every parameter group's gradient, as the train step takes them."""
  if accum_steps > 1:  # the step never holds more than a micro-batch's activations
    batch = jax.tree.map(lambda x: x[0], step._split_microbatches(batch, accum_steps))
  grads, stats = {}, {}
  for gi, group in enumerate(task.groups):
    key = step.step_key(state.rng, state.step, 0, gi)
    sub = state.params if group is None else state.params[group]
    fn = functools.partial(step._group_loss, model, task, group, state.params)
    (_, (_, group_stats)), g = jax.value_and_grad(fn, has_aux=True, allow_int=True)(
        sub, state.model_state, batch, key)
    stats.update(group_stats)
    grads = g if group is None else {**grads, group: g}
  loss = metrics_lib.finalize({"loss": task.metrics["loss"]}, stats)["loss"]

  def stats(p, g):
    p32 = p.astype(jnp.float32)
    if g.dtype == jax.dtypes.float0:  # an integer parameter: no gradient exists
      return {"missing": jnp.array(True), "zero": jnp.array(False),
              "finite": jnp.array(True), "grad_sq": jnp.float32(0),
              "param_sq": jnp.sum(jnp.square(p32)), "param_finite": jnp.array(True)}
    g = g.astype(jnp.float32)
    return {"missing": jnp.array(False), "zero": jnp.all(g == 0),
            "finite": jnp.all(jnp.isfinite(g)), "grad_sq": jnp.sum(jnp.square(g)),
            "param_sq": jnp.sum(jnp.square(p32)), "param_finite": jnp.all(jnp.isfinite(p32))}
  return loss, jax.tree.map(stats, state.params, grads)


# ---------------------------------------------------------------------------- data


def check_data(ctx) -> Check:
  s, config = ctx.s, ctx.config
  batches = ctx.host_batches
  n, size = len(batches), config.data.batch_size
  problems, rows, data = [], [], {"arrays": {}}

  def problem(text, fix):
    problems.append((text, fix))

  for key in sorted(batches[0]):
    arrays = [b[key] for b in batches]
    shapes = {a.shape for a in arrays}
    if len(shapes) > 1:
      problem(f"{key} changes shape between batches {sorted(shapes)}",
              "the pipeline does not pad or crop to one shape; make every batch the same shape")
      continue
    if arrays[0].shape[0] != size:
      problem(f"{key} has {arrays[0].shape[0]} rows, data.batch_size is {size}",
              "the loader ignores data.batch_size; check Data.train_batch")
    finite = [np.isfinite(a) for a in arrays]
    values = np.concatenate([a[f].ravel() for a, f in zip(arrays, finite)])
    stats = {"shape": list(arrays[0].shape), "dtype": str(arrays[0].dtype)}
    if len(values):
      stats.update(min=values.min(), max=values.max(), mean=values.mean(dtype=np.float64),
                   std=values.std(dtype=np.float64))
    data["arrays"][key] = stats
    rows.append([key, _shape(arrays[0]), *(f"{stats.get(k, np.nan):.4g}"
                                           for k in ("min", "max", "mean", "std"))])
    bad = sum(int((~f).sum()) for f in finite)
    if bad:
      problem(f"{key} holds {bad} NaN/inf values",
              "decoding or normalisation divides by zero (a constant channel?); check the "
              "pipeline's normalisation")
    for i, a in enumerate(arrays):
      if key != "mask" and len(a) >= 8 and np.all(a == a.flat[0]):  # an all-ones mask is fine
        problem(f"batch {i}'s {key} is constant ({a.flat[0]:.4g})",
                "the data is sorted or a field is not decoded; shuffle the data and check "
                "that the field is read")
        break

  digests = [hash(tuple(np.ascontiguousarray(b[k]).tobytes() for k in sorted(b)))
             for b in batches]
  same = [(i, j) for i in range(n) for j in range(i + 1, n) if digests[i] == digests[j]]
  if same:
    problem(f"batches {same[0][0]} and {same[0][1]} are identical "
            f"({len(same)} identical pairs among {n})",
            "the pipeline repeats one batch (an iterator re-created every step, or a batch "
            "index that ignores the step); check that Data.train_batch(j) depends on j")

  targets = _targets(s.task, batches)
  histogram, seen_text = "", ""
  if targets is not None:
    labels_name, labels, K = targets
    out_of_range = labels[(labels < 0) | (labels >= K)]
    if len(out_of_range):
      problem(f"{len(out_of_range)} {labels_name} outside [0, {K}) (e.g. {out_of_range[0]})",
              "labels and model outputs disagree; check the dataset's label mapping and the "
              "model's number of classes or vocabulary")
    counts = np.bincount(labels[(labels >= 0) & (labels < K)], minlength=K)
    data["label_histogram"] = counts.tolist() if K <= 1024 else None
    histogram = f"{labels_name} histogram over {n} batches: {_histogram(counts, s.data)}\n"
    seen_text = f"; {int((counts > 0).sum())} of {K} {labels_name} values seen"
  examples = ""
  if jax.process_index() == 0:
    examples = save_examples(os.path.join(ctx.workdir, "plots"), s.task.examples(batches[0]))
  data["examples"] = examples

  report = f"data: {n} train batches\n" + _table_nl(
      ["array", "shape", "min", "max", "mean", "std"], rows)
  report += histogram
  if problems:
    return Check("data", False, "; ".join(p for p, _ in problems), problems[0][1], report, data)
  return Check("data", True, f"{n} batches of {size}: " + ", ".join(
      f"{r[0]} {r[1]} in [{r[2]}, {r[3]}]" for r in rows) +
      f"{seen_text}; no repeated or constant batch; "
      f"examples in {os.path.relpath(examples, ctx.workdir) if examples else '(no plot)'}",
      report=report, data=data)


def _targets(task, batches):
  """The task's (name, integer targets, number of values) over the batches, or None."""
  parts = [task.targets(b) for b in batches]
  if any(p is None for p in parts):
    return None
  name, _, K = parts[0]
  return name, np.concatenate([np.asarray(p[1]).ravel() for p in parts]).astype(np.int64), K


def _histogram(counts, data) -> str:
  if data.num_classes:
    return " ".join(f"{c}:{n}" for c, n in enumerate(counts))
  top = np.argsort(-counts)[:8]
  decode = getattr(data, "decode", None)
  name = lambda t: repr(decode([t])) if decode and t < 256 else str(t)
  return (f"{int((counts > 0).sum())} distinct; most frequent " +
          " ".join(f"{name(int(t))}:{counts[t]}" for t in top if counts[t]))


# --------------------------------------------------------------------------- model


def layer_rows(model, task, abstract_state, batch):
  """[(module path, module type, output description)] for every __call__, in call order,
  found by tracing the model's forward pass (no computation)."""
  rows = {}

  def interceptor(next_fun, args, kwargs, context):
    root = not context.module.path and context.method_name != "setup"
    if context.method_name != "__call__" and not root:  # the model itself: any method
      return next_fun(*args, **kwargs)
    path = "/".join(context.module.path)
    row = rows.setdefault(path, [type(context.module).__name__, None])
    out = next_fun(*args, **kwargs)
    if row[1] is None:
      row[1] = _describe(out)
    return out

  outputs = []   # the model's own (top-level) outputs, whatever method the task calls

  def root(next_fun, args, kwargs, context):
    first = not context.module.path and not outputs and context.method_name != "setup"
    if first:
      outputs.append(None)   # the outermost call, not a method it calls inside
    out = next_fun(*args, **kwargs)
    if first:
      outputs[0] = out
    return out

  def forward(params, model_state, batch, key):
    with nn.intercept_methods(root), nn.intercept_methods(interceptor):
      return step.loss_and_stats(model, task, params, model_state, batch, key, False)

  jax.eval_shape(forward, abstract_state.params, abstract_state.model_state, batch,
                 abstract_state.rng)
  return [(path, kind, out) for path, (kind, out) in rows.items()], outputs[0]


def check_model(ctx) -> Check:
  s = ctx.s
  batch = ctx.batches[0]
  rows, output = layer_rows(s.model, s.task, s.abstract_state, batch)
  sizes = {}
  for path, leaf in jax.tree_util.tree_leaves_with_path(s.abstract_state.params):
    module = checkpointing.keypath(path).rpartition("/")[0]
    sizes[module] = sizes.get(module, 0) + math.prod(leaf.shape)
  under = lambda p: sum(n for m, n in sizes.items() if not p or m == p or m.startswith(p + "/"))
  table = [["  " * (p.count("/") + bool(p)) + (p.rpartition("/")[2] or "(model)"), kind, out,
            f"{under(p):,}"] for p, kind, out in rows]
  total = state_lib.num_params(s.abstract_state.params)
  report = "model: output and parameters per module (outputs traced, not computed)\n" + \
      _table_nl(["module", "type", "output", "params"], table)
  data = {"layers": [{"module": p, "type": k, "output": o, "params": under(p)}
                     for p, k, o in rows], "total_params": total}

  _, stats = ctx.initial_probe
  bad_init = [p for p, v in stats.items() if not v["param_finite"]]
  wrong_output = s.task.check_output(output, batch)
  if total == 0:
    return Check("model", False, "the model has no parameters",
                 "layers are not registered as submodules (created outside setup/@compact?); "
                 "build them inside the module", report, data)
  if bad_init:
    return Check("model", False, f"non-finite initial parameters: {', '.join(bad_init[:5])}",
                 "an initialiser divides by zero (fan-in 0?) or overflows; check the "
                 "initialisers of those layers", report, data)
  if wrong_output:
    return Check("model", False, wrong_output, "the output layer has the wrong size or the "
                 "output is reshaped; make the model return what the task scores", report,
                 data)

  notes = []
  flops = flops_lib.train_flops_per_item(
      s, rows=ctx.config.data.batch_size // ctx.config.optim.grad_accum_steps, notes=notes)
  unit = s.task.unit.rstrip("s")
  data["flops_per_" + unit] = flops
  flop_text = (f"{flops:,.0f} FLOPs per {unit} forward + backward (counted: matmuls and "
               f"convolutions, backward 2x forward{'; ' + '; '.join(notes) if notes else ''})")
  xla = _xla_flops_per_item(ctx)
  if xla:
    data["xla_flops_per_" + unit] = xla
    flop_text += f", XLA cost analysis {xla:,.0f}"
    if re.search(r"\bwhile\(", ctx._probe_fn.as_text() or ""):
      flop_text += " (which counts each loop body, e.g. scanned layers, once)"
  formula = setup.formula_flops_per_item(s, s.abstract_state.params)
  if formula:
    flop_text += f", model formula {formula:,.0f}"
  return Check("model", True, f"{s.model.__class__.__name__} with {total:,} parameters in "
               f"{len(sizes)} modules; output {_describe(output)}; {flop_text}", report=report,
               data=data)


def _xla_flops_per_item(ctx) -> float:
  """Forward and backward FLOPs per example or token, summed over devices, from XLA's cost
  analysis of the compiled gradient computation on one micro-batch: a cross-check, all
  FLOPs (elementwise too), but none of custom calls (cuDNN convolutions on a GPU) and loop
  bodies once."""
  try:
    cost = ctx._probe_fn.cost_analysis()
  except Exception:  # some backends have no cost analysis
    return 0.0
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else {}
  flops = float((cost or {}).get("flops", 0.0))
  items = ctx.s.task.items_per_batch(ctx.config.data.batch_size)
  return max(flops, 0.0) * ctx.s.mesh.size * ctx.config.optim.grad_accum_steps / items


# --------------------------------------------------------------------- initial loss


def check_initial_loss(ctx) -> Check:
  loss, _ = ctx.initial_probe
  tol, expected = ctx.config.sanity.init_loss_tolerance, ctx.s.task.initial_loss()
  data = {"loss": loss, "expected": expected}
  if expected is None:
    detail = f"{loss:.4f} at step 0 (the task declares no expected initial loss)"
  else:
    detail = f"{loss:.4f} at step 0, expected {expected:.4f}"
  if not math.isfinite(loss):
    return Check("initial_loss", False, detail, "the forward pass overflows at "
                 "initialisation; check the input scale, the dtype and the initialisers",
                 data=data)
  if expected is None:
    return Check("initial_loss", True, detail, data=data)
  if loss > expected * (1 + tol):
    return Check("initial_loss", False, f"{detail}, {loss / expected:.1f}x too high",
                 "the initial outputs are far from uniform (logits too large: an output "
                 "layer initialised too large, or unnormalised inputs); initialise the last "
                 "layer small or zero and check the input scale", data=data)
  if loss < expected * (1 - tol):
    return Check("initial_loss", False, f"{detail}, {expected / max(loss, 1e-9):.1f}x too low",
                 "below chance before any training: labels may leak into the inputs, or the "
                 "loss is not a mean cross-entropy; check the task and the inputs", data=data)
  return Check("initial_loss", True, f"{detail} (within {tol:.0%})", data=data)


# -------------------------------------------------------------------- gradient flow

RETRY_STEPS = 3  # a leaf with zero gradient at init gets this many steps to wake up


def check_gradient_flow(ctx) -> Check:
  _, stats = ctx.initial_probe
  zero = [p for p, v in stats.items() if v["zero"]]
  woke = []
  if zero:  # e.g. behind a zero-initialised scale: gradients flow after a step or two
    state = ctx.fresh_state()
    for i in range(RETRY_STEPS):
      state, _ = ctx.train_step(state, ctx.batches[(i + 1) % len(ctx.batches)])
    _, later = ctx.probe(state, ctx.batches[0])
    woke = [p for p in zero if not later[p]["zero"]]
    zero = [p for p in zero if later[p]["zero"]]
  missing = [p for p, v in stats.items() if v["missing"]]
  bad = [p for p, v in stats.items() if not v["finite"]]

  modules = {}
  for p, v in stats.items():
    m = modules.setdefault(p.rpartition("/")[0] or "(model)", [0, 0.0, 0.0])
    m[0] += 1
    m[1] += float(v["grad_sq"])
    m[2] += float(v["param_sq"])
  rows = [[m, str(n), f"{math.sqrt(g):.3e}", f"{math.sqrt(w):.3e}",
           f"{math.sqrt(g / w):.2e}" if w else "-"] for m, (n, g, w) in modules.items()]
  report = "gradient norms per module at step 0\n" + \
      _table_nl(["module", "leaves", "grad norm", "param norm", "grad/param"], rows)
  data = {"zero": zero, "missing": missing, "non_finite": bad, "zero_at_init_only": woke,
          "grad_norms": {m: math.sqrt(g) for m, (_, g, _) in modules.items()}}
  problems = []
  if bad:
    problems.append((f"non-finite gradient in {_names(bad)}", "an overflow or a log/sqrt/"
                     "division near zero in the forward or backward pass; check those "
                     "layers, the dtype and the input scale"))
  if zero:
    problems.append((f"gradient exactly zero in {_names(zero)} (also after {RETRY_STEPS} "
                     "steps)", "these parameters do not affect the loss: a layer created "
                     "but not used, a stop_gradient, or a dead path; wire them into the "
                     "forward pass or remove them"))
  if missing:
    problems.append((f"no gradient for {_names(missing)} (integer parameters)",
                     "integer leaves cannot be trained; keep them in another collection "
                     "than 'params'"))
  if problems:
    return Check("gradient_flow", False, "; ".join(p for p, _ in problems), problems[0][1],
                 report, data)
  note = f"; zero at init only: {_names(woke)}" if woke else ""
  return Check("gradient_flow", True, f"all {len(stats)} parameter leaves get finite, "
               f"non-zero gradients{note}", report=report, data=data)


# ------------------------------------------------------------------ overfit one batch


def check_overfit(ctx) -> Check:
  """Memorising one batch must take the loss well below `baseline`, the least loss a model
  that ignores its input can reach there (the entropy of the batch's targets)."""
  sc, floor = ctx.config.sanity, ctx.s.task.loss_floor
  baseline = ctx.s.task.input_free_loss(ctx.host_batches[0])
  if baseline is None:  # the task knows no input-free loss: beat the loss at initialisation
    baseline = ctx.initial_probe[0]
  target = floor + sc.overfit_fraction * (baseline - floor)
  state, batch, losses = ctx.fresh_state(), ctx.batches[0], []
  fixed = ctx.s.task.overfit_with_fixed_key
  for _ in range(sc.overfit_steps):
    if fixed:  # the task's randomness (views, masks, noise) repeats with the batch
      state = state.replace(step=jnp.zeros_like(state.step))
    state, metrics = ctx.train_step(state, batch)
    losses.append(float(metrics["loss"]))
    if not math.isfinite(losses[-1]) or losses[-1] < target:
      break
  every = max(1, len(losses) // 10)
  shown = sorted(set(range(0, len(losses), every)) | {len(losses) - 1})
  report = (f"overfit one batch of {ctx.config.data.batch_size} at constant learning rate "
            f"{ctx.learning_rate:g}; input-free loss {baseline:.4f}, target < {target:.4f}:\n" +
            _table_nl(["step", "loss"], [[str(i), f"{losses[i]:.4f}"] for i in shown]))
  data = {"losses": losses, "target": target, "input_free_loss": baseline,
          "learning_rate": ctx.learning_rate}
  last = losses[-1]
  if not math.isfinite(last):
    return Check("overfit_one_batch", False, f"the loss became non-finite at step "
                 f"{len(losses) - 1}", "the learning rate is too high for this model, or a "
                 "numerical bug; lower optim.learning_rate (see --mode=lr_range) or set "
                 "optim.clip_norm", report, data)
  detail = f"loss {losses[0]:.4f} -> {last:.4f} in {len(losses)} steps"
  if last >= target:
    return Check("overfit_one_batch", False, f"{detail}, not below {target:.4f} (a model "
                 f"that ignores its input reaches {baseline:.4f})",
                 "the model cannot memorise one batch: its output may ignore its input, the "
                 "learning rate may be off (--mode=lr_range), or dropout/weight decay fight "
                 "it; check that the forward pass uses its input, or raise "
                 "sanity.overfit_steps for a large model", report, data)
  return Check("overfit_one_batch", True, f"{detail} (below {target:.4f}; a model that "
               f"ignores its input reaches {baseline:.4f})", report=report, data=data)


# ----------------------------------------------------------------------- label signal

def check_label_signal(ctx) -> Check:
  """Two runs from the initial state on the same fresh train batches at the constant peak
  learning rate, in step: one on the real targets, one on targets permuted across each
  batch (task.shuffle_targets: the input-target pairing broken, the targets' distribution
  kept). Every label_signal_eval_every steps both are scored on held-out batches of the
  eval split; the check passes once the real run's loss is clearly below the shuffled
  one's, and fails if it is not by label_signal_steps. A model that learns nothing from
  which target goes with which input still memorises one batch (overfit_one_batch)."""
  s, task, sc = ctx.s, ctx.s.task, ctx.config.sanity
  key = jax.random.PRNGKey(ctx.config.seed)
  if jax.eval_shape(task.shuffle_targets, ctx.batches[0], key) is None:
    return Check("label_signal", True, f"skipped: task {type(task).__name__} has no "
                 "targets to shuffle (its shuffle_targets returns None)",
                 data={"skipped": True})
  steps, every, num_eval, fraction = (sc.label_signal_steps, sc.label_signal_eval_every,
                                      sc.label_signal_eval_batches, sc.label_signal_fraction)
  held_out = list(s.data.eval_batches(limit=num_eval * ctx.config.data.eval_batch_size))
  eval_step = step.compile_eval_step(s.model, task, ctx.state_sharding, ctx.batch_sharding,
                                     s.rules)
  train_step = ctx._train_step if task.overfit_groups is None else \
      ctx.compile_train_step(task)
  shuffle = jax.jit(task.shuffle_targets, out_shardings=ctx.batch_sharding)

  def held_out_loss(state):
    total = None
    for j, batch in enumerate(held_out):
      stats, _ = jax.device_get(eval_step(state, batch, np.int32(j)))
      total = stats if total is None else metrics_lib.combine(task.metrics, total, stats)
    return float(metrics_lib.finalize(task.metrics, total)["loss"])

  floor = task.loss_floor
  target = lambda shuffled: shuffled - fraction * (shuffled - floor)
  initial = held_out_loss(ctx.state0)
  real, shuffled = ctx.fresh_state(), ctx.fresh_state()
  curve, train_losses = [], []
  for i in range(steps):
    batch = s.data.next_train()   # fresh: after the data check's batches
    real, real_metrics = train_step(real, ctx.with_targets(batch))
    shuffled, shuffled_metrics = train_step(shuffled, shuffle(batch, jax.random.fold_in(key, i)))
    train_losses.append((real_metrics["loss"], shuffled_metrics["loss"]))
    if (i + 1) % every and i + 1 < steps:
      continue
    curve.append((i + 1, held_out_loss(real), held_out_loss(shuffled)))
    if not math.isfinite(curve[-1][1]) or curve[-1][1] < target(curve[-1][2]):
      break
  done, real_loss, shuffled_loss = curve[-1]
  baseline = task.input_free_loss(jax.tree.map(lambda *x: np.concatenate(x),
                                               *ctx.host_batches))
  chance = task.initial_loss()
  last_train = [float(x) for x in jax.device_get(train_losses[-1])]
  data = {"steps": done, "learning_rate": ctx.learning_rate, "held_out_batches": len(held_out),
          "held_out_initial": initial, "held_out_real": real_loss,
          "held_out_shuffled": shuffled_loss, "target": target(shuffled_loss),
          "input_free_loss": baseline, "chance_loss": chance, "loss_floor": floor,
          "curve": [{"step": t, "real": r, "shuffled": u} for t, r, u in curve]}
  report = (f"label signal: real vs shuffled targets on the same fresh batches at constant "
            f"learning rate {ctx.learning_rate:g}; held-out loss on {len(held_out)} eval "
            f"batches (at init {initial:.4f}" +
            (f", input-free {baseline:.4f}" if baseline is not None else "") +
            (f", chance {chance:.4f}" if chance is not None else "") + "):\n" +
            _table_nl(["step", "real", "shuffled", "needed"],
                      [[str(t), f"{r:.4f}", f"{u:.4f}", f"< {target(u):.4f}"]
                       for t, r, u in curve]) +
            f"last train loss: real {last_train[0]:.4f}, shuffled {last_train[1]:.4f}\n")
  compared = f"held-out loss {real_loss:.4f} (real targets) vs {shuffled_loss:.4f} " \
      f"(shuffled) after {done} steps"
  if not math.isfinite(real_loss):
    return Check("label_signal", False, f"the held-out loss became non-finite within {done} "
                 "steps on fresh batches", "the learning rate is too high for this model "
                 "beyond one batch, or a numerical bug; lower optim.learning_rate (see "
                 "--mode=lr_range) or set optim.clip_norm", report, data)
  if not real_loss < target(shuffled_loss):
    return Check("label_signal", False, f"the model learns no more from the real targets "
                 f"than from shuffled ones: {compared}, not below {target(shuffled_loss):.4f}",
                 "likely: targets that do not match their inputs (a misaligned join of "
                 "inputs and labels, a shuffle or sort of one side, a model that mixes up "
                 "its batch rows), or a model that does not generalise beyond its batch; "
                 "check how inputs and targets are paired in the data source and the model, "
                 "or raise sanity.label_signal_steps for a slow learner", report, data)
  return Check("label_signal", True, f"{compared} (below {target(shuffled_loss):.4f}; at init "
               f"{initial:.4f}" + (f", input-free {baseline:.4f}" if baseline is not None
                                   else "") + ")", report=report, data=data)


CHECKS = (("data", check_data), ("model", check_model), ("initial_loss", check_initial_loss),
          ("gradient_flow", check_gradient_flow), ("overfit_one_batch", check_overfit),
          ("label_signal", check_label_signal))


# ---------------------------------------------------------------------- utilities


def _shape(x) -> str:
  name = np.dtype(x.dtype).name
  return f"{DTYPE_NAMES.get(name, name)}[{','.join(map(str, x.shape))}]"


def _describe(tree) -> str:
  leaves = [(p, x) for p, x in jax.tree_util.tree_leaves_with_path(tree) if hasattr(x, "shape")]
  if len(leaves) == 1:
    return _shape(leaves[0][1])
  parts = [f"{checkpointing.keypath(p)}: {_shape(x)}" for p, x in leaves[:3]]
  return ", ".join(parts) + (", ..." if len(leaves) > 3 else "")


def _names(paths, most: int = 8) -> str:
  return ", ".join(paths[:most]) + (f" and {len(paths) - most} more" if len(paths) > most else "")


def save_examples(folder: str, examples: dict) -> str:
  """A task's examples as plots/data_examples.png or plots/text_examples.txt; the path."""
  if "images" in examples:
    return plots.image_grid(os.path.join(folder, "data_examples.png"), examples["images"],
                            examples.get("labels"))
  if "text" in examples:
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, "text_examples.txt")
    with open(path, "w") as f:
      for i, text in enumerate(examples["text"]):
        f.write(f"----- window {i} -----\n{text}\n")
    return path
  return ""


def _table_nl(header, rows) -> str:
  return writers.table(header, rows) + "\n"


def _plain(x):
  return x.item() if hasattr(x, "item") else str(x)


def _print(text: str):
  if jax.process_index() == 0:
    print(text, flush=True)

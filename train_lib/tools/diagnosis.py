"""A run's logged lines read for the patterns practitioners check by hand, during and after it.

    doctor = diagnosis.Doctor(config)       # a loop watcher (train_lib/loop.py)
    doctor.start(setup, workdir)            # the task's expected initial loss; earlier attempts
    doctor(step, "train", {"loss": 0.31, "grad_rms/Dense_0": 0.0, ...})  # every logged line
    doctor.finish(result)                   # a last look; writes workdir/diagnosis.json
    findings = diagnosis.diagnose(train, evals, num_steps, initial_loss, lines=lines)

It reads everything the loop logs: the train and held-out losses, the largest step loss of
each interval (loss_max), the learning rate, the gradient RMS per top-level module
(grad_rms/<module>), and the loss measured at initialisation (metrics.jsonl's step-0 line).

Kinds, each with its evidence (step, metric, values) and advice that follows from it:
  non_finite         a NaN or inf loss
  divergence         the loss far above its initial value, or risen far from its best
  high_initial_loss  the measured initial loss far above what the task expects (an
                     overconfident or badly scaled output layer)
  frozen_module      a module whose gradient is zero at every logged step (stop_gradient, an
                     unused or detached branch): names the module
  dead_gradients     modules whose gradient fell to zero after being nonzero (dead ReLUs,
                     saturated units), typically after a step that was too large
  plateau            the loss still near its initial value; the advice depends on what
                     came before: a zero learning rate, a spike or dead gradients (too
                     high), or none of these (too low, labels, init)
  oscillation        the loss bouncing up and down
  spikes             jumps in the loss that came back down
  widening_gap       held-out minus train loss growing while the held-out loss stalls
"""

import math
import os
import statistics

import jax
import numpy as np

from train_lib import writers

KINDS = ("non_finite", "divergence", "high_initial_loss", "frozen_module", "dead_gradients",
         "plateau", "oscillation", "spikes", "widening_gap")

ADVICE = {
    "non_finite": (
        "a learning rate too high, no gradient clipping, a log or division of zero in the "
        "loss, bfloat16 overflow, or NaN/inf in the input data",
        "lower optim.learning_rate 3-10x, set optim.clip_norm=1.0, add optim.warmup_steps, "
        "try --config.dtype=float32, rerun with --jax_debug_nans to find the first NaN"),
    "divergence": (
        "a learning rate too high for this batch size and model, a warmup too short, "
        "Adam's b2 too close to 1, no gradient clipping",
        "lower optim.learning_rate 3-10x, lengthen optim.warmup_steps, set "
        "optim.clip_norm=1.0, try optim.b2=0.95"),
    "high_initial_loss": (
        "an overconfident initialisation: the output layer's scale (or a multiplier on the "
        "logits) makes confident wrong predictions before any training",
        "initialise the last layer with a small scale (zeros, or variance_scaling 0.01), "
        "remove fixed multipliers on the logits, check the loss receives logits and not "
        "probabilities"),
    "frozen_module": (
        "no gradient reaches these parameters: a jax.lax.stop_gradient, a branch whose "
        "output is not used, parameters created but never applied, or an input detached "
        "from the graph",
        "look for stop_gradient and unused outputs in the named modules, run --mode=sanity "
        "(gradient_flow names each leaf), remove the parameters if they are meant to be "
        "unused"),
    "dead_gradients": (
        "units died (ReLU inputs pushed below zero for every example) or saturated after "
        "updates that were too large; they receive no gradient and cannot recover",
        "lower optim.learning_rate 10x, add optim.warmup_steps, set optim.clip_norm=1.0, "
        "or use an activation with a gradient below zero (gelu, leaky_relu)"),
    "plateau": (
        "a learning rate far too low (or zero), gradients that do not reach the parameters "
        "(a frozen or dead layer, saturated activations), labels that do not match the "
        "inputs, a bad initialisation",
        "raise optim.learning_rate 10x, check grad_rms/<module> in metrics.jsonl is nonzero "
        "for every module, run --mode=sanity (overfit one batch, label signal), check the "
        "data pipeline's labels"),
    "oscillation": (
        "a learning rate too high (the loss bounces across a valley), momentum too high, a "
        "batch too small for the gradient noise, an unshuffled or periodic data order",
        "lower optim.learning_rate 2-3x, raise data.batch_size, lower optim.b1 or "
        "optim.momentum, check that the training data is shuffled"),
    "spikes": (
        "a few bad batches (outliers, corrupt examples), a learning rate near the edge of "
        "stability, Adam's second-moment estimate lagging a sudden large gradient, no clipping",
        "set optim.clip_norm=1.0, lower optim.b2 to 0.95, lower optim.learning_rate, look "
        "at the batches of the spike steps"),
    "widening_gap": (
        "overfitting: the model memorises the training set (too large for the data, too "
        "little regularisation, too many epochs)",
        "raise optim.weight_decay or model dropout, augment (data.random_crop, "
        "data.random_flip), stop at the best held-out step, or get more data"),
}
# A plateau's advice where the evidence points elsewhere than "too low".
PLATEAU_BECAUSE = {
    "zero_lr": (
        "the learning rate is zero at every logged step: nothing is updated",
        "set optim.learning_rate > 0, and optim.warmup_steps well below train.num_steps"),
    "too_high": (
        "a learning rate too high: the loss spiked or the gradients died before the plateau, "
        "and the model fell back to predicting the label frequencies",
        "lower optim.learning_rate 10x (or more), add optim.warmup_steps, set "
        "optim.clip_norm=1.0"),
}

PLATEAU_AFTER = 0.25   # of the run's steps before a plateau is called during training
NEAR = 0.10            # "near the initial loss": within this fraction of it
ZERO = 1e-12           # a gradient RMS at or below this is zero
SPIKE = 3.0            # a step loss above this x the initial loss is a spike
HIGH_INITIAL = 2.0     # a measured initial loss above this x the expected one is high


def _finding(kind, step, summary, evidence, because=None):
  likely, fixes = PLATEAU_BECAUSE[because] if because else ADVICE[kind]
  return {"kind": kind, "step": int(step), "summary": summary, "evidence": evidence,
          "likely": likely, "try": fixes}


def _evidence(metric, points, **more):
  return {"metric": metric, "steps": [int(s) for s, _ in points],
          "values": [float(f"{v:.6g}") for _, v in points], **more}


def line(finding) -> str:
  return (f"diagnosis: {finding['kind']} at step {finding['step']}: {finding['summary']}. "
          f"Likely: {finding['likely']}. Try: {finding['try']}.")


def diagnose(train, evals=(), num_steps=0, initial_loss=None, final=True, lines=None,
             expected_loss=None) -> list:
  """Findings from the train curve and the held-out curve, each [(step, loss)] by step, and
  the train lines' other metrics ({step: {metric: value}}, optional).

  `initial_loss` is the loss measured at initialisation (or, unknown, the task's expected
  one); `expected_loss` the task's expectation. `final=False` (during training) holds back a
  plateau until PLATEAU_AFTER of the steps.
  """
  lines = lines or {}
  found = []
  for name, points in (("train", train), ("held-out", evals)):
    bad = [(s, v) for s, v in points if not math.isfinite(v)]
    if bad:
      found.append(_finding("non_finite", bad[0][0], f"{name} loss is {bad[0][1]}",
                            _evidence("loss", bad[:5], split=name)))
  train = [(s, v) for s, v in train if math.isfinite(v)]
  evals = [(s, v) for s, v in evals if math.isfinite(v)]
  found += _high_initial(initial_loss, expected_loss)
  trained = [(s, v) for s, v in train if s > 0]   # the step-0 point is the initial loss
  diverged = _divergence(trained, initial_loss)
  oscillating = _oscillation(trained)
  found += diverged + (oscillating or _spikes(trained))  # an oscillation's peaks are no spikes
  frozen, dead = _gradients(lines)
  found += frozen + dead
  if not diverged:
    found += _plateau(train, num_steps, initial_loss, final, lines, bool(dead))
    found += _widening_gap(trained, evals)
  return found


def _high_initial(measured, expected):
  if not (measured and expected) or measured <= HIGH_INITIAL * expected:
    return []
  return [_finding("high_initial_loss", 0, f"the loss measured at initialisation is "
                   f"{measured:.4g}, {measured / expected:.1f}x the {expected:.4g} the task "
                   "expects", _evidence("loss", [(0, measured)], expected=expected))]


def _divergence(train, initial_loss):
  if len(train) < 2:
    return []
  losses = [v for _, v in train]
  if initial_loss and initial_loss > 0 and min(losses[-2:]) > 3 * initial_loss:
    return [_finding("divergence", train[-1][0],
                     f"train loss {losses[-1]:.4g} is over 3x the initial {initial_loss:.4g}",
                     _evidence("loss", train[-3:], initial=initial_loss))]
  if len(train) < 3:
    return []
  first, best_i = losses[0], min(range(len(losses)), key=losses.__getitem__)
  best = losses[best_i]
  threshold = best + max(0.5 * (first - best), 0.1 * abs(first))
  if best_i < len(losses) - 2 and min(losses[-2:]) > threshold:
    return [_finding("divergence", train[-1][0],
                     f"train loss rose from its best {best:.4g} (step {train[best_i][0]}) to "
                     f"{losses[-1]:.4g}", _evidence("loss", [train[best_i]] + train[-2:]))]
  return []


def _spikes(train):
  scale = abs(train[0][1]) if train else 0.0
  spikes = []  # (step, level before, value)
  for i in range(3, len(train) - 1):
    ref = statistics.median(v for _, v in train[i - 3:i])
    jump = train[i][1] - ref
    if jump > max(0.25 * abs(ref), 0.05 * scale) and train[i + 1][1] < ref + 0.5 * jump:
      spikes.append((train[i][0], ref, train[i][1]))
  if not spikes:
    return []
  where = ", ".join(f"step {s} ({ref:.4g} -> {v:.4g})" for s, ref, v in spikes[:5])
  return [_finding("spikes", spikes[0][0],
                   f"{len(spikes)} spike(s) in the train loss that came back down: {where}",
                   _evidence("loss", [(s, v) for s, _, v in spikes[:5]]))]


def _oscillation(train, window: int = 8):
  if len(train) < window:
    return []
  w = [v for _, v in train[-window:]]
  d = [b - a for a, b in zip(w, w[1:])]
  flips = sum(a * b < 0 for a, b in zip(d, d[1:]))
  swing = sum(abs(x) for x in d) / len(d)
  level = sum(abs(x) for x in w) / len(w)
  trend = abs(w[-1] - w[0]) / len(d)
  if flips >= len(d) - 2 and swing >= 0.1 * level and swing >= 2 * trend:
    return [_finding("oscillation", train[-1][0],
                     f"the train loss went up and down {flips} times in its last {window} "
                     f"points, by {swing:.3g} on average around {level:.4g}",
                     _evidence("loss", train[-window:]))]
  return []


def _module_series(lines) -> dict:
  """{module: [(step, grad_rms)]} from the train lines, by step."""
  series = {}
  for step in sorted(lines):
    for key, value in lines[step].items():
      if key.startswith("grad_rms/") and isinstance(value, (int, float)):
        series.setdefault(key[len("grad_rms/"):], []).append((step, float(value)))
  return series


def _gradients(lines):
  """(frozen_module findings, dead_gradients findings) from grad_rms/<module>."""
  series = _module_series(lines)
  if len(series) < 2:   # one module: a zero gradient there is a plateau's business
    return [], []
  frozen = {m: pts for m, pts in series.items()
            if len(pts) >= 2 and all(v <= ZERO for _, v in pts)}
  dead = {}
  for m, pts in series.items():
    if m in frozen:
      continue
    last_alive = max((i for i, (_, v) in enumerate(pts) if v > ZERO), default=-1)
    tail = pts[last_alive + 1:]
    if len(tail) >= 2:   # zero at the last two lines or more, after being nonzero
      dead[m] = (pts[last_alive], tail)
  out_frozen, out_dead = [], []
  if frozen and len(frozen) < len(series):
    names = sorted(frozen)
    steps = series[names[0]]
    out_frozen.append(_finding(
        "frozen_module", steps[0][0],
        f"no gradient reaches {', '.join(names)}: grad_rms is 0 at every logged step "
        f"({steps[0][0]}-{steps[-1][0]}) while other modules learn",
        {"metric": [f"grad_rms/{m}" for m in names], "steps": [s for s, _ in steps],
         "values": [0.0] * len(steps), "modules": names}))
  if dead:
    names = sorted(dead)
    since = min(tail[0][0] for _, tail in dead.values())
    alive = {m: float(f"{v:.3g}") for m, ((_, v), _) in sorted(dead.items())}
    out_dead.append(_finding(
        "dead_gradients", since,
        f"the gradients of {', '.join(names)} fell to 0 by step {since} after being nonzero "
        f"(last nonzero grad_rms {alive}) and stayed 0",
        {"metric": [f"grad_rms/{m}" for m in names], "steps": [since],
         "values": [0.0], "last_nonzero": alive, "modules": names}))
  return out_frozen, out_dead


def _learning_rates(lines) -> list:
  """[(step, largest learning rate of the line)] of the train lines that log one."""
  out = []
  for step in sorted(lines):
    rates = [v for k, v in lines[step].items() if k == "learning_rate" or
             k.startswith("learning_rate/")]
    if rates:
      out.append((step, max(rates)))
  return out


def _plateau(train, num_steps, initial_loss, final, lines, dead):
  trained = [(s, v) for s, v in train if s > 0]
  if len(trained) < 3 or not (final or trained[-1][0] >= PLATEAU_AFTER * num_steps):
    return []
  first = train[0][1]
  refs = [r for r in (initial_loss,) if r]
  if initial_loss is None or first >= (1 - NEAR) * initial_loss:
    refs.append(first)    # the first logged point is itself still near the start
  recent = [v for _, v in trained[-3:]]
  ref = next((r for r in refs if all(abs(v - r) <= NEAR * abs(r) for v in recent)), None)
  if ref is None:
    return []
  summary = (f"the train loss is still {recent[-1]:.4g} after {trained[-1][0]} steps, "
             f"within {NEAR:.0%} of its initial {ref:.4g}")
  evidence = _evidence("loss", trained[-3:], initial=ref)
  rates = _learning_rates(lines)
  if rates and all(v == 0 for _, v in rates):
    evidence["learning_rate"] = _evidence("learning_rate", rates[-3:])
    return [_finding("plateau", trained[-1][0], summary + "; the learning rate is 0 at every "
                     "logged step", evidence, because="zero_lr")]
  spikes = [(s, lines[s]["loss_max"]) for s in sorted(lines)
            if isinstance(lines[s].get("loss_max"), (int, float))
            and lines[s]["loss_max"] > SPIKE * abs(ref)]
  if spikes or dead:
    what = []
    if spikes:
      s, v = max(spikes, key=lambda p: p[1])
      what.append(f"a step loss reached {v:.4g} (step {s}'s interval), {v / abs(ref):.0f}x "
                  "the initial")
      evidence["loss_max"] = _evidence("loss_max", spikes[:5])
    if dead:
      what.append("gradients died (see dead_gradients)")
    if rates:
      evidence["learning_rate"] = _evidence("learning_rate", rates[:3])
      what.append(f"at a learning rate of up to {max(v for _, v in rates):.3g}")
    return [_finding("plateau", trained[-1][0], f"{summary}; before it, {', '.join(what)}",
                     evidence, because="too_high")]
  return [_finding("plateau", trained[-1][0], summary, evidence)]


def _widening_gap(train, evals):
  gaps = []
  for step, held_out in evals:
    before = [v for s, v in train if s <= step]
    if before:
      gaps.append((step, held_out - before[-1], held_out))
  if len(gaps) < 3:
    return []
  # From the held-out best (or the last three evals): the gap grows while held-out stalls.
  best = min(range(len(gaps)), key=lambda i: gaps[i][2])
  window = gaps[min(best, len(gaps) - 3):]
  (s0, g0, e0), (s, g, e) = window[0], window[-1]
  growing = window[-3][1] < window[-2][1] < g
  if growing and g > 0 and g - g0 > 0.1 * abs(e) and e >= 0.98 * e0:
    rising = f"; held-out loss up from {e0:.4g}" if e > 1.02 * e0 else ""
    return [_finding("widening_gap", s, f"held-out minus train loss grew from {g0:.3g} "
                     f"(step {s0}) to {g:.3g} (step {s}){rising}",
                     _evidence("held-out minus train loss", [(w[0], w[1]) for w in window]))]
  return []


def _scalar(value) -> bool:
  return isinstance(value, (int, float, np.number)) or (
      isinstance(value, np.ndarray) and value.ndim == 0)


class Doctor:
  """Watches a run's logged lines (a loop watcher); one printed line per new finding."""

  def __init__(self, config):
    self.num_steps, self.eval_split = config.train.num_steps, config.data.eval_split

  def start(self, setup, workdir: str):
    self.path = os.path.join(workdir, "diagnosis.json")
    self.expected_loss = setup.task.initial_loss()
    self.lines = {split: {step: {k: v for k, v in m.items() if _scalar(v)}
                          for step, m in steps.items() if "loss" in m}
                  for split, steps in writers.read_lines(workdir).items()}  # earlier attempts
    earlier = writers.read_json(self.path, {})  # findings of an earlier attempt: not again
    self.findings = {f_["kind"]: f_ for f_ in earlier.get("findings", [])
                     if isinstance(f_, dict) and "kind" in f_}
    self.active = jax.process_index() == 0

  @property
  def initial_loss(self):
    """The loss measured at initialisation (the step-0 line), else the task's expectation."""
    measured = self.lines.get("train", {}).get(0, {}).get("loss")
    return measured if measured is not None else self.expected_loss

  def __call__(self, step: int, split: str, metrics: dict) -> bool:
    if "loss" in metrics:
      for lines in self.lines.values():   # lines after this step: an abandoned attempt
        for s in [s for s in lines if s > step]:
          del lines[s]
      self.lines.setdefault(split, {})[step] = {
          k: float(v) for k, v in metrics.items() if _scalar(v)}
      self._check(final=False)
    return False  # never stops a run; the loop's guards stop it

  def finish(self, result=None) -> list:
    self._check(final=True)
    self._write()
    return list(self.findings.values())

  def _check(self, final: bool):
    train_lines = self.lines.get("train", {})
    curve = lambda split: sorted((s, m["loss"]) for s, m in self.lines.get(split, {}).items())
    new = [f for f in diagnose(curve("train"), curve(self.eval_split), self.num_steps,
                               self.initial_loss, final, train_lines, self.expected_loss)
           if f["kind"] not in self.findings]
    for finding in new:
      self.findings[finding["kind"]] = finding
      writers.console(line(finding))
    if new:
      self._write()

  def _write(self):
    if self.active:
      measured = self.lines.get("train", {}).get(0, {}).get("loss")
      writers.write_json(self.path, {"num_steps": self.num_steps,
                                     "initial_loss": measured,
                                     "expected_initial_loss": self.expected_loss,
                                     "kinds": list(KINDS),
                                     "findings": list(self.findings.values())}, indent=2)

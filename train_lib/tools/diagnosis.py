"""Loss curves read for the patterns practitioners check by hand, during and after a run.

    doctor = diagnosis.Doctor(config)       # a loop watcher (train_lib/loop.py)
    doctor.start(setup, workdir)            # the task's initial loss; earlier attempts
    doctor(step, "train", {"loss": 0.31})   # at every logged point; prints new findings
    doctor.finish(result)                   # a last look; writes workdir/diagnosis.json
    findings = diagnosis.diagnose(train, evals, num_steps)   # [(step, loss)] -> [dict]

Patterns: non_finite, divergence, plateau (near the initial loss), oscillation, spikes,
widening_gap (held-out minus train loss). Each finding prints one line with its likely
causes and what to try, and lands in diagnosis.json.
"""

import math
import os
import statistics

import jax

from train_lib import writers

ADVICE = {
    "non_finite": (
        "a learning rate too high, no gradient clipping, a log or division of zero in the "
        "loss, bfloat16 overflow, or NaN/inf in the input data",
        "lower optim.learning_rate 3-10x, set optim.clip_norm=1.0, add optim.warmup_steps, "
        "try --config.dtype=float32, rerun with --jax_debug_nans to find the first NaN"),
    "divergence": (
        "a learning rate too high for this batch size and model, a warmup too short, "
        "Adam's b2 too close to 1, no gradient clipping",
        "halve optim.learning_rate, lengthen optim.warmup_steps, set optim.clip_norm=1.0, "
        "try optim.b2=0.95"),
    "plateau": (
        "a learning rate far too low (or zero), gradients that do not reach the parameters "
        "(a frozen or dead layer, saturated activations), labels that do not match the "
        "inputs, a bad initialisation",
        "raise optim.learning_rate 10x, check grad_rms/<module> in metrics.jsonl is nonzero "
        "for every module, overfit one small batch, check the data pipeline's labels"),
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

PLATEAU_AFTER = 0.25   # of the run's steps before a plateau is called during training
NEAR = 0.10            # "near the initial loss": within this fraction of it


def _finding(kind, step, summary):
  likely, fixes = ADVICE[kind]
  return {"kind": kind, "step": int(step), "summary": summary, "likely": likely, "try": fixes}


def line(finding) -> str:
  return (f"diagnosis: {finding['kind']} at step {finding['step']}: {finding['summary']}. "
          f"Likely: {finding['likely']}. Try: {finding['try']}.")


def diagnose(train, evals=(), num_steps=0, initial_loss=None, final=True) -> list:
  """Findings from the train curve and the held-out curve, each [(step, loss)] by step.

  `final=False` (during training) holds back a plateau until PLATEAU_AFTER of the steps.
  """
  found = []
  for name, points in (("train", train), ("held-out", evals)):
    bad = [(s, v) for s, v in points if not math.isfinite(v)]
    if bad:
      found.append(_finding("non_finite", bad[0][0], f"{name} loss is {bad[0][1]}"))
  train = [(s, v) for s, v in train if math.isfinite(v)]
  evals = [(s, v) for s, v in evals if math.isfinite(v)]
  diverged = _divergence(train, initial_loss)
  oscillating = _oscillation(train)
  found += diverged + (oscillating or _spikes(train))  # an oscillation's peaks are no spikes
  if not diverged:
    found += _plateau(train, num_steps, initial_loss, final) + _widening_gap(train, evals)
  return found


def _divergence(train, initial_loss):
  if len(train) < 2:
    return []
  losses = [v for _, v in train]
  if initial_loss and min(losses[-2:]) > 3 * initial_loss:
    return [_finding("divergence", train[-1][0],
                     f"train loss {losses[-1]:.4g} is over 3x the initial "
                     f"{initial_loss:.4g} (the loss the task expects at initialisation)")]
  if len(train) < 3:
    return []
  first, best_i = losses[0], min(range(len(losses)), key=losses.__getitem__)
  best = losses[best_i]
  threshold = best + max(0.5 * (first - best), 0.1 * abs(first))
  if best_i < len(losses) - 2 and min(losses[-2:]) > threshold:
    return [_finding("divergence", train[-1][0],
                     f"train loss rose from its best {best:.4g} (step {train[best_i][0]}) to "
                     f"{losses[-1]:.4g}")]
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
                   f"{len(spikes)} spike(s) in the train loss that came back down: {where}")]


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
                     f"points, by {swing:.3g} on average around {level:.4g}")]
  return []


def _plateau(train, num_steps, initial_loss, final):
  if len(train) < 3 or not (final or train[-1][0] >= PLATEAU_AFTER * num_steps):
    return []
  first = train[0][1]
  refs = [r for r in (initial_loss,) if r]
  if initial_loss is None or first >= (1 - NEAR) * initial_loss:
    refs.append(first)    # the first logged point is itself still near the start
  recent = [v for _, v in train[-3:]]
  for ref in refs:
    if all(abs(v - ref) <= NEAR * abs(ref) for v in recent):
      return [_finding("plateau", train[-1][0],
                       f"the train loss is still {recent[-1]:.4g} after "
                       f"{train[-1][0]} steps, within {NEAR:.0%} of its initial {ref:.4g}")]
  return []


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
                     f"(step {s0}) to {g:.3g} (step {s}){rising}")]
  return []


class Doctor:
  """Watches a run's logged losses (a loop watcher); one printed line per new finding."""

  def __init__(self, config):
    self.num_steps, self.eval_split = config.train.num_steps, config.data.eval_split

  def start(self, setup, workdir: str):
    self.path = os.path.join(workdir, "diagnosis.json")
    self.initial_loss = setup.task.initial_loss()
    self.curves = writers.read_curves(workdir, "loss")  # earlier attempts of a resumed run
    self.findings = {}
    earlier = writers.read_json(self.path, {})  # findings of an earlier attempt: not again
    self.findings = {f_["kind"]: f_ for f_ in earlier.get("findings", [])
                     if isinstance(f_, dict) and "kind" in f_}
    self.active = jax.process_index() == 0

  def __call__(self, step: int, split: str, metrics: dict) -> bool:
    if "loss" in metrics:
      for points in self.curves.values():   # points after this step: an abandoned attempt
        for s in [s for s in points if s > step]:
          del points[s]
      self.curves.setdefault(split, {})[step] = float(metrics["loss"])
      self._check(final=False)
    return False  # never stops a run; the loop itself stops on a non-finite loss

  def finish(self, result=None) -> list:
    self._check(final=True)
    self._write()
    return list(self.findings.values())

  def _check(self, final: bool):
    train = sorted(self.curves.get("train", {}).items())
    evals = sorted(self.curves.get(self.eval_split, {}).items())
    new = [f for f in diagnose(train, evals, self.num_steps, self.initial_loss, final)
           if f["kind"] not in self.findings]
    for finding in new:
      self.findings[finding["kind"]] = finding
      writers.console(line(finding))
    if new:
      self._write()

  def _write(self):
    if self.active:
      writers.write_json(self.path, {"num_steps": self.num_steps,
                                     "initial_loss": self.initial_loss,
                                     "findings": list(self.findings.values())}, indent=2)

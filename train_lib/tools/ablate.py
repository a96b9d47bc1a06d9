"""--mode=ablate: a baseline, variants that each change one field, several seeds, a proxy budget.

    python main.py --mode=ablate --config=configs/ablations/shakespeare_arch.py:runlocal --workdir=/tmp/abl
    summary = ablate.run(ablation_config, workdir)   # -> ablation.md, ablation.json, plots/

An ablation config (configs/ablations/NAME.py) holds `baseline.config` ("configs/NAME.py[:ARG]")
and `baseline.overrides` ((key, value) pairs), `variants` ((name, key, value): one change
each; key "config" makes the variant another config file, e.g. a model family, trained
for as many steps as the baseline on the same data), `seeds`, `proxy` (the fraction of the baseline's train.num_steps every run trains, its
warmup scaled alike), `metric` on the eval split, and `early_stop`: at the first evaluation
at or after `early_stop.at` of the run, a variant whose metric is worse than the baseline's
band there (mean + max(sigmas x std, tolerance x |mean|) over its seeds) stops, and its other
seeds are skipped. Every run is an ordinary workdir, workdir/<variant>/seed_<seed>/; a rerun
skips finished runs and resumes an interrupted one, and its progress line says which:
"[1/6] baseline seed 0: done already (step 20), skipped", "...: resumes from step 10".
"""

import importlib.util
import json
import math
import os

import numpy as np

from train_lib import checkpointing, config_io, config_reads, setup, writers
from train_lib.tools import plots, train
from train_lib.errors import Diverged, UserError

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BASELINE = "baseline"
FIELDS = ("baseline", "variants", "seeds", "proxy", "metric", "higher_is_better", "early_stop")


def load_config(spec: str, where: str = "baseline.config"):
  """"path.py[:arg]" (relative to the working directory or the repository) -> ConfigDict."""
  path, _, arg = spec.partition(":")
  found = next((p for p in (path, os.path.join(REPO, path)) if os.path.isfile(p)), None)
  if found is None:
    raise UserError(f"{where}: {path} not found; name a config file such as "
                    "configs/shakespeare_char.py")
  module_spec = importlib.util.spec_from_file_location("ablation_baseline", found)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  try:
    return module.get_config(arg or None)
  except ValueError as e:
    raise UserError(f"{where} {spec}: {e}") from None


def set_field(config, key: str, value, where: str):
  try:
    config_io.set_field(config, key, value)
  except ValueError as e:
    raise UserError(f"{where}: {e}") from None


class Plan:
  """The runs an ablation config asks for, built and checked before any of them starts."""

  def __init__(self, abl):
    missing = [name for name in FIELDS if name not in abl]
    if missing:
      raise UserError(f"--mode=ablate needs an ablation config (configs/ablations/NAME.py); "
                      f"this one has no {', '.join(missing)}")
    self.metric, self.higher_is_better = abl.metric, abl.higher_is_better
    self.seeds = tuple(int(s) for s in abl.seeds)
    if not self.seeds:
      raise UserError("seeds is empty; give at least one, e.g. (0, 1)")
    if not 0 < abl.proxy <= 1:
      raise UserError(f"proxy={abl.proxy} must be in (0, 1]: a fraction of the baseline's steps")
    self.spec = abl.baseline.config
    self.overrides, self.proxy = tuple(abl.baseline.overrides), abl.proxy
    base = self._prepared(self.spec, "baseline.config")
    tc = base.train
    self.steps, self.split = tc.num_steps, base.data.eval_split
    self.sigmas, self.tolerance = abl.early_stop.sigmas, abl.early_stop.tolerance
    self.check_step = self._check_step(abl.early_stop.at, tc.eval_every)
    self.configs, self.changes = {BASELINE: base}, {BASELINE: None}
    for name, key, value in abl.variants:
      where = f"variant {name!r}"
      if name in self.configs or "/" in name:
        raise UserError(f"{where}: variant names must be unique, not {BASELINE!r}, no '/'")
      if key == "config":   # another config file: a model family against the baseline's
        config = self._prepared(value, where, steps=self.steps)
        differ = sorted(k for k in set(base.data) | set(config.data)
                        if base.data.get(k) != config.data.get(k))
        if differ:
          raise UserError(f"{where}: {value} reads other data than the baseline "
                          f"(data.{', data.'.join(differ)}); the metric would not compare. "
                          "Set them alike in the config or baseline.overrides")
        self.configs[name], self.changes[name] = config, ("config", value)
        continue
      config = base.copy_and_resolve_references()
      set_field(config, key, value, where)
      if _get(config, key) == _get(base, key):
        raise UserError(f"{where}: {key}={value!r} is the baseline's value; not a change")
      self.configs[name], self.changes[name] = config, (key, _get(config, key))

  def _prepared(self, spec: str, where: str, steps: int = 0):
    """A config file with baseline.overrides applied, trained for `proxy` of its steps
    (or exactly `steps`: a whole-config variant trains as many steps as the baseline)."""
    config = load_config(spec, where)
    for key, value in self.overrides:
      set_field(config, key, value, "baseline.overrides")
    tc = config.train
    full = tc.num_steps
    tc.num_steps = steps or max(1, round(self.proxy * full))
    factor = tc.num_steps / full if steps else self.proxy
    config.optim.warmup_steps = min(round(factor * config.optim.warmup_steps),
                                    tc.num_steps - 1)
    return config

  def _check_step(self, at: float, eval_every: int):
    if not at:
      return None
    if not eval_every:
      raise UserError("early_stop.at needs evaluations during the run; set train.eval_every "
                      "in baseline.overrides (or early_stop.at=0)")
    step = math.ceil(at * self.steps / eval_every) * eval_every
    if step >= self.steps:
      raise UserError(f"early_stop.at={at}: the first evaluation after step "
                      f"{at * self.steps:.0f} is the last step ({self.steps}); lower "
                      "train.eval_every in baseline.overrides or early_stop.at")
    return step

  def worse(self, value: float, limit: float) -> bool:
    return not math.isfinite(value) or (value < limit if self.higher_is_better
                                        else value > limit)

  def band_limit(self, values):
    """The edge of the baseline's band: a variant beyond it is worse than the baseline."""
    mean, std = _mean_std(values)
    margin = max(self.sigmas * std, self.tolerance * abs(mean))
    return mean - margin if self.higher_is_better else mean + margin


def _get(config, key):
  for part in key.split("."):
    config = config[part]
  return config


def _mean_std(values):
  values = np.asarray(values, dtype=np.float64)
  std = float(values.std(ddof=1)) if len(values) > 1 else 0.0
  return float(values.mean()), std


class _StopWhenWorse:
  """A loop watcher: at the check step, stop if the eval metric is beyond the band."""

  def __init__(self, plan: Plan, limit: float):
    self.plan, self.limit = plan, limit

  def __call__(self, step, split, metrics):
    return (step == self.plan.check_step and split == self.plan.split
            and self.plan.worse(float(metrics[self.plan.metric]), self.limit))


def _metric_at(workdir: str, plan: Plan, step: int):
  return writers.read_curves(workdir, plan.metric).get(plan.split, {}).get(step)


def _saved_step(workdir: str):
  """The newest checkpoint step of a run that its save sealed (the one a resume restores,
  unless it fails verification), or None."""
  folder = os.path.join(workdir, "checkpoints")
  names = os.listdir(folder) if os.path.isdir(folder) else []
  return max(checkpointing.sealed(folder, [int(n) for n in names if n.isdigit()]),
             default=None)


def _done(record: dict) -> str:
  if record["status"] == "diverged":
    return "done already (diverged), skipped"
  stopped = "stopped early at " if record["status"] == "stopped" else ""
  return f"done already ({stopped}step {record['step']}), skipped"


def _train_one(plan: Plan, name: str, seed: int, workdir: str, limit, label: str) -> dict:
  """Trains one (variant, seed) unless workdir/run.json says it is done; prints `label`
  and what happens to the run: skipped, resumed from a checkpoint, or trained."""
  config = plan.configs[name].copy_and_resolve_references()
  config.seed = seed
  config.lock()
  done = os.path.join(workdir, "run.json")
  written = os.path.join(workdir, "config.json")
  if os.path.exists(written):
    if writers.read_json(written, {}) != json.loads(config.to_json_best_effort()):
      raise UserError(f"{workdir} holds a run of another config; ablate into a new "
                      "--workdir (or delete that folder)")
  finished = writers.read_json(done)
  if finished is not None:
    writers.console(f"{label}: {_done(finished)}")
    return finished
  saved = _saved_step(workdir)
  writers.console(f"{label}: " + (f"trains {plan.steps} steps" if saved is None else
                                  f"resumes from step {saved} of {plan.steps}"))
  watchers = [_StopWhenWorse(plan, limit)] if limit is not None else []
  record = {"variant": name, "seed": seed, "workdir": workdir}
  try:
    result = train(config_reads.track(config), workdir, watchers=watchers)
  except Diverged as e:
    record.update(status="diverged", reason=str(e), step=None, value=float("nan"))
  else:
    if plan.metric not in result:
      raise UserError(f"metric={plan.metric!r} is not an eval metric of this run; use one "
                      f"of {sorted(k for k in result if k not in ('step', 'split'))}")
    stopped = result.get("stopped_early", False)
    record.update(status="stopped" if stopped else "finished", step=result["step"],
                  value=float(result[plan.metric]))
    if stopped:
      record["reason"] = (f"{plan.metric} {record['value']:.4g} at step {result['step']} is "
                          f"beyond the baseline's band ({limit:.4g})")
  if plan.check_step is not None:
    record["at_check"] = _metric_at(workdir, plan, plan.check_step)
  if record["status"] == "diverged" and name == BASELINE:
    raise UserError(f"the baseline diverged (seed {seed}): {record['reason']}; fix it first")
  writers.write_json(done, record, indent=2)
  return record


def run(abl, workdir: str) -> dict:
  workdir = setup.prepare_workdir(workdir)
  plan = Plan(abl)
  config_reads.report(abl, "ablate")
  setup.enable_compilation_cache(plan.configs[BASELINE].train.compilation_cache)
  writers.write_atomic(os.path.join(workdir, "ablation_config.json"),
                       abl.to_json_best_effort(indent=2, sort_keys=True) + "\n")
  total, runs, limit = len(plan.configs) * len(plan.seeds), {}, None
  for name in plan.configs:
    runs[name] = []
    for seed in plan.seeds:
      if runs[name] and runs[name][-1]["status"] in ("stopped", "diverged"):
        writers.console(f"ablate: {name} seed {seed} skipped: the variant "
                        f"{runs[name][-1]['status']} with seed {runs[name][-1]['seed']}")
        continue
      k = sum(map(len, runs.values())) + 1
      label = f"ablate: [{k}/{total}] {name} seed {seed} ({_change(plan, name)})"
      runs[name].append(_train_one(plan, name, seed,
                                   os.path.join(workdir, name, f"seed_{seed}"), limit, label))
    if name == BASELINE and plan.check_step is not None:
      values = [r["at_check"] for r in runs[name]]
      limit = plan.band_limit(values)
      writers.console(f"ablate: baseline {plan.metric} at step {plan.check_step}: "
                      f"{_mean_std(values)[0]:.4g}; variants beyond {limit:.4g} stop there")
  rows = summarize(plan, runs)
  write_outputs(plan, rows, runs, limit, workdir)
  return {"mode": "ablate", "metric": plan.metric, "split": plan.split,
          "table": os.path.join(workdir, "ablation.md"),
          "rows": [{k: row[k] for k in ("variant", "mean", "std", "delta", "stopped")}
                   for row in rows]}


def _change(plan: Plan, name: str) -> str:
  if plan.changes[name] is None:
    return plan.spec
  key, value = plan.changes[name]
  return f"{key}={value!r}"


def summarize(plan: Plan, runs: dict) -> list:
  """One row per variant: its metric over seeds at the final step (or, for a variant
  stopped early, at the check step) and the difference from the baseline at that step."""
  rows = []
  for name, records in runs.items():
    stopped = next((r for r in records if r["status"] != "finished"), None)
    if stopped is not None and plan.check_step is not None:
      step, key = plan.check_step, "at_check"
    else:
      step, key = plan.steps, "value"
    values = [r[key] if r.get(key) is not None else float("nan") for r in records]
    base = [r[key] if r.get(key) is not None else float("nan") for r in runs[BASELINE]]
    mean, std = _mean_std(values)
    delta = None if name == BASELINE else mean - _mean_std(base)[0]
    rows.append({"variant": name, "change": _change(plan, name), "step": step,
                 "mean": mean, "std": std, "seeds": [r["seed"] for r in records],
                 "delta": delta, "stopped": stopped is not None,
                 "why": stopped.get("reason", "") if stopped else ""})
  return rows


def _number(x: float) -> str:
  return f"{x:.4f}" if math.isfinite(x) else str(x)


def table(plan: Plan, rows: list) -> str:
  better = "higher" if plan.higher_is_better else "lower"
  header = ["variant", "change", "step", f"{plan.split} {plan.metric} (mean ± std)",
            f"Δ vs baseline ({better} is better)", "stopped early"]
  lines = []
  for row in rows:
    n = len(row["seeds"])
    value = f"{_number(row['mean'])} ± {_number(row['std'])} ({n} seed{'s' * (n != 1)})"
    delta = "reference" if row["delta"] is None else f"{row['delta']:+.4f}"
    stopped = f"yes: {row['why']}" if row["stopped"] else "no"
    lines.append([row["variant"], f"`{row['change']}`", row["step"], value, delta, stopped])
  return writers.table(header, lines, markdown=True)


def write_outputs(plan: Plan, rows: list, runs: dict, limit, workdir: str):
  text = table(plan, rows)
  check = (f"; variants are checked at step {plan.check_step} against the baseline's band "
           f"(limit {limit:.4g})" if limit is not None else "")
  writers.write_atomic(os.path.join(workdir, "ablation.md"),
                       f"# Ablation of {plan.spec}\n\n{len(plan.seeds)} seeds "
                       f"{list(plan.seeds)}, {plan.steps} steps each{check}.\n\n{text}\n")
  writers.write_json(os.path.join(workdir, "ablation.json"), {
      "baseline": plan.spec, "steps": plan.steps, "metric": plan.metric, "split": plan.split,
      "higher_is_better": plan.higher_is_better, "seeds": list(plan.seeds),
      "check_step": plan.check_step, "band_limit": limit, "rows": rows, "runs": runs},
      indent=2)
  panels = {"train loss": {}, f"{plan.split} {plan.metric}": {}}
  for name, records in runs.items():
    for panel, (split, key) in zip(panels, (("train", "loss"), (plan.split, plan.metric))):
      panels[panel][name] = _mean_curve([writers.read_curves(r["workdir"], key).get(split, {})
                                         for r in records])
  plots.ablation_curves(workdir, panels, f"ablation of {plan.spec} ({plan.steps} steps)")
  writers.console(text)


def _mean_curve(curves: list) -> dict:
  """{step: mean over the curves that reached that step}."""
  steps = sorted({s for c in curves for s in c})
  return {s: float(np.mean([c[s] for c in curves if s in c])) for s in steps}

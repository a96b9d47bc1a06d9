"""Evaluators: what a run measures beside training, on a schedule and in --mode=eval.

    suite = evaluators.Suite(config, setup, workdir)   # from config.evals
    metrics = suite.run(state, step, final=True)       # {"loss": ..., "probe/accuracy": ...}

config.evals maps a label to an evaluator's own ConfigDict: `name` (a registered
evaluator, "package.module:Name" or "path/file.py:Name"), `every` (-1: at each of
train.eval_every and the end; 0: only at the end; N: every N steps) and the evaluator's
fields. The default is {"loss": {"name": "loss"}}: the task's held-out loss and metrics.
The evaluator labelled "loss" reports its metrics as they are; every other one as
"label/metric". An evaluator is a file here (or user code) with a class

    @register("my_eval")
    class MyEval(Evaluator):
      def run(self, state) -> dict: ...   # self.config, self.setup, self.workdir
"""

import plugins
from train_lib.errors import UserError

REGISTRY = plugins.Registry("evaluator", __name__)
register = REGISTRY.register


class Evaluator:
  config_fields = None   # the names of its own fields in config.evals.<label>; None: any

  def __init__(self, config, setup, workdir: str):
    self.config, self.setup, self.workdir = config, setup, workdir

  def run(self, state) -> dict:
    raise NotImplementedError(f"{type(self).__name__} must define run(state) -> dict")


class Suite:
  def __init__(self, config, setup, workdir: str):
    self.eval_every, self.entries = config.train.eval_every, []
    for label, ec in config.evals.items():
      if "name" not in ec:
        raise UserError(f"evals.{label} has no name; set --config.evals.{label}.name to an "
                        f"evaluator ({REGISTRY.names()})")
      try:
        cls = REGISTRY.resolve(ec.name)
      except plugins.PluginError as e:
        raise UserError(f"evals.{label}: {e}") from None
      every = ec.get("every", -1)
      if every < -1:
        raise UserError(f"evals.{label}.every={every} must be -1, 0 or a number of steps")
      self.entries.append((label, every, cls(ec, setup, workdir)))

  def due(self, step: int, final: bool) -> list:
    def is_due(every):
      if final:
        return True
      period = self.eval_every if every == -1 else every
      return bool(period) and step % period == 0
    return [(label, ev) for label, every, ev in self.entries if is_due(every)]

  def run(self, state, step: int, final: bool = True) -> dict:
    """Every evaluator due at `step`, merged; {} when none is due."""
    out = {}
    for label, ev in self.due(step, final):
      metrics = ev.run(state)
      out.update(metrics if label == "loss" else {f"{label}/{k}": v for k, v in metrics.items()})
    return out

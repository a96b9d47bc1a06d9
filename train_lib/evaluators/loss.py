"""The task's own metrics on the held-out split: every eval item once.

    config.evals.loss = {"name": "loss"}     # the default evaluator
    config.evals.loss = {"name": "loss", "num_examples": 500}   # the first 500 only (quick)

num_examples > 0 reads only the split's first num_examples examples; the result's
num_examples says how many items were counted.
"""

import jax
import numpy as np

from train_lib import metrics as metrics_lib, partitioning, step
from train_lib.errors import UserError
from train_lib.evaluators import Evaluator, register


@register("loss")
class HeldOutLoss(Evaluator):
  config_fields = ("num_examples",)   # beside name and every
  def __init__(self, config, setup, workdir):
    super().__init__(config, setup, workdir)
    s = setup
    self.eval_step = step.compile_eval_step(s.model, s.task, s.state_sharding,
                                            partitioning.batch_sharding(s.mesh), s.rules)
    self.limit = int(self.config.get("num_examples", 0))   # read here: no false "unread"
    if self.limit < 0:
      raise UserError(f"evals.loss.num_examples={self.limit} must be >= 0 (0: the whole split)")

  def run(self, state) -> dict:
    s = self.setup
    kinds, total, count, limit = s.task.metrics, None, 0.0, self.limit
    for j, batch in enumerate(s.data.eval_batches(limit=limit)):
      stats, n = jax.device_get(self.eval_step(state, batch, np.int32(j)))
      total = stats if total is None else metrics_lib.combine(kinds, total, stats)
      count += float(n)
    expected = s.data.eval_count()
    if not limit and int(count) != expected:
      raise AssertionError(f"evaluated {count} items, expected {expected}")
    values = s.task.summarize(metrics_lib.finalize(kinds, total))
    return {**values, "num_examples": int(count)}

"""Tasks: the objective of a run. One file per task; user tasks by "module:Name".

    task = tasks.build(config.task, data, model)   # config.task.name picks the class
    loss, stats = task.loss(apply, batch, rng, train=True)
    task.metrics    # {"loss": "mean", "accuracy": "mean"}: what the core aggregates

The contract is train_lib/tasks/base.py. A task file registers its class with
`@register("name")`; every other field of config.task is the task's own to read.
"""

import plugins
from train_lib.errors import UserError
from train_lib.metrics import check_declaration
from train_lib.tasks.base import Task

REGISTRY = plugins.Registry("task", __name__)
register = REGISTRY.register


def build(config, data, model) -> Task:
  try:
    cls = REGISTRY.resolve(config.name)
  except plugins.PluginError as e:
    raise UserError(str(e)) from None
  if not (isinstance(cls, type) and issubclass(cls, Task)):
    raise UserError(f"task.name={config.name!r} is {cls!r}, not a subclass of "
                    "train_lib.tasks.base.Task")
  try:
    check_declaration(cls.metrics, f"task {config.name!r}")
  except ValueError as e:
    raise UserError(str(e)) from None
  return cls(config, data, model)

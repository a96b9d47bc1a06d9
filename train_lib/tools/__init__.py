"""The researcher's tools, built on the core (train_lib/*.py) and never imported by it.

    result = tools.train(config, workdir)   # a training run with the instruments attached

- capsule: the reproducibility record of every run (config.json, capsule.json)
- diagnosis: loss curves read for divergence, plateaus, spikes, overfitting
- plots: pictures in workdir/plots/
- trackers: Weights & Biases and MLflow, where config.writers names them
- sanity, lr_range, ablate, sample: the modes of the same names
"""

import os

import jax

from train_lib import loop
from train_lib.errors import UserError
from train_lib.tools import capsule, diagnosis, plots, trackers


def train(config, workdir: str, watchers=()) -> dict:
  """loop.train with the run record written at the start, the diagnosis watching every
  logged point, the trackers of config.writers fed, and the loss curves drawn at the end
  (plots/loss.png)."""
  tracking = []
  try:
    if trackers.check(config):   # an unknown writer: exit 2 before any device work
      tracking = [trackers.Trackers(config)]
    result = loop.train(config, workdir, [capsule.Record(config), diagnosis.Doctor(config),
                                          *tracking, *watchers])
  except BaseException as e:
    for tracker in tracking:   # a run that stopped on an error: its tracked runs say so
      tracker.finish(None, error=e)
    if isinstance(e, UserError):
      capsule.log_launch(workdir, config, f"refused: {e}")
    raise
  if jax.process_index() == 0:
    plots.loss_curves(os.path.abspath(os.path.expanduser(workdir)), f"{config.model.name} on {config.data.name}")
  return result

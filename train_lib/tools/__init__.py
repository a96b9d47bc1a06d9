"""The researcher's tools, built on the core (train_lib/*.py) and never imported by it.

    result = tools.train(config, workdir)   # a training run with the instruments attached

- capsule: the reproducibility record of every run (config.json, capsule.json)
- diagnosis: loss curves read for divergence, plateaus, spikes, overfitting
- plots: pictures in workdir/plots/
- sanity, lr_range, ablate, sample: the modes of the same names
"""

import os

import jax

from train_lib import loop
from train_lib.errors import UserError
from train_lib.tools import capsule, diagnosis, plots


def train(config, workdir: str, watchers=()) -> dict:
  """loop.train with the run record written at the start, the diagnosis watching every
  logged point, and the loss curves drawn at the end (plots/loss.png)."""
  try:
    result = loop.train(config, workdir,
                        [capsule.Record(config), diagnosis.Doctor(config), *watchers])
  except UserError as e:
    capsule.log_launch(workdir, config, f"refused: {e}")
    raise
  if jax.process_index() == 0:
    plots.loss_curves(os.path.abspath(os.path.expanduser(workdir)), f"{config.model.name} on {config.data.name}")
  return result

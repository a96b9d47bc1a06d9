"""--mode=lr_range: the exponential sweep, the suggestion on known curves, a run on 8
devices and main.py end to end."""

import csv
import math

import jax
import numpy as np
import pytest

from configs import base, digits_mlp
from helpers import last_json, run_main
from train_lib.tools import lr_range
from train_lib.errors import UserError


def test_exponential_schedule_spans_min_to_max():
  schedule = lr_range.exponential_schedule(1e-6, 1.0, 61)
  lrs = np.array([float(schedule(i)) for i in range(61)])
  np.testing.assert_allclose(lrs[[0, 30, 60]], [1e-6, 1e-3, 1.0], rtol=1e-4)
  np.testing.assert_allclose(lrs[1:] / lrs[:-1], 10 ** 0.1, rtol=1e-4)   # geometric
  assert float(schedule(100)) == pytest.approx(1.0, rel=1e-5)            # holds at max


def synthetic_curve(lrs, steepest, blowup, rng):
  """A range-test curve: flat, a fall centred on `steepest`, a blow-up past `blowup`."""
  x = np.log10(lrs)
  loss = 2.3 - 2.0 / (1 + np.exp(-3 * (x - math.log10(steepest))))
  loss += np.where(lrs > blowup, 40 * (x - math.log10(blowup)) ** 2, 0)
  return loss + rng.normal(0, 0.02, len(lrs))


def test_suggestion_is_the_steepest_descent_below_the_minimum():
  rng = np.random.default_rng(0)
  lrs = np.geomspace(1e-7, 10, 200)
  loss = synthetic_curve(lrs, steepest=3e-3, blowup=0.1, rng=rng)
  loss[110] += 3.0                       # one spike after the descent must not move it
  smoothed = lr_range.centered_average(loss, window=7)
  suggested, why = lr_range.suggest(lrs, smoothed)
  assert 3e-3 / 2 < suggested < 3e-3 * 2, why
  assert suggested < lrs[np.argmin(smoothed)]


def test_flat_curve_says_so():
  lrs = np.geomspace(1e-3, 1.0, 50)
  suggested, why = lr_range.suggest(lrs, np.linspace(2.0, 3.0, 50))   # only rises
  assert suggested == lrs[0] and "never fell" in why


def test_bad_range_is_a_user_error(tmp_path):
  config = base.get_config()
  config.lr_range.min_lr = 20.0   # above max_lr
  with pytest.raises(UserError, match="min_lr"):
    lr_range.run(config, str(tmp_path))


def test_sweep_on_8_devices_writes_csv_and_plot(tmp_path, tfds_dir):
  config = digits_mlp.get_config("runlocal")
  config.data.tfds_dir = tfds_dir
  config.lr_range.num_steps = 100
  assert jax.device_count() == 8
  result = lr_range.run(config, str(tmp_path))
  rows = list(csv.DictReader(open(tmp_path / "lr_range.csv")))
  lrs = np.array([float(r["learning_rate"]) for r in rows])
  losses = np.array([float(r["loss"]) for r in rows])
  assert 20 < len(rows) < 100           # stopped once the loss diverged, before max_lr
  assert lrs[0] == pytest.approx(1e-7) and (np.diff(lrs) > 0).all()
  assert losses[-1] > 2 * losses.min()
  assert lrs[0] < result["suggested_learning_rate"] < lrs[np.argmin(losses)]
  assert (tmp_path / "plots" / "lr_range.png").stat().st_size > 0


def test_main_lr_range_prints_the_suggestion_last(tmp_path, tfds_dir):
  proc = run_main("--config=configs/digits_mlp.py:runlocal", f"--workdir={tmp_path}",
                  "--mode=lr_range", f"--config.data.tfds_dir={tfds_dir}",
                  "--config.lr_range.num_steps=60", "--config.lr_range.min_lr=1e-5")
  result = last_json(proc.stdout)
  assert list(result) == ["suggested_learning_rate"]
  assert 1e-5 < result["suggested_learning_rate"] < 10
  assert (tmp_path / "lr_range.csv").exists() and (tmp_path / "plots" / "lr_range.png").exists()
  assert "lr_range:" in proc.stderr

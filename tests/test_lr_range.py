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


def synthetic_curve(lrs, steepest, blowup, rng, noise=0.02):
  """A range-test curve: flat, a fall centred on `steepest`, a blow-up past `blowup`."""
  x = np.log10(lrs)
  loss = 2.3 - 2.0 / (1 + np.exp(-3 * (x - math.log10(steepest))))
  loss += np.where(lrs > blowup, 40 * (x - math.log10(blowup)) ** 2, 0)
  return loss + rng.normal(0, noise, len(lrs))


def transient_curve(lrs, rng):
  """shakespeare_char's shape at full size: a steep early fall at ~5e-6 (Adam learning the
  unigram statistics) to a plateau, a gentler valley at ~2e-4, a blow-up past 2e-3."""
  x = np.log10(lrs)
  sigmoid = lambda centre, rate: 1 / (1 + np.exp(-rate * (x - math.log10(centre))))
  loss = 5.5 - 2.2 * sigmoid(5e-6, 6) - 0.7 * sigmoid(2e-4, 3)
  loss += np.where(lrs > 2e-3, 40 * (x - math.log10(2e-3)) ** 2, 0)
  return loss + rng.normal(0, 0.02, len(lrs))


LRS = np.geomspace(1e-7, 10, 200)   # the default sweep: 25 points per decade


def suggest(loss, lrs=LRS):
  return lr_range.suggest(lrs, lr_range.centered_average(loss, window=7), loss)


def test_suggestion_in_a_clean_valley_is_past_its_steepest_and_below_the_minimum():
  loss = synthetic_curve(LRS, steepest=3e-3, blowup=0.1, rng=np.random.default_rng(0))
  loss[110] += 3.0                       # one spike after the descent must not move it
  result = suggest(loss)
  assert 0.05 < result["lowest_loss_learning_rate"] < 0.2, result   # the turn at ~0.1
  # The blow-up (0.5 above the minimum) comes 0.11 decades past 0.1: a third of it, 0.043.
  assert result["suggested_learning_rate"] == pytest.approx(0.13 / 3, rel=0.15), result
  assert 3e-3 < result["suggested_learning_rate"] < result["lowest_loss_learning_rate"]
  assert "suggested" in result["reason"]


def test_an_early_transient_does_not_fool_it():
  loss = transient_curve(LRS, np.random.default_rng(0))
  smoothed = lr_range.centered_average(loss, window=7)
  steepest = LRS[np.argmin(np.gradient(smoothed, np.log10(LRS))[:np.argmin(smoothed)])]
  assert steepest < 2e-5                 # the steepest-descent rule picks the transient
  result = suggest(loss)
  assert 2e-4 < result["suggested_learning_rate"] <= result["lowest_loss_learning_rate"]
  assert 1e-3 < result["lowest_loss_learning_rate"] < 4e-3, result


@pytest.mark.parametrize("seed", range(5))
def test_noise_moves_the_suggestion_little(seed):
  """Noise 10x the other tests' and spikes: within a factor 2 of the noise-free answer."""
  rng = np.random.default_rng(seed)
  clean = suggest(synthetic_curve(LRS, 3e-3, 0.1, rng, noise=0))["suggested_learning_rate"]
  loss = synthetic_curve(LRS, 3e-3, 0.1, rng, noise=0.2)
  loss[rng.choice(len(loss), 6, replace=False)] += 5.0
  assert clean / 2 < suggest(loss)["suggested_learning_rate"] < clean * 2


def test_a_curve_that_only_rises_says_it_never_fell():
  lrs = np.geomspace(1e-3, 1.0, 50)
  result = lr_range.suggest(lrs, np.linspace(2.0, 3.0, 50))
  assert result["suggested_learning_rate"] == pytest.approx(lrs[0])
  assert "never fell" in result["reason"]


@pytest.mark.parametrize("seed", range(5))
def test_noise_around_a_flat_line_is_no_fall(seed):
  loss = 2.3 + np.random.default_rng(seed).normal(0, 0.05, len(LRS))
  result = suggest(loss)
  assert "never fell" in result["reason"], result
  assert result["suggested_learning_rate"] == pytest.approx(LRS[0], rel=1e-3)


def test_a_minimum_at_the_first_points_says_lower_min_lr():
  x = np.log10(LRS)
  loss = 2.3 + np.where(x > -6.9, 0.5 * (x + 6.9), -0.3)   # falls in its first two points only
  result = suggest(loss)
  assert "never fell" in result["reason"] and "lower lr_range.min_lr" in result["reason"]
  assert result["lowest_loss_learning_rate"] < 2e-7


def test_a_cliff_just_past_the_minimum_suggests_a_third_of_the_blow_up():
  x = np.log10(LRS)
  loss = 2.3 - 2.0 * np.clip(x + 3, 0, 1) + np.where(x > -2, 30 * (x + 2) ** 2, 0)
  result = suggest(loss)   # the fall ends at 1e-2, where the loss turns up
  assert result["lowest_loss_learning_rate"] == pytest.approx(1e-2, rel=0.15), result
  # 0.5 (a quarter of the fall) above the minimum at 10 ** 0.129 x 1e-2 = 1.35e-2
  assert result["suggested_learning_rate"] == pytest.approx(
      1.35e-2 / lr_range.BELOW_BLOWUP, rel=0.1), result
  assert "blown up at" in result["reason"]


def test_a_slow_rise_past_the_minimum_suggests_the_minimum():
  """shakespeare_char's shape: the loss turns up at 1e-3 but rises by 0.1 a decade and
  blows up only at 0.3, where a third of the blow-up would be 100x too high."""
  x = np.log10(LRS)
  loss = (2.3 - 2.0 * np.clip((x + 6) / 3, 0, 1) + np.where(x > -3, 0.1 * (x + 3), 0)
          + np.where(x > -0.5, 30 * (x + 0.5) ** 2, 0))
  result = suggest(loss + np.random.default_rng(0).normal(0, 0.01, len(LRS)))
  assert 9e-4 < result["lowest_loss_learning_rate"] < 3e-3, result   # noise: the turn's end
  assert result["suggested_learning_rate"] == result["lowest_loss_learning_rate"]
  assert "suggested it" in result["reason"]


def test_a_flat_noisy_floor_puts_the_minimum_at_its_turn():
  """The floor runs from 1e-3 to 3e-2: the noise must not pull the minimum into it."""
  x = np.log10(LRS)
  for seed in range(5):
    loss = 2.3 - 2.0 * np.clip(x + 4, 0, 1) + np.where(x > math.log10(3e-2), 40 * (x - math.log10(3e-2)) ** 2, 0)
    loss = loss + np.random.default_rng(seed).normal(0, 0.1, len(LRS))
    assert 1e-2 < suggest(loss)["lowest_loss_learning_rate"] < 6e-2, seed


def test_a_loss_still_falling_at_max_lr_says_raise_it():
  lrs = np.geomspace(1e-7, 1e-2, 126)
  result = suggest(synthetic_curve(lrs, 3e-3, 1.0, np.random.default_rng(0)), lrs)
  assert "raise lr_range.max_lr" in result["reason"]
  assert 1e-3 < result["suggested_learning_rate"] <= 1e-2


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
  smoothed = np.array([float(r["smoothed_loss"]) for r in rows])
  lowest = np.argmin(np.abs(lrs - result["lowest_loss_learning_rate"]))
  assert lowest >= np.nanargmin(smoothed)   # the turn: level with the minimum, not before it
  assert smoothed[lowest] == pytest.approx(np.nanmin(smoothed), rel=0.05)
  assert lrs[0] < result["suggested_learning_rate"] <= result["lowest_loss_learning_rate"]
  assert (tmp_path / "plots" / "lr_range.png").stat().st_size > 0


def test_main_lr_range_prints_the_suggestion_last(tmp_path, tfds_dir):
  proc = run_main("--config=configs/digits_mlp.py:runlocal", f"--workdir={tmp_path}",
                  "--mode=lr_range", f"--config.data.tfds_dir={tfds_dir}",
                  "--config.lr_range.num_steps=60", "--config.lr_range.min_lr=1e-5")
  result = last_json(proc.stdout)
  assert list(result) == ["suggested_learning_rate", "lowest_loss",
                          "lowest_loss_learning_rate", "reason"]
  assert 1e-5 < result["suggested_learning_rate"] <= result["lowest_loss_learning_rate"] < 10
  assert result["reason"] in proc.stderr   # the console line says the same
  assert (tmp_path / "lr_range.csv").exists() and (tmp_path / "plots" / "lr_range.png").exists()
  assert "lr_range:" in proc.stderr

"""--mode=sanity: every shipped config passes (runlocal, on several meshes); deliberately
broken models and a repeating data pipeline fail exactly the check they should."""

import glob
import importlib
import json
import os

import jax
import ml_collections
import pytest

from helpers import run_main
from input_pipeline.base import Data
from train_lib.tools import sanity
from train_lib.errors import ChecksFailed

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = sorted(os.path.basename(p)[:-3] for p in glob.glob(os.path.join(REPO, "configs", "*.py"))
                 if not p.endswith(("__init__.py", "base.py")))
CHECKS = ["data", "model", "initial_loss", "gradient_flow", "overfit_one_batch", "label_signal"]
# Devices per config: sanity must work on any mesh, so a few run data parallel.
DEVICES = {"default": 8, "shakespeare_char": 2, "gpt2_124m": 2}


def small_config(name, tfds_dir):
  config = importlib.import_module(f"configs.{name}").get_config("runlocal")
  config.data.tfds_dir = tfds_dir
  config.data.cache_mb = 0   # Fashion-MNIST: read 4 batches, not the whole split
  return config


def run_sanity(config, workdir, capsys, devices=1):
  """(passed, {check name: its sanity.json entry}, stdout) of one in-process run."""
  try:
    sanity.run(config, str(workdir), devices=jax.devices()[:devices])
    passed = True
  except ChecksFailed as e:
    passed = False
    assert "sanity checks failed" in str(e)
  report = json.load(open(os.path.join(workdir, "sanity.json")))
  assert report["passed"] == passed
  assert [c["name"] for c in report["checks"]] == CHECKS
  return passed, {c["name"]: c for c in report["checks"]}, capsys.readouterr().out


def verdicts(stdout):
  """The PASS/FAIL lines in order, as (verdict, name)."""
  return [tuple(l.split(":")[0].split()) for l in stdout.splitlines()
          if l.startswith(("PASS ", "FAIL "))]


def test_every_shipped_config_is_covered():
  assert {"default", "digits_mlp", "fashion_mnist_cnn", "fashion_mnist_resnet",
          "shakespeare_char", "gpt2_124m"} <= set(CONFIGS)


@pytest.mark.parametrize("name", CONFIGS)
def test_shipped_config_passes(name, tmp_path, tfds_dir, capsys, request):
  config = small_config(name, tfds_dir)
  if config.data.name == "jpeg":   # a records folder written by tools/jpeg_records.py
    config.data.source_dir = request.getfixturevalue("jpeg_dir")
  if name == "default":  # data parallel over 4 x fsdp 2
    config.mesh.data, config.mesh.fsdp = 4, 2
  passed, checks, out = run_sanity(config, tmp_path, capsys, DEVICES.get(name, 1))
  assert passed, out
  assert verdicts(out) == [("PASS", c) for c in CHECKS]
  model = checks["model"]
  assert model["layers"][0]["params"] == model["total_params"] > 0   # the (model) row
  flops = model.get("flops_per_example") or model.get("flops_per_token")
  assert flops > 0, model
  assert "module" in out and "grad norm" in out          # the two tables were printed
  text = config.data.name in ("shakespeare", "text", "synthetic_tokens")
  example = tmp_path / "plots" / ("text_examples.txt" if text else "data_examples.png")
  assert example.stat().st_size > 0
  overfit = checks["overfit_one_batch"]
  assert overfit["losses"][-1] < overfit["target"] < overfit["input_free_loss"]
  signal = checks["label_signal"]
  if not signal.get("skipped"):
    assert signal["held_out_real"] < signal["target"] < signal["held_out_shuffled"]


def broken_config(tfds_dir, model_name):
  config = small_config("digits_mlp", tfds_dir)
  config.model = ml_collections.ConfigDict({"name": model_name, "hidden": (64,)})
  return config


@pytest.mark.parametrize("model_name, failing, words, also", [
    ("UnusedParam", "gradient_flow", "unused", ()),    # a parameter the loss never sees
    ("IgnoresInput", "overfit_one_batch", "ignores its input", ("label_signal",)),
    ("Overconfident", "initial_loss", "too high", ()),
    ("RolledRows", "label_signal", "no more from the real targets", ()),  # memorises anyway
])
def test_broken_model_fails_its_check(model_name, failing, words, also, tmp_path, tfds_dir,
                                      capsys):
  config = broken_config(tfds_dir, f"tests.broken_models:{model_name}")
  passed, checks, out = run_sanity(config, tmp_path, capsys)
  assert not passed
  assert [name for v, name in verdicts(out) if v == "FAIL"] == \
      [c for c in CHECKS if c == failing or c in also], out
  line = next(l for l in out.splitlines() if l.startswith(f"FAIL {failing}:"))
  assert words in line and " -- " in line, line     # what is wrong, then what to try
  assert not checks[failing]["passed"] and checks[failing]["fix"]
  if failing == "gradient_flow":
    assert checks[failing]["zero"] == ["unused"]


def test_repeating_data_pipeline_fails_the_data_check(tmp_path, tfds_dir, capsys, monkeypatch):
  original = Data.next_train

  def same_batch_every_time(self):
    if not hasattr(self, "_first"):
      self._first = original(self)
    return self._first
  monkeypatch.setattr(Data, "next_train", same_batch_every_time)
  passed, checks, out = run_sanity(small_config("digits_mlp", tfds_dir), tmp_path, capsys)
  assert not passed
  assert verdicts(out)[0] == ("FAIL", "data") and len(verdicts(out)) == len(CHECKS)
  assert all(checks[name]["passed"] for name in CHECKS[1:]), out
  assert "batches 0 and 1 are identical" in checks["data"]["detail"]
  assert "repeats one batch" in checks["data"]["fix"]


def test_main_sanity_exits_1_and_names_the_failing_check(tmp_path, tfds_dir):
  proc = run_main("--config=configs/digits_mlp.py:runlocal", f"--workdir={tmp_path}",
                  "--mode=sanity", f"--config.data.tfds_dir={tfds_dir}",
                  "--config.model.name=tests.broken_models:IgnoresInput", check=False)
  assert proc.returncode == 1, proc.stderr[-2000:]
  assert verdicts(proc.stdout) == [("PASS", "data"), ("PASS", "model"),
                                   ("PASS", "initial_loss"), ("PASS", "gradient_flow"),
                                   ("FAIL", "overfit_one_batch"), ("FAIL", "label_signal")]
  assert proc.stderr.strip().splitlines()[-1].startswith(
      "error: 2 of 6 sanity checks failed (overfit_one_batch, label_signal)")
  assert json.load(open(tmp_path / "sanity.json"))["passed"] is False
  assert (tmp_path / "plots" / "data_examples.png").exists()


def test_output_the_task_cannot_score_is_named():
  from types import SimpleNamespace
  import numpy as np
  from train_lib.tasks.classification import Classification
  from train_lib.tasks.lm import LanguageModeling
  task_config = SimpleNamespace(label_smoothing=0.0)
  image = Classification(task_config, SimpleNamespace(num_classes=10), None)
  batch = {"label": np.zeros(4, np.int32)}
  assert image.check_output(np.zeros((4, 10)), batch) == ""
  assert "needs logits of shape (4, 10)" in image.check_output(np.zeros((4, 1)), batch)
  data = SimpleNamespace(vocab_size=256, token_bytes=np.ones(256, np.int32), seq_len=8)
  text = LanguageModeling(task_config, data, SimpleNamespace(vocab_size=256))
  batch = {"tokens": np.zeros((2, 9), np.int32)}
  assert text.check_output((np.zeros((2, 8)), np.zeros((2, 8))), batch) == ""
  assert text.check_output(np.zeros((2, 8, 256)), batch) == ""
  assert "(nll, correct) of shape (2, 8)" in text.check_output(np.zeros((2, 8)), batch)

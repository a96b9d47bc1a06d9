"""The researcher's toolkit: replay from config.json, the capsule, step instruments,
diagnosis of loss curves, unread config fields, and --mode=ablate."""

import importlib
import json
import os

import pytest

from helpers import REPO, last_json, read_metrics, run_main
from train_lib import capsule


def train_losses(workdir):
  return [(r["step"], r["loss"]) for r in read_metrics(workdir)
          if r["split"] == "train" and "loss" in r]


def test_replay_from_config_json_gives_the_same_numbers(tmp_path, tfds_dir):
  first, again = str(tmp_path / "first"), str(tmp_path / "again")
  proc = run_main("--config=configs/digits_mlp.py:runlocal", f"--workdir={first}",
                  f"--config.data.tfds_dir={tfds_dir}", "--config.train.num_steps=12",
                  "--config.train.log_every=3", "--config.seed=3")
  replay = run_main(f"--config={first}/config.json", f"--workdir={again}")
  assert last_json(replay.stdout) == last_json(proc.stdout)
  assert len(train_losses(again)) == 4 and train_losses(again) == train_losses(first)
  assert json.load(open(f"{again}/config.json")) == json.load(open(f"{first}/config.json"))
  record = json.load(open(f"{again}/capsule.json"))
  assert record["command"][1] == f"--config={first}/config.json"
  assert record["data_seed"] == 3 and "git_diff" in record and "xla_flags" in record
  assert "jax_enable_x64" in record["jax_flags"]
  assert record["devices"]["topology"] == [
      {"id": 0, "kind": "cpu", "platform": "cpu", "process_index": 0}]


@pytest.mark.parametrize("name", ["default", "shakespeare_char", "fashion_mnist_resnet"])
def test_read_config_restores_the_types_of_the_written_config(tmp_path, name):
  import ml_collections
  config = importlib.import_module(f"configs.{name}").get_config()
  path = tmp_path / "config.json"
  path.write_text(config.to_json_best_effort(indent=2, sort_keys=True))
  back = capsule.read_config(str(path))
  flat = lambda c: {k: (v, type(v)) for k, v in _flatten(c)}
  assert flat(back) == flat(config)
  assert isinstance(back.model, ml_collections.ConfigDict)


def _flatten(config, prefix=""):
  for key, value in config.items():
    if hasattr(value, "items"):
      yield from _flatten(value, f"{prefix}{key}.")
    else:
      yield f"{prefix}{key}", value


def test_capsule_caps_the_diff_with_a_note(monkeypatch):
  monkeypatch.setattr(capsule, "DIFF_LIMIT", 10)
  monkeypatch.setattr(capsule, "_git", lambda *a: "x" * 25 if a[0] == "diff" else "?? new.py")
  out = capsule._diff()
  assert out["git_diff"] == "x" * 10 and "25" in out["git_diff_note"]
  assert out["git_untracked"] == ["new.py"]

"""Every shipped config loads, with and without its runlocal argument, and its
model builds; configs import nothing of the project but other configs."""

import ast
import glob
import importlib
import os

import jax
import numpy as np
import pytest

import models
from configs import base

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = sorted(os.path.basename(p)[:-3] for p in glob.glob(os.path.join(REPO, "configs", "*.py"))
                 if not p.endswith(("__init__.py", "base.py")))


def test_shipped_configs_are_the_expected_ones():
  for name in ("default", "digits_mlp", "fashion_mnist_cnn", "fashion_mnist_resnet"):
    assert name in CONFIGS


@pytest.mark.parametrize("name", CONFIGS)
@pytest.mark.parametrize("arg", [None, "runlocal"])
def test_config_loads_and_model_builds(name, arg):
  config = importlib.import_module(f"configs.{name}").get_config(arg)
  assert config.model.name and config.train.num_steps > 0
  models.build(config.model, num_classes=10)
  module = importlib.import_module(f"configs.{name}")
  assert "python main.py --config=configs/" in module.__doc__  # says how to launch it


@pytest.mark.parametrize("path", glob.glob(os.path.join(REPO, "configs", "*.py")))
def test_configs_import_only_configs_and_ml_collections(path):
  tree = ast.parse(open(path).read())
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      names = [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom):
      names = [node.module]
    else:
      continue
    for n in names:
      assert n.split(".")[0] in ("ml_collections", "configs"), (path, n)


def test_parse_arg_types_and_errors():
  parsed = base.parse_arg("runlocal,depth=34", runlocal=False, depth=18)
  assert parsed.runlocal is True and parsed.depth == 34
  with pytest.raises(ValueError, match="unknown config argument 'size'"):
    base.parse_arg("size=2", runlocal=False)


def test_resnet_depth_argument():
  module = importlib.import_module("configs.fashion_mnist_resnet")
  assert module.get_config("depth=34").model.stage_sizes == (3, 4, 6, 3)
  assert module.get_config("depth=34").model.block == "basic"
  resnet50 = module.get_config("depth=50").model
  assert resnet50.stage_sizes == (3, 4, 6, 3) and resnet50.block == "bottleneck"
  assert module.get_config("depth=152,runlocal").model.block == "bottleneck"
  with pytest.raises(ValueError, match="depth=51"):
    module.get_config("depth=51")
  # The parameter counts its docstring states (10 classes, 28x28x1 images).
  for arg, count in [(None, 11_172_810), ("depth=50", 23_519_690),
                     ("depth=50,runlocal", 129_858)]:
    model = models.build(module.get_config(arg).model, num_classes=10)
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), np.zeros((1, 28, 28, 1))))
    assert sum(x.size for x in jax.tree.leaves(shapes["params"])) == count, arg
    assert f"{count:,}" in module.__doc__, arg


def test_transformer_config_lists_every_switch_at_the_model_default():
  import dataclasses
  from models.transformer import Transformer
  fields = {f.name: f.default for f in dataclasses.fields(Transformer)
            if f.name not in ("parent", "name", "dtype", "fp8", "num_classes")}   # set by setup
  declared = dict(base.transformer_model().items())
  declared.pop("name")
  assert declared == fields


@pytest.mark.parametrize("name", CONFIGS)
@pytest.mark.parametrize("arg", [None, "runlocal"])
def test_every_key_of_a_shipped_config_is_declared(name, arg):
  from train_lib import config_io
  config_io.check_keys(importlib.import_module(f"configs.{name}").get_config(arg))


@pytest.mark.parametrize("name", CONFIGS)
def test_no_shipped_command_prints_a_false_warning(name, tmp_path, tfds_dir, capsys, request):
  """train and lr_range on the shipped runlocal config,
  shortened by fields those modes read anyway: no "set but nothing reads it" line."""
  from train_lib import modes
  from train_lib.errors import UserError
  config = importlib.import_module(f"configs.{name}").get_config("runlocal")
  if config.data.name == "jpeg":   # a records folder written by tools/jpeg_records.py
    config.data.source_dir = request.getfixturevalue("jpeg_dir")
  # tfds_dir comes from $TFDS_DATA_DIR (the fixture): a graph config rightly warns if it is set
  config.train.num_steps, config.train.log_every, config.optim.warmup_steps = 2, 1, 0
  config.train.eval_every = config.train.checkpoint_every = 2
  config.lr_range.num_steps = 10
  # evaluations read the same fields on fewer examples (fewer reads could only add warnings)
  if "loss" in config.evals:
    config.evals.loss.num_examples = 500
  if "probe" in config.evals:
    config.evals.probe.update(baselines=False, max_train=500)
  for key, unit in (("batch_size", 8 * config.optim.grad_accum_steps),   # 8 (fake) devices
                    ("eval_batch_size", 8)):
    config.data[key] = -(-config.data[key] // unit) * unit
  modes_run = ["train", "lr_range"]   # eval and sample read a subset of what train reads
  for mode in modes_run:
    modes.run(mode, config, str(tmp_path / "w"))
    warnings = [l for l in capsys.readouterr().err.splitlines() if "is set but nothing" in l]
    assert warnings == [], (mode, warnings)

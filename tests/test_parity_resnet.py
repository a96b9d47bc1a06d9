"""ResNet (models/resnet.py) against torchvision's resnet50 and resnet18 on the same
seeded weights (tools/parity/resnet.py draws them with numpy; tests/fixtures/resnet/ holds
torchvision's names, shapes and logits), the torchvision_resnet weight format both ways
(its errors, a head of another size through init_skip), and
configs/fashion_mnist_resnet.py:depth=50,runlocal through main.py: fine-tunes from a
torchvision file, resumes bit-exactly, passes sanity. (tests/test_sanity.py runs the
default depth's :runlocal through sanity, as every shipped config's.)"""

import concurrent.futures
import os

import flax.linen as nn
import jax
import ml_collections
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

import input_pipeline
import models
from configs import fashion_mnist_resnet
from helpers import REPO, last_json, run_main
from test_reliability import assert_rollback_ends_the_same, saved_state
from tools.parity import resnet
from train_lib import weights
from train_lib.errors import UserError
from train_lib.weights import torchvision_resnet

FIXTURES = os.path.join(REPO, "tests", "fixtures", "resnet")
MODELS = {"resnet50": dict(stage_sizes=(3, 4, 6, 3), block="bottleneck"),
          "resnet18": dict(stage_sizes=(2, 2, 2, 2), block="basic")}
# float32 on both sides; torch (oneDNN) and XLA sum the convolutions in other orders, and
# the rounding compounds through 50 layers: the logits (|max| ~6) differ by 5e-6 (3e-6
# for resnet18), against ~1 between a right and a wrong layout.
ATOL = RTOL = 1e-4


def config_of(arch, width=64):
  return ml_collections.ConfigDict(dict(name="resnet", stem="imagenet", width=width,
                                        **MODELS[arch]))


def shapes_of(config, num_classes):
  """The model's variables as ShapeDtypeStructs: enough for weights.load to fill."""
  model = models.build(config, num_classes=num_classes)
  return model, nn.unbox(jax.eval_shape(
      lambda: model.init(jax.random.key(0), np.zeros((1, 32, 32, 3), np.float32))))


def write(tensors, path):
  save_file(tensors, str(path))
  return f"torchvision_resnet:{path}"


@pytest.mark.parametrize("arch", sorted(MODELS))
def test_parity_resnet_logits_match_torchvision_and_export_round_trips(arch, tmp_path):
  data = np.load(os.path.join(FIXTURES, f"{arch}.npz"), allow_pickle=False)
  tensors = resnet.state_dict(arch, 10, int(data["seed"]))
  # The numpy draw has torchvision's names and shapes (build() loaded it strictly).
  assert list(tensors) == list(data["names"])
  for name, row in zip(data["names"], data["shapes_Nx4"]):
    assert tensors[name].shape == tuple(int(d) for d in row if d >= 0), name

  config = config_of(arch)
  model, shapes = shapes_of(config, 10)
  loaded = weights.load(write(tensors, tmp_path / "in.safetensors"), shapes, config)
  apply = jax.jit(lambda v, x: model.apply(v, x, train=False))
  np.testing.assert_allclose(np.asarray(apply(loaded, data["images_BxHxWxC"])),
                             data["logits_BxC"], atol=ATOL, rtol=RTOL)

  # Export is the inverse: every tensor comes back bit for bit, under its own name
  # (num_batches_tracked carries nothing; torch fills it in on a strict load).
  weights.save("torchvision_resnet", loaded, config, str(tmp_path / "out.safetensors"))
  ours = load_file(str(tmp_path / "out.safetensors"))
  assert sorted(ours) == sorted(k for k in tensors if not k.endswith("num_batches_tracked"))
  for key in ours:
    assert ours[key].dtype == tensors[key].dtype, key
    np.testing.assert_array_equal(ours[key], tensors[key], err_msg=key)

  if arch == "resnet50":
    # The test can fail: every conv kernel read as OIWH (H and W swapped), the same
    # shapes, other logits.
    wrong = {k: np.ascontiguousarray(v.swapaxes(2, 3)) if v.ndim == 4 else v
             for k, v in tensors.items()}
    swapped = weights.load(write(wrong, tmp_path / "wrong.safetensors"), shapes, config)
    error = np.abs(np.asarray(apply(swapped, data["images_BxHxWxC"])) - data["logits_BxC"])
    assert error.max() > 100 * ATOL, error.max()


def test_parity_resnet50_parameter_count_is_torchvision_s():
  _, shapes = shapes_of(config_of("resnet50"), 1000)
  count = sum(x.size for x in jax.tree.leaves(shapes["params"]))
  data = np.load(os.path.join(FIXTURES, "resnet50.npz"), allow_pickle=False)
  assert count == 25_557_032 == int(data["num_params_1000"])


def test_parity_resnet_every_bad_tensor_is_named(tmp_path):
  """A narrow ResNet-50 layout (width 8) with one tensor missing, one extra, one mis-shaped."""
  config = config_of("resnet50", width=8)
  _, shapes = shapes_of(config, 10)
  tensors = resnet.state_dict("resnet50", 10, seed=1, width=8)
  del tensors["layer3.2.bn2.running_var"]
  tensors["layer5.0.conv1.weight"] = np.zeros((8, 8, 1, 1), np.float32)
  tensors["layer2.0.downsample.0.weight"] = np.zeros((64, 33, 1, 1), np.float32)
  with pytest.raises(UserError) as e:
    weights.load(write(tensors, tmp_path / "bad.safetensors"), shapes, config)
  message = str(e.value)
  assert "missing: layer3.2.bn2.running_var" in message, message
  assert "extra: layer5.0.conv1.weight" in message, message
  assert ("mis-shaped: layer2.0.downsample.0.weight (64, 33, 1, 1) -> "
          "params/stage1_block0/proj/kernel (1, 1, 33, 64) but the model has (1, 1, 32, 64)"
          in message), message
  assert "\n" not in message
  small = ml_collections.ConfigDict({**config.to_dict(), "stem": "small"})
  with pytest.raises(UserError, match="stem='imagenet'"):
    weights.load("torchvision_resnet:unused.safetensors", shapes, small)


def test_parity_resnet_1000_class_file_into_10_classes_needs_init_skip(tmp_path):
  """An ImageNet-sized head into a 10-class model: one mis-shaped error, then with
  init_skip=("head",) the head keeps its init and everything else (batch_stats too) is
  the file's."""
  config = config_of("resnet50", width=8)
  # Sevens stand in for a fresh init (jit-compiling a 50-layer init costs ~10 s on CPU).
  variables = jax.tree.map(lambda x: np.full(x.shape, 7, x.dtype), shapes_of(config, 10)[1])
  spec = write(resnet.state_dict("resnet50", 1000, seed=2, width=8),
               tmp_path / "imagenet.safetensors")
  with pytest.raises(UserError, match=r"mis-shaped: fc.bias \(1000,\)"):
    weights.load(spec, variables, config)
  loaded = weights.load(spec, variables, config, skip=("head",))
  np.testing.assert_array_equal(loaded["params"]["head"]["kernel"],
                                variables["params"]["head"]["kernel"])
  tensors = load_file(str(tmp_path / "imagenet.safetensors"))
  np.testing.assert_array_equal(loaded["batch_stats"]["stage3_block2"]["bn3"]["var"],
                                tensors["layer4.2.bn3.running_var"])


def test_parity_resnet50_config_fine_tunes_resumes_and_passes_sanity(tmp_path, tfds_dir):
  """:depth=50,runlocal through main.py, fine-tuned from a torchvision file shaped as its
  shrunk model (bottleneck blocks, one a stage, width 8, 1000 classes; the ImageNet stem,
  which the format needs; init_skip keeps the head and the RGB stem conv, Fashion-MNIST
  being grey, at their fresh init): 8 steps with checkpoints at 4 and 8; a copy rolled
  back to 4 (init_from not read again) ends on the same metrics and arrays. --mode=sanity
  on the plain :depth=50,runlocal runs alongside, on the second core."""
  data = fashion_mnist_resnet.get_config("runlocal").data
  data.tfds_dir = tfds_dir
  input_pipeline.open_source(data)    # prepared once per session, before two launches read it
  path = tmp_path / "imagenet.safetensors"
  tensors = resnet.state_dict("resnet50", 1000, seed=3, width=8, stage_sizes=(1, 1, 1, 1))
  config = ["--config=configs/fashion_mnist_resnet.py:depth=50,runlocal",
            f"--config.data.tfds_dir={tfds_dir}", "--config.data.cache_mb=0"]
  argv = [*config, "--config.model.stem=imagenet", f"--config.init_from={write(tensors, path)}",
          "--config.init_skip=('stem','head')", "--config.train.num_steps=8",
          "--config.train.log_every=4", "--config.train.eval_every=0",
          "--config.train.checkpoint_every=4", "--config.evals.loss.num_examples=500"]
  ref, resumed = tmp_path / "ref", tmp_path / "resumed"
  with concurrent.futures.ThreadPoolExecutor(1) as pool:
    sanity = pool.submit(run_main, *config, f"--workdir={tmp_path / 'sanity'}",
                         "--mode=sanity")                   # exit 0: every check passed
    first = run_main(*argv, f"--workdir={ref}")
    assert "(kept at init: stem, head)" in first.stderr, first.stderr
    result = last_json(first.stdout)
    assert result["step"] == 8 and np.isfinite(result["loss"]), result
    # The run started from the file: 4 small warm-up steps later a kernel is still the
    # file's (a fresh init would be uncorrelated with it; seen 0.9999).
    kernel = saved_state(ref, 4)["params"]["stage3_block0"]["conv2"]["kernel"]
    theirs = torchvision_resnet.conv(tensors["layer4.0.conv2.weight"])
    assert np.corrcoef(kernel.ravel(), theirs.ravel())[0, 1] > 0.99

    proc = assert_rollback_ends_the_same(argv, ref, resumed, 4, 8, result)
    assert "parameters from" not in proc.stderr
    sanity.result()

"""ViT (models/vit.py) against timm's VisionTransformer (class token and mean pooling) and
Hugging Face's ViTForImageClassification on the same random weights (tests/fixtures/vit/,
made by tools/parity/vit.py); the weight formats timm_vit and hf_vit both ways, their
errors and init_skip; configs/fashion_mnist_vit.py:runlocal through main.py from a timm
file with a head of another size: trains and resumes bit-exactly. (--mode=sanity for the
config is in tests/test_sanity.py, which runs every shipped config.)"""

import functools
import json
import os

import flax
import flax.linen as nn
import jax
import ml_collections
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

import models
from configs import fashion_mnist_vit
from helpers import REPO, last_json, run_main
from test_reliability import assert_rollback_ends_the_same
from train_lib import weights
from train_lib.errors import UserError
from train_lib.weights import hf_vit, timm_vit

FIXTURES = os.path.join(REPO, "tests", "fixtures", "vit")
TINY = dict(name="vit", patch=4, width=48, depth=2, num_heads=3)      # tools/parity/vit.py
CASES = {"timm_token": ("timm_vit", {}),                            # timm's default layout
         "timm_avg": ("timm_vit", {"pool": "avg"}),                 # class_token=False, avg
         "hf": ("hf_vit", {"norm_epsilon": 1e-12})}                 # Hugging Face's eps
# float32 on both sides; the libraries sum the matmuls, the patch convolution, the softmax
# and the LayerNorm statistics in other orders: the logits (|max| ~2.5) differ by < 1e-6
# (seen 7e-7), so 1e-5 is roomy; a layout error moves them by ~1 (0.7 and 1.5 below).
ATOL = RTOL = 1e-5


def spec(name, path=None):
  return f"{CASES[name][0]}:{path or os.path.join(FIXTURES, name + '.safetensors')}"


def config_of(name):
  return ml_collections.ConfigDict({**TINY, **CASES[name][1]})


@functools.cache
def model_and_shapes(name, num_classes=10):
  """The model and its variables as ShapeDtypeStructs (no init compiled): enough for
  weights.load to fill, as in tests/test_parity_resnet.py."""
  model = models.build(config_of(name), num_classes=num_classes)
  return model, nn.unbox(jax.eval_shape(
      lambda: model.init(jax.random.key(0), np.zeros((1, 28, 28, 1), np.float32))))


@functools.cache
def apply_fn(name):
  """One compiled forward per fixture, shared by the tests."""
  return jax.jit(model_and_shapes(name)[0].apply)


def data_of(name):
  return np.load(os.path.join(FIXTURES, f"{name}.npz"), allow_pickle=False)


def max_error(name, variables):
  data = data_of(name)
  return np.abs(np.asarray(apply_fn(name)(variables, data["images_BxHxWxC"])) -
                data["logits_BxC"]).max()


def flat(tree):
  return flax.traverse_util.flatten_dict(tree)


@pytest.mark.parametrize("name", sorted(CASES))
def test_parity_vit_logits_match_reference_and_export_round_trips(name, tmp_path):
  loaded = weights.load(spec(name), model_and_shapes(name)[1], config_of(name))
  data = data_of(name)
  np.testing.assert_allclose(np.asarray(apply_fn(name)(loaded, data["images_BxHxWxC"])),
                             data["logits_BxC"], atol=ATOL, rtol=RTOL)

  # Export is the inverse: every tensor comes back bit for bit, under its own name.
  weights.save(CASES[name][0], loaded, config_of(name), str(tmp_path / "out.safetensors"))
  theirs = load_file(os.path.join(FIXTURES, f"{name}.safetensors"))
  ours = load_file(str(tmp_path / "out.safetensors"))
  assert sorted(ours) == sorted(theirs)
  for key in theirs:
    assert ours[key].dtype == theirs[key].dtype, key
    np.testing.assert_array_equal(ours[key], theirs[key], err_msg=key)


def test_parity_vit_a_wrong_layout_does_not_pass(tmp_path):
  """The test can fail: timm's fused qkv rows read as [3, head_dim, heads] instead of
  [3, heads, head_dim] (the same shapes), or HF's patch kernel with H and W swapped."""
  tensors = load_file(os.path.join(FIXTURES, "timm_token.safetensors"))
  n, d = TINY["num_heads"], TINY["width"]
  for i in range(TINY["depth"]):
    w = tensors[f"blocks.{i}.attn.qkv.weight"]
    tensors[f"blocks.{i}.attn.qkv.weight"] = np.ascontiguousarray(
        w.reshape(3, n, d // n, d).transpose(0, 2, 1, 3).reshape(3 * d, d))
  save_file(tensors, str(tmp_path / "qkv.safetensors"))
  loaded = weights.load(spec("timm_token", tmp_path / "qkv.safetensors"),
                        model_and_shapes("timm_token")[1], config_of("timm_token"))
  assert max_error("timm_token", loaded) > 1e3 * ATOL

  tensors = load_file(os.path.join(FIXTURES, "hf.safetensors"))
  key = "vit.embeddings.patch_embeddings.projection.weight"
  tensors[key] = np.ascontiguousarray(tensors[key].swapaxes(2, 3))
  save_file(tensors, str(tmp_path / "hw.safetensors"))
  loaded = weights.load(spec("hf", tmp_path / "hw.safetensors"), model_and_shapes("hf")[1],
                        config_of("hf"))
  assert max_error("hf", loaded) > 1e3 * ATOL


def test_parity_vit_every_bad_tensor_is_one_error(tmp_path):
  """A missing, an extra and a mis-shaped tensor (positions for 32x32 images, 65 tokens,
  into the 28x28 model's 50: no interpolation) are one line naming all three."""
  tensors = load_file(os.path.join(FIXTURES, "timm_token.safetensors"))
  del tensors["blocks.1.norm2.bias"]
  tensors["blocks.2.mlp.fc1.weight"] = tensors["blocks.1.mlp.fc1.weight"]
  tensors["pos_embed"] = np.zeros((1, 65, TINY["width"]), np.float32)
  save_file(tensors, str(tmp_path / "bad.safetensors"))
  with pytest.raises(UserError) as e:
    weights.load(spec("timm_token", tmp_path / "bad.safetensors"),
                 model_and_shapes("timm_token")[1], config_of("timm_token"))
  message = str(e.value)
  assert message.startswith("init_from: the weights do not fit") and "\n" not in message
  assert "missing: blocks.1.norm2.bias" in message, message
  assert "extra: blocks.2.mlp.fc1.weight" in message, message
  assert ("mis-shaped: pos_embed (1, 65, 48) -> params/pos_embed (65, 48) but the model "
          "has (50, 48)" in message), message

  # A timm class-token file into the mean-pooling model: names what differs.
  with pytest.raises(UserError, match=r"missing: fc_norm.bias, fc_norm.weight; extra: "
                                      r"cls_token, norm.bias, norm.weight; mis-shaped: pos_embed"):
    weights.load(spec("timm_token"), model_and_shapes("timm_avg")[1], config_of("timm_avg"))
  with pytest.raises(UserError, match="pool='token'"):      # HF's ViT has a class token
    weights.load(spec("hf"), model_and_shapes("timm_avg")[1], config_of("timm_avg"))


@pytest.mark.parametrize("name", ["timm_token", "hf"])
def test_parity_vit_head_of_another_size_loads_with_init_skip(name):
  """A 10-class file into a 5-class model: the head is named, then kept at its init
  (a stand-in of sevens) with init_skip; everything else is the file's."""
  shapes = model_and_shapes(name, num_classes=5)[1]
  fresh = jax.tree.map(lambda x: np.full(x.shape, 7, x.dtype), shapes)
  head = "head" if name.startswith("timm") else "classifier"
  with pytest.raises(UserError, match=rf"mis-shaped: {head}.bias \(10,\).*{head}.weight"):
    weights.load(spec(name), fresh, config_of(name))
  loaded = flat(weights.load(spec(name), fresh, config_of(name), skip=("head",)))
  full = flat(weights.load(spec(name), model_and_shapes(name)[1], config_of(name)))
  for path, value in loaded.items():
    want = flat(fresh)[path] if path[1] == "head" else full[path]
    np.testing.assert_array_equal(value, want, err_msg="/".join(path))


def test_parity_vit_export_says_how_to_build_the_reference_model():
  """timm_kwargs and hf_config (what a user or tools/export.py needs beside the tensors)
  are the arguments and config.json that built each fixture's model."""
  for name in ("timm_token", "timm_avg"):
    with open(os.path.join(FIXTURES, f"{name}.json")) as f:
      assert timm_vit.timm_kwargs(config_of(name), model_and_shapes(name)[1]) == json.load(f)
  with open(os.path.join(FIXTURES, "hf.json")) as f:
    theirs = json.load(f)
  ours = hf_vit.hf_config(config_of("hf"), model_and_shapes("hf")[1])
  assert ours == {k: theirs[k] for k in ours}


def test_parity_vit_parameters_carry_logical_axes():
  """config.mesh.rules shard the ViT as the Transformer: embed -> fsdp, heads/mlp -> tensor."""
  model = models.build(ml_collections.ConfigDict(TINY), num_classes=10)
  boxed = jax.eval_shape(lambda: model.init(jax.random.key(0), np.zeros((1, 28, 28, 1))))
  specs = jax.tree.map(tuple, nn.get_partition_spec(boxed)["params"],
                       is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))
  assert specs["layer_0"]["attn"]["query"]["kernel"] == ("embed", "heads", "head_dim")
  assert specs["layer_0"]["attn"]["out"]["kernel"] == ("heads", "head_dim", "embed")
  assert specs["layer_0"]["mlp"]["wi"]["kernel"] == ("embed", "mlp")
  assert specs["patch_embed"]["kernel"] == (None, None, None, "embed")
  assert specs["pos_embed"] == (None, "embed") and specs["cls_token"] == ("embed",)


def runlocal_timm_file(path):
  """A timm file shaped as :runlocal's model but with a 5-class head, random values."""
  config = fashion_mnist_vit.get_config("runlocal").model
  model = models.build(config, num_classes=5)
  shapes = nn.unbox(jax.eval_shape(
      lambda: model.init(jax.random.key(0), np.zeros((1, 28, 28, 1), np.float32))))
  rng = np.random.default_rng(0)
  values = {p: ((p[-1] == "scale") + rng.normal(0, 0.05, s.shape)).astype(s.dtype)
            for p, s in flat(shapes).items()}
  weights.save("timm_vit", flax.traverse_util.unflatten_dict(values), config, str(path))
  return f"timm_vit:{path}"


def test_parity_vit_config_trains_from_timm_and_resumes_bit_exactly(tmp_path, tfds_dir):
  """:runlocal from a timm file (head skipped): 8 steps with a checkpoint at 4, then a
  copy rolled back to step 4 and continued to 8 (params, optimizer, key and data
  position restored; init_from is not read again): the same result."""
  ref, resumed = str(tmp_path / "ref"), str(tmp_path / "resumed")
  argv = ["--config=configs/fashion_mnist_vit.py:runlocal", f"--config.data.tfds_dir={tfds_dir}",
          f"--config.init_from={runlocal_timm_file(tmp_path / 'timm.safetensors')}",
          "--config.init_skip=('head',)", "--config.data.cache_mb=0",
          "--config.train.num_steps=8", "--config.train.log_every=4",
          "--config.train.eval_every=0", "--config.train.checkpoint_every=4",
          "--config.evals.loss.num_examples=1000"]
  first = run_main(*argv, f"--workdir={ref}")
  assert "(kept at init: head)" in first.stderr, first.stderr
  result = last_json(first.stdout)
  assert result["step"] == 8 and np.isfinite(result["loss"]), result
  proc = assert_rollback_ends_the_same(argv, ref, resumed, 4, 8, result)
  assert "parameters from" not in proc.stderr

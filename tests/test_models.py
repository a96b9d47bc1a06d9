"""Models: registry, user models by import path, shapes, and ResNet against a known count."""

import sys

import jax
import jax.numpy as jnp
import ml_collections
import pytest

import models


def cfg(**kw):
  return ml_collections.ConfigDict(kw)


@pytest.mark.parametrize("name, kwargs", [
    ("mlp", {"hidden": (16,)}),
    ("cnn", {"features": (4, 8), "dense": 16}),
    ("resnet", {"stage_sizes": (1, 1), "width": 4}),
])
def test_registered_models_give_logits(name, kwargs):
  model = models.build(cfg(name=name, **kwargs), num_classes=7)
  x = jnp.ones((3, 12, 12, 1))
  variables = model.init(jax.random.PRNGKey(0), x, train=False)
  assert model.apply(variables, x, train=False).shape == (3, 7)


def test_resnet18_matches_the_published_parameter_count():
  # torchvision's resnet18 (ImageNet stem, 1000 classes) has 11,689,512 parameters.
  model = models.build(cfg(name="resnet", stage_sizes=(2, 2, 2, 2), width=64,
                           stem="imagenet"), num_classes=1000)
  shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.ones((1, 64, 64, 3))))
  count = sum(x.size for x in jax.tree.leaves(shapes["params"]))
  assert count == 11_689_512
  assert "batch_stats" in shapes


def test_resnet_batch_stats_update_only_in_training():
  model = models.build(cfg(name="resnet", stage_sizes=(1,), width=4), num_classes=3)
  x = jax.random.normal(jax.random.PRNGKey(1), (8, 8, 8, 1)) * 3 + 2
  variables = model.init(jax.random.PRNGKey(0), x)
  _, updated = model.apply(variables, x, train=True, mutable=["batch_stats"])
  before = variables["batch_stats"]["stem_bn"]["mean"]
  assert not jnp.allclose(updated["batch_stats"]["stem_bn"]["mean"], before)


def test_bfloat16_compute_float32_params():
  model = models.build(cfg(name="cnn", features=(4,), dense=8), num_classes=3,
                       dtype=jnp.bfloat16)
  x = jnp.ones((2, 8, 8, 1))
  variables = model.init(jax.random.PRNGKey(0), x)
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(variables))
  assert model.apply(variables, x).dtype == jnp.bfloat16


def test_unknown_name_and_argument_are_named():
  with pytest.raises(models.ModelError, match="Did you mean 'resnet'"):
    models.build(cfg(name="resnt"), num_classes=2)
  assert sorted(models.undeclared(cfg(name="resnet", widht=3, dense=4))) == [
      ("dense", None), ("widht", "width")]
  model = models.build(cfg(name="resnet", widht=3, dense=4), num_classes=2)   # declared only
  assert not hasattr(model, "widht") and not hasattr(model, "dense")


def test_user_model_loads_by_import_path(tmp_path, monkeypatch):
  (tmp_path / "mypkg").mkdir()
  (tmp_path / "mypkg" / "__init__.py").write_text("")
  (tmp_path / "mypkg" / "nets.py").write_text(
      "import flax.linen as nn\n"
      "class Tiny(nn.Module):\n"
      "  num_classes: int\n"
      "  scale: float = 1.0\n"
      "  @nn.compact\n"
      "  def __call__(self, x, train=False):\n"
      "    return nn.Dense(self.num_classes)(x.reshape(x.shape[0], -1)) * self.scale\n")
  monkeypatch.syspath_prepend(str(tmp_path))
  model = models.build(cfg(name="mypkg.nets:Tiny", scale=2.0), num_classes=4,
                       dtype=jnp.float32)
  x = jnp.ones((2, 3, 3, 1))
  assert model.apply(model.init(jax.random.PRNGKey(0), x), x).shape == (2, 4)
  with pytest.raises(models.ModelError, match="cannot import"):
    models.build(cfg(name="nopkg.nets:Tiny"), num_classes=4)
  sys.modules.pop("mypkg.nets", None)

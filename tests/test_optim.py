"""Optimizer, schedules, weight-decay mask, clipping and gradient accumulation."""

import jax
import jax.numpy as jnp
import optax
import pytest

from configs import base
from train_lib import optim
from train_lib.errors import UserError


def optim_config(**kw):
  config = base.get_config().optim
  config.update(kw)
  return config


def test_warmup_cosine_and_linear_schedules():
  s = optim.build_schedule(optim_config(learning_rate=1.0, warmup_steps=10,
                                        schedule="warmup_cosine"), 110)
  assert float(s(0)) == 0.0 and float(s(5)) == pytest.approx(0.5)
  assert float(s(10)) == pytest.approx(1.0) and float(s(60)) == pytest.approx(0.5, abs=1e-6)
  assert float(s(110)) == pytest.approx(0.0, abs=1e-6)
  s = optim.build_schedule(optim_config(learning_rate=2.0, warmup_steps=0,
                                        schedule="warmup_linear",
                                        end_learning_rate_factor=0.5), 100)
  assert float(s(0)) == 2.0 and float(s(50)) == pytest.approx(1.5)
  s = optim.build_schedule(optim_config(learning_rate=0.3, schedule="constant"), 10)
  assert float(s(7)) == pytest.approx(0.3)


def test_weight_decay_skips_biases_and_scales():
  params = {"kernel": jnp.ones((2, 2)), "bias": jnp.ones((2,)), "scale": jnp.ones((2,))}
  zero_grads = jax.tree.map(jnp.zeros_like, params)
  for name in ("adamw", "sgd"):
    tx, _ = optim.build(optim_config(name=name, learning_rate=0.1, weight_decay=0.5,
                                     schedule="constant"), 10)
    updates, _ = tx.update(zero_grads, tx.init(params), params)
    assert float(jnp.abs(updates["kernel"]).sum()) > 0, name
    assert float(jnp.abs(updates["bias"]).sum()) == 0, name
    assert float(jnp.abs(updates["scale"]).sum()) == 0, name


def test_global_norm_clipping():
  tx, _ = optim.build(optim_config(name="sgd", momentum=0.0, learning_rate=1.0,
                                   schedule="constant", clip_norm=1.0), 10)
  params = {"w": jnp.zeros((4,))}
  updates, _ = tx.update({"w": jnp.full((4,), 10.0)}, tx.init(params), params)
  assert float(optax.tree.norm(updates)) == pytest.approx(1.0, rel=1e-5)


@pytest.mark.parametrize("kw, message", [
    ({"name": "lamb"}, "optim.name"), ({"schedule": "step"}, "optim.schedule"),
    ({"warmup_steps": 50}, "warmup_steps"), ({"clip_norm": -1.0}, "clip_norm")])
def test_bad_optimizer_config(kw, message):
  with pytest.raises(UserError, match=message):
    optim.build(optim_config(**kw), 10)

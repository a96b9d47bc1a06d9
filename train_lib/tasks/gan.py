"""A GAN with the non-saturating loss (Goodfellow et al., 2014): two parameter groups,
two optimizers, alternating updates: the discriminator, then the generator against the
updated discriminator, every step.

    config.task.name = "gan"      # the model offers generate(z) and discriminate(x)
    config.model.name = "dcgan"

Metrics: loss (the discriminator's: -log D(x) - log(1 - D(G(z))), 2 ln 2 when it cannot
tell), g_loss (-log D(G(z))) and d_accuracy (real and generated images told apart at
threshold 0.5). Generated images live in [-1, 1] and are mapped to the data's pixel
range [0, 255] in its normalised units.
"""

import functools
import math

import jax
import jax.numpy as jnp

from train_lib.errors import UserError
from train_lib.tasks import register
from train_lib.tasks.base import MEAN, ImageTask, mean, sample_in_batches


@register("gan")
class GAN(ImageTask):
  metrics = {"loss": MEAN, "g_loss": MEAN, "d_accuracy": MEAN}
  console = ("g_loss", "d_accuracy")
  groups = ("discriminator", "generator")
  # Overfitting one batch: the discriminator memorises one real batch against one fixed
  # batch of the (untrained) generator's images.
  overfit_groups = ("discriminator",)
  overfit_with_fixed_key = True
  loss_floor = 0.0

  def __init__(self, config, data, model):
    super().__init__(config, data, model)
    for method in ("generate", "discriminate"):
      if not hasattr(model, method):
        raise UserError(f"model {type(model).__name__} has no {method}(); the gan task needs "
                        "generate(z) and discriminate(x) (models/dcgan.py)")
    if tuple(getattr(model, "image_shape", data.example_shape)) != tuple(data.example_shape):
      raise UserError(f"model.image_shape={tuple(model.image_shape)} differs from the data's "
                      f"{tuple(data.example_shape)}")
    self.latent_dim = model.latent_dim

  def _to_data(self, g):   # [-1, 1] -> the data's normalised pixel range
    return self.low + (g + 1) / 2 * (self.high - self.low)

  def init_inputs(self, batch):
    x = batch["image"]
    return (x, jnp.zeros((x.shape[0], self.latent_dim))), {}

  def loss(self, apply, batch, rng, *, train, group=None):
    x = batch["image"]
    w = batch.get("mask", jnp.ones(x.shape[0], jnp.float32))
    z = jax.random.normal(rng, (x.shape[0], self.latent_dim))
    fake = self._to_data(apply(z, method="generate"))
    n, stats, loss = w.sum(), {}, 0.0
    if group in (None, "discriminator"):
      real_logit = apply(x, method="discriminate")
      fake_logit = apply(jax.lax.stop_gradient(fake), method="discriminate")
      d_B = jax.nn.softplus(-real_logit) + jax.nn.softplus(fake_logit)
      right = 0.5 * ((real_logit > 0).astype(jnp.float32) + (fake_logit < 0))
      stats.update(loss=mean((d_B * w).sum(), n), d_accuracy=mean((right * w).sum(), n))
      loss = (d_B * w).sum() / jnp.maximum(n, 1.0)
    if group in (None, "generator"):
      g_B = jax.nn.softplus(-apply(fake, method="discriminate"))
      stats["g_loss"] = mean((g_B * w).sum(), n)
      if group == "generator":
        loss = (g_B * w).sum() / jnp.maximum(n, 1.0)
    return loss, stats

  def initial_loss(self):
    return 2 * math.log(2)   # a discriminator that cannot tell: log 2 for each side

  def input_free_loss(self, host_batch):
    return 2 * math.log(2)   # without looking at the image it cannot do better

  def sample_images(self, params, model_state, key, num: int, batch_size: int = 1000):
    return sample_in_batches(lambda k, n: self._sampler(n)(params, k), key, num, batch_size)

  @functools.lru_cache(maxsize=4)
  def _sampler(self, n: int):
    @jax.jit
    def run(params, key):
      z = jax.random.normal(key, (n, self.latent_dim))
      return self._to_data(self.model.apply({"params": params}, z, method="generate"))
    return run

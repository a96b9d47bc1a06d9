"""Denoising diffusion (DDPM, Ho et al., 2020): the model predicts the noise added to an
image at a random timestep; an EMA of the weights evaluates and samples.

    config.task.name = "ddpm"; config.task.schedule = "cosine"   # or "linear"
    config.task.timesteps = 1000; config.task.ema_decay = 0.999
    config.task.sample_steps = 250; config.task.eta = 1.0   # strided sampler; 1 = DDPM-like
    python main.py --config=configs/fashion_mnist_ddpm.py --workdir=DIR --mode=sample

loss = mean over pixels of (eps_model(sqrt(a_t) x0 + sqrt(1 - a_t) eps, t) - eps)^2,
t ~ U{0..T-1}, eps ~ N(0, I), both from the task's key. Images are in the data's
normalised units; samples clip their x0 prediction to the data's pixel range.
"""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from train_lib.errors import UserError
from train_lib.tasks import register
from train_lib.tasks.base import MEAN, ImageTask, mean, sample_in_batches

SCHEDULES = ("linear", "cosine")


def alpha_bars(schedule: str, T: int) -> np.ndarray:
  """Cumulative products a_t = prod(1 - beta_s), t = 0..T-1 (float64)."""
  if schedule == "linear":   # Ho et al.: beta from 1e-4 to 0.02 (scaled to T)
    betas = np.linspace(1e-4 * 1000 / T, 0.02 * 1000 / T, T, dtype=np.float64)
    return np.cumprod(1 - betas)
  if schedule == "cosine":   # Nichol & Dhariwal, 2021
    s = 0.008
    f = lambda t: np.cos((t / T + s) / (1 + s) * np.pi / 2) ** 2
    ab = f(np.arange(1, T + 1)) / f(0)
    betas = np.clip(1 - ab / np.concatenate([[1.0], ab[:-1]]), 0, 0.999)
    return np.cumprod(1 - betas)
  raise ValueError(f"schedule {schedule!r} unknown; use one of {SCHEDULES}")


def diffusion_loss(eps_fn, x0_BxHxWxC, key, alpha_bar_T):
  """Per-example noise-prediction MSE, the noise and the timestep drawn from `key`."""
  B = x0_BxHxWxC.shape[0]
  k_t, k_eps = jax.random.split(key)
  t_B = jax.random.randint(k_t, (B,), 0, alpha_bar_T.shape[0])
  eps = jax.random.normal(k_eps, x0_BxHxWxC.shape, jnp.float32)
  ab = alpha_bar_T[t_B][:, None, None, None]
  x_t = jnp.sqrt(ab) * x0_BxHxWxC + jnp.sqrt(1 - ab) * eps
  return jnp.mean(jnp.square(eps_fn(x_t, t_B) - eps), axis=(1, 2, 3))


@register("ddpm")
class DDPM(ImageTask):
  metrics = {"loss": MEAN}
  loss_floor = 0.0

  def __init__(self, config, data, model):
    super().__init__(config, data, model)
    self.T = config.get("timesteps", 1000)
    schedule = config.get("schedule", "cosine")
    if schedule not in SCHEDULES:
      raise UserError(f"task.schedule={schedule!r} is unknown; use one of {SCHEDULES}")
    if self.T < 2:
      raise UserError(f"task.timesteps={self.T} must be >= 2")
    self.alpha_bar = alpha_bars(schedule, self.T)
    self.decay = config.get("ema_decay", 0.999)
    if not 0 <= self.decay < 1:
      raise UserError(f"task.ema_decay={self.decay} must be in [0, 1)")
    self.sample_steps, self.eta = config.get("sample_steps", 250), config.get("eta", 1.0)
    if not 1 <= self.sample_steps <= self.T:
      raise UserError(f"task.sample_steps={self.sample_steps} must be in [1, {self.T}]")

  def init_inputs(self, batch):
    x = batch["image"]
    return (x, jnp.zeros((x.shape[0],), jnp.int32)), {}

  def loss(self, apply, batch, rng, *, train, group=None):
    x0 = batch["image"].astype(jnp.float32)
    mse_B = diffusion_loss(lambda x, t: apply(x, t), x0, rng,
                           jnp.asarray(self.alpha_bar, jnp.float32))
    weight_B = batch.get("mask", jnp.ones(mse_B.shape, jnp.float32))
    count, total = weight_B.sum(), (mse_B * weight_B).sum()
    return total / jnp.maximum(count, 1.0), {"loss": mean(total, count)}

  def initial_loss(self):
    return 1.0   # the output layer starts at zero: the prediction 0 scores E[eps^2] = 1

  def input_free_loss(self, host_batch):
    return 1.0   # without its input the best prediction of the noise is its mean, 0

  # -- the EMA ------------------------------------------------------------------------
  def init_extra(self, params):
    return {"ema": jax.tree.map(lambda p: p, params)}

  def update_extra(self, extra, params, step):
    d = jnp.minimum(self.decay, (1.0 + step) / (10.0 + step))   # warms up from 0.1
    return {"ema": jax.tree.map(lambda e, p: d * e + (1 - d) * p, extra["ema"], params)}

  def eval_params(self, state):
    return state.extra["ema"]

  # -- sampling -----------------------------------------------------------------------
  def sample_images(self, params, model_state, key, num: int, batch_size: int = 500):
    """num images [N, H, W, C] in the data's normalised units (x0 clipped to the pixel
    range)."""
    return sample_in_batches(lambda k, n: self._sampler(n)(params, model_state, k), key, num,
                             batch_size)

  @functools.lru_cache(maxsize=4)
  def _sampler(self, n: int):
    model, shape = self.model, (n, *self.data.example_shape)
    ts = np.linspace(self.T - 1, 0, self.sample_steps).round().astype(np.int32)
    ab = jnp.asarray(self.alpha_bar, jnp.float32)
    t_now, t_prev = jnp.asarray(ts), jnp.asarray(np.concatenate([ts[1:], [-1]]))
    low, high, eta = float(np.min(self.low)), float(np.max(self.high)), float(self.eta)

    @jax.jit
    def run(params, model_state, key):
      def step(i, carry):
        x, key = carry
        key, k_noise = jax.random.split(key)
        t, tp = t_now[i], t_prev[i]
        a, a_prev = ab[t], jnp.where(tp >= 0, ab[jnp.maximum(tp, 0)], 1.0)
        eps = model.apply({"params": params, **model_state}, x, jnp.full((n,), t), train=False)
        x0 = jnp.clip((x - jnp.sqrt(1 - a) * eps) / jnp.sqrt(a), low, high)
        eps = (x - jnp.sqrt(a) * x0) / jnp.sqrt(1 - a)
        sigma = eta * jnp.sqrt((1 - a_prev) / (1 - a) * (1 - a / a_prev))
        noise = jax.random.normal(k_noise, x.shape)
        x = jnp.sqrt(a_prev) * x0 + jnp.sqrt(jnp.maximum(1 - a_prev - sigma**2, 0)) * eps + \
            sigma * noise
        return x, key
      k0, key = jax.random.split(key)
      x, _ = jax.lax.fori_loop(0, len(ts), step, (jax.random.normal(k0, shape), key))
      return x
    return run

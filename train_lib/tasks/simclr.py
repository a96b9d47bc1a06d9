"""SimCLR (Chen et al., 2020): two augmented views of each image, pulled together against
every other image of the batch by the NT-Xent loss on the model's projections.

    config.task.name = "simclr"; config.task.temperature = 0.5
    config.task.min_crop = 0.3      # random resized crop: area fraction in [min_crop, 1]
    config.task.flip = True; config.task.jitter = 0.4   # brightness and contrast, +-jitter

The views are made on the device from the task's key (train_lib/tasks/base.py), so they
are the same however the batch is split. Metrics: loss (NT-Xent, nats) and accuracy
(the positive is the most similar of the 2B - 1 candidates). Read the representation
with the linear_probe evaluator.
"""

import math

import jax
import jax.numpy as jnp

from train_lib.errors import UserError
from train_lib.tasks import register
from train_lib.tasks.base import MEAN, ImageTask, mean


def nt_xent(z_2BxP, temperature: float, valid_2B=None):
  """Per-row NT-Xent loss and whether the positive ranks first; rows i and i + B are the
  two views of one example. Invalid rows (padding) are never candidates, and their own
  loss and correctness are 0 (their positive is padding too: -inf, then inf * 0 = NaN)."""
  n = z_2BxP.shape[0]
  B = n // 2
  z = z_2BxP / jnp.maximum(jnp.linalg.norm(z_2BxP, axis=-1, keepdims=True), 1e-12)
  sim_2Bx2B = (z @ z.T) / temperature
  excluded = jnp.eye(n, dtype=bool)
  if valid_2B is not None:
    excluded = excluded | ~(valid_2B[None, :] > 0)
  sim_2Bx2B = jnp.where(excluded, -jnp.inf, sim_2Bx2B)
  positive_2B = (jnp.arange(n) + B) % n
  pos_2B = jnp.take_along_axis(sim_2Bx2B, positive_2B[:, None], axis=1)[:, 0]
  loss_2B = jax.nn.logsumexp(sim_2Bx2B, axis=1) - pos_2B
  correct_2B = (jnp.argmax(sim_2Bx2B, axis=1) == positive_2B).astype(jnp.float32)
  if valid_2B is not None:
    loss_2B = jnp.where(valid_2B > 0, loss_2B, 0.0)
    correct_2B = jnp.where(valid_2B > 0, correct_2B, 0.0)
  return loss_2B, correct_2B


def _crop_box(key, H: int, W: int, min_crop: float):
  """(scale_y, scale_x, offset_y, offset_x) of a random resized crop (area and aspect)."""
  k_area, k_ratio, k_y, k_x = jax.random.split(key, 4)
  area = jax.random.uniform(k_area, (), minval=min_crop, maxval=1.0)
  log_ratio = jax.random.uniform(k_ratio, (), minval=math.log(3 / 4), maxval=math.log(4 / 3))
  ratio = jnp.exp(log_ratio)
  h = jnp.clip(jnp.sqrt(area / ratio), 0.0, 1.0) * H
  w = jnp.clip(jnp.sqrt(area * ratio), 0.0, 1.0) * W
  y0 = jax.random.uniform(k_y, ()) * (H - h)
  x0 = jax.random.uniform(k_x, ()) * (W - w)
  return H / h, W / w, y0, x0


def augment(key, x_BxHxWxC, min_crop: float, flip: bool, jitter: float):
  """A random view of each image: resized crop, horizontal flip, brightness and contrast."""
  B, H, W, C = x_BxHxWxC.shape

  def one(key, x_HxWxC):
    k_crop, k_flip, k_b, k_c = jax.random.split(key, 4)
    sy, sx, y0, x0 = _crop_box(k_crop, H, W, min_crop)
    x = jax.image.scale_and_translate(
        x_HxWxC, (H, W, C), (0, 1), jnp.stack([sy, sx]), jnp.stack([-y0 * sy, -x0 * sx]),
        method="linear", antialias=False)
    if flip:
      x = jnp.where(jax.random.bernoulli(k_flip), x[:, ::-1], x)
    if jitter:
      contrast = jax.random.uniform(k_c, (), minval=1 - jitter, maxval=1 + jitter)
      brightness = jax.random.uniform(k_b, (), minval=-jitter, maxval=jitter)
      m = x.mean()
      x = (x - m) * contrast + m + brightness
    return x
  return jax.vmap(one)(jax.random.split(key, B), x_BxHxWxC.astype(jnp.float32))


@register("simclr")
class SimCLR(ImageTask):
  metrics = {"loss": MEAN, "accuracy": MEAN}
  console = ("accuracy",)
  # Overfitting one batch: memorising one fixed pair of views of each of its images.
  overfit_with_fixed_key = True

  def __init__(self, config, data, model):
    super().__init__(config, data, model)
    self.temperature = config.get("temperature", 0.5)
    self.min_crop = config.get("min_crop", 0.3)
    self.flip, self.jitter = config.get("flip", True), config.get("jitter", 0.4)
    if self.temperature <= 0:
      raise UserError(f"task.temperature={self.temperature} must be positive")
    if not 0 < self.min_crop <= 1:
      raise UserError(f"task.min_crop={self.min_crop} must be in (0, 1]")

  def init_inputs(self, batch):
    return (batch["image"],), {}

  def loss(self, apply, batch, rng, *, train, group=None):
    x = batch["image"]
    k1, k2 = jax.random.split(rng)
    views = jnp.concatenate([augment(k1, x, self.min_crop, self.flip, self.jitter),
                             augment(k2, x, self.min_crop, self.flip, self.jitter)])
    valid_B = batch.get("mask", jnp.ones(x.shape[0], jnp.float32))
    valid_2B = jnp.concatenate([valid_B, valid_B])
    loss_2B, correct_2B = nt_xent(apply(views), self.temperature, valid_2B)
    count = valid_2B.sum()
    total = loss_2B.sum()
    return total / jnp.maximum(count, 1.0), {
        "loss": mean(total, count), "accuracy": mean(correct_2B.sum(), count)}

  @property
  def loss_floor(self) -> float:
    """The least NT-Xent possible for the batch: positives at similarity 1 and the 2B - 2
    negatives spread as far as unit vectors can be (mean similarity -1 / (2B - 1))."""
    n = 2 * self.data.config.batch_size
    return math.log(1 + (n - 2) * math.exp((-1 / (n - 1) - 1) / self.temperature))

  def _chance(self, batch_size):
    return math.log(2 * batch_size - 1)

  def initial_loss(self):
    # Random features make the positive about as likely as any other candidate (of the
    # global batch; a micro-batch of it has fewer candidates and a lower loss).
    return self._chance(self.data.config.batch_size)

  def input_free_loss(self, host_batch):
    return self._chance(host_batch["image"].shape[0])

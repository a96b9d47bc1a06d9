"""FID-FMNIST: the Frechet distance between generated and held-out images in the
penultimate-layer features of a Fashion-MNIST classifier that Whetstone trained itself.
It is not Inception FID and does not compare with published FIDs; it compares runs
that use the same classifier checkpoint (its workdir and step are logged).

    python main.py --config=configs/fashion_mnist_cnn.py --workdir=runs/fmnist_cnn
    config.evals.fid = ml_collections.ConfigDict({
        "name": "fid", "every": 0, "classifier": "runs/fmnist_cnn", "classifier_step": -1,
        "num_samples": 10000, "batch_size": 1000, "references": True})

Reports fid_fmnist (samples vs the held-out split), and with references
train_vs_test (as many train images: the floor a perfect generator reaches) and
noise_vs_test (uniform random pixels).
"""

import os

import jax
import jax.numpy as jnp
import numpy as np
import scipy.linalg
import flax.linen as nn

from train_lib import checkpointing, config_io, setup as setup_lib, writers
from train_lib.errors import UserError
from train_lib.evaluators import Evaluator, register
from train_lib.partitioning import to_host
from train_lib.tasks.base import to_pixels


def frechet_distance(a_NxD, b_MxD) -> float:
  """|mu_a - mu_b|^2 + tr(S_a + S_b - 2 (S_a S_b)^(1/2)) of two feature sets."""
  a, b = np.asarray(a_NxD, np.float64), np.asarray(b_MxD, np.float64)
  mu_a, mu_b = a.mean(0), b.mean(0)
  # A tiny ridge keeps the square root defined when features are rank-deficient (dead
  # ReLUs): 1e-6 moves the distance by about 1e-6 * D.
  ridge = 1e-6 * np.eye(a.shape[1])
  s_a, s_b = np.cov(a, rowvar=False) + ridge, np.cov(b, rowvar=False) + ridge
  root = scipy.linalg.sqrtm(s_a @ s_b)
  if np.iscomplexobj(root):
    root = root.real
  return float(np.sum((mu_a - mu_b) ** 2) + np.trace(s_a + s_b - 2 * root))


def penultimate(model, variables, x):
  """The input of the model's last top-level layer: the classifier's feature vector."""
  seen = []

  def record(next_fun, args, kwargs, context):
    if len(context.module.path) == 1 and context.method_name == "__call__":
      seen.append(args[0])
    return next_fun(*args, **kwargs)
  with nn.intercept_methods(record):
    model.apply(variables, x, train=False)
  return seen[-1].reshape(x.shape[0], -1).astype(jnp.float32)


@register("fid")
class FID(Evaluator):
  config_fields = ("num_samples", "batch_size", "references", "classifier", "classifier_step")   # beside name and every
  def __init__(self, config, setup, workdir):
    super().__init__(config, setup, workdir)
    if not hasattr(setup.task, "sample_images"):
      raise UserError(f"evals: fid needs a task that samples images; "
                      f"{type(setup.task).__name__} does not")
    self.num, self.batch = config.get("num_samples", 10000), config.get("batch_size", 1000)
    self.references, self._reference_results = config.get("references", True), None
    self.classifier = config.get("classifier", "")
    if not self.classifier:
      writers.console("fid: evals.fid.classifier names no classifier workdir; FID is "
                      "skipped (train configs/fashion_mnist_cnn.py and name its workdir)")
      return
    self._load_classifier(config.get("classifier_step", -1))

  def _load_classifier(self, step: int):
    path = os.path.join(os.path.abspath(os.path.expanduser(self.classifier)), "config.json")
    if not os.path.isfile(path):
      raise UserError(f"evals.fid.classifier: no config.json in {self.classifier}; name the "
                      "workdir of a trained classifier run")
    cls_config = config_io.from_json(path)
    s = setup_lib.build(cls_config)
    if s.data.example_shape != self.setup.data.example_shape:
      raise UserError(f"evals.fid.classifier sees images {s.data.example_shape}, the samples "
                      f"are {self.setup.data.example_shape}")
    ckpt, wanted = checkpointing.open_for_reading(self.classifier, step)
    target = checkpointing.sharded_target(s.abstract_state, s.state_sharding)
    state = ckpt.restore(wanted, target, config=cls_config)
    ckpt.close()
    writers.console(f"fid: features of classifier {cls_config.model.name} at step {wanted} "
                    f"in {ckpt.directory}")
    self.classifier_step = wanted
    variables = {"params": state.params, **state.model_state}
    mean, std = s.data.mean, s.data.std
    self._features = jax.jit(lambda pixels: penultimate(
        s.model, variables, (pixels - mean) / std))

  def _pixel_features(self, pixels):
    return np.concatenate([to_host(self._features(jnp.asarray(pixels[i:i + self.batch],
                                                              jnp.float32)))
                           for i in range(0, len(pixels), self.batch)])

  def _split_pixels(self, split: str, limit: int = 0):
    data, out = self.setup.data, []
    for batch in data.eval_batches(split, limit):
      keep = to_host(batch["mask"]) > 0
      out.append(to_pixels(data, to_host(batch["image"]))[keep])
    return np.concatenate(out)

  def run(self, state) -> dict:
    if not self.classifier:
      return {}
    s = self.setup
    test = self._pixel_features(self._split_pixels("eval"))
    images = s.task.sample_images(s.task.eval_params(state), state.model_state,
                                  jax.random.PRNGKey(0), self.num, self.batch)
    out = {"fid_fmnist": frechet_distance(self._pixel_features(to_pixels(s.data, images)),
                                          test),
           "num_samples": self.num, "classifier_step": self.classifier_step}
    if self.references:
      if self._reference_results is None:
        train = self._split_pixels("train", self.num)
        noise = np.random.default_rng(0).uniform(0, 255, (self.num, *train.shape[1:]))
        self._reference_results = {
            "train_vs_test": frechet_distance(self._pixel_features(train), test),
            "noise_vs_test": frechet_distance(self._pixel_features(noise), test)}
      out.update(self._reference_results)
    return out

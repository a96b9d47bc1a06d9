"""A DCGAN on Fashion-MNIST: a generator and a discriminator, each with its own Adam,
updated in turn every step (the discriminator first), non-saturating loss.

    python main.py --config=configs/fashion_mnist_dcgan.py --workdir=runs/dcgan
    python main.py --config=configs/fashion_mnist_dcgan.py --workdir=runs/dcgan --mode=sample
    python main.py --config=configs/fashion_mnist_dcgan.py:runlocal --workdir=/tmp/g  # CPU

--mode=sample writes samples.npz and plots/samples.png; FID-FMNIST is the `fid`
evaluator (--config.evals.fid.classifier=runs/fmnist_cnn, as for the DDPM).
Measured (seed 0, one H200, jax 0.11.2, 2026-12-03; bench/frameworks.py): FID-FMNIST
256 of 10,000 samples (floor 1.02, noise 699): the generator dropped modes (no shoes or
bags in its grid); untuned. 209 steps/s, 80 s in all.
"""

import ml_collections

from configs import base


def get_config(arg=None):
  arg = base.parse_arg(arg, runlocal=False)
  config = base.get_config()
  config.data.name = "fashion_mnist"
  config.data.batch_size = 128
  config.data.eval_batch_size = 1000

  config.task.name = "gan"

  config.model = ml_collections.ConfigDict()
  config.model.name = "dcgan"
  config.model.image_shape = (28, 28, 1)
  config.model.latent_dim = 64
  config.model.width = 64

  config.optim.name = "adamw"          # one Adam per group (discriminator, generator)
  config.optim.learning_rate = 2e-4
  config.optim.schedule = "constant"
  config.optim.b1 = 0.5
  config.optim.b2 = 0.999

  config.evals.fid = ml_collections.ConfigDict({
      "name": "fid", "every": 0, "classifier": "", "num_samples": 10000,
      "batch_size": 1000, "references": True})

  config.train.num_steps = 10000
  config.train.log_every = 500
  config.train.eval_every = 5000
  config.train.checkpoint_every = 5000
  if arg.runlocal:
    config.data.batch_size = 32
    config.data.eval_batch_size = 500
    config.model.width = 16
    config.model.latent_dim = 16
    config.evals.fid.num_samples = 200
    config.evals.fid.batch_size = 100
    config.sample.num_images = 16
    config.optim.learning_rate = 1e-3
    config.train.num_steps = 40
    config.train.log_every = 10
    config.train.eval_every = 20
    config.train.checkpoint_every = 20
  return config

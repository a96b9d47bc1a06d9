"""A DDPM on Fashion-MNIST: a small U-Net predicts the noise (cosine schedule, 1,000
steps), an EMA of its weights evaluates and samples.

    python main.py --config=configs/fashion_mnist_ddpm.py --workdir=runs/ddpm
    python main.py --config=configs/fashion_mnist_ddpm.py --workdir=runs/ddpm --mode=sample
    python main.py --config=configs/fashion_mnist_ddpm.py:runlocal --workdir=/tmp/d  # CPU

--mode=sample writes samples.npz and plots/samples.png. FID-FMNIST (a Frechet distance
in the features of a Fashion-MNIST classifier that Whetstone trains itself; not
comparable with Inception FID) is the `fid` evaluator: train configs/fashion_mnist_cnn.py
first and name its workdir, --config.evals.fid.classifier=runs/fmnist_cnn.
Measured (seed 0, one H200, jax 0.11.2, 2026-12-03; bench/frameworks.py): FID-FMNIST
10.3 of 10,000 samples (floor: train vs test 1.02; noise 699), held-out loss 0.0854;
90 steps/s, 176 s in all with the FID.
"""

import ml_collections

from configs import base


def get_config(arg=None):
  arg = base.parse_arg(arg, runlocal=False)
  config = base.get_config()
  config.data.name = "fashion_mnist"
  config.data.batch_size = 128
  config.data.eval_batch_size = 1000

  config.task.name = "ddpm"
  config.task.schedule = "cosine"
  config.task.timesteps = 1000
  config.task.ema_decay = 0.999
  config.task.sample_steps = 250
  config.task.eta = 1.0

  config.model = ml_collections.ConfigDict()
  config.model.name = "unet"
  config.model.channels = (32, 64, 128)
  config.model.embed_dim = 128

  config.optim.name = "adamw"
  config.optim.learning_rate = 1e-3
  config.optim.warmup_steps = 500
  config.optim.end_learning_rate_factor = 0.1
  config.optim.clip_norm = 1.0

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
    config.model.channels = (8, 16)
    config.model.embed_dim = 16
    config.task.sample_steps = 10
    config.evals.fid.num_samples = 200
    config.evals.fid.batch_size = 100
    config.sample.num_images = 16
    config.train.num_steps = 40
    config.train.log_every = 10
    config.train.eval_every = 20
    config.train.checkpoint_every = 20
    config.optim.warmup_steps = 5
  return config

"""The embarrassingly simple baseline: a 2-layer MLP on digits.

    python main.py --config=configs/digits_mlp.py --workdir=runs/digits_mlp
    python main.py --config=configs/digits_mlp.py:runlocal --workdir=/tmp/m

Measured, seed 0, 1,500 steps: test accuracy 0.975 (loss 0.083) on a 2-core CPU
and on one H200. The CNN (configs/default.py) must beat this.
"""

from configs import base


def get_config(arg=None):
  arg = base.parse_arg(arg, runlocal=False)
  config = base.get_config()
  config.data.name = "digits"
  config.data.batch_size = 64
  config.data.eval_batch_size = 128

  config.model.name = "mlp"
  config.model.hidden = (256, 256)

  config.optim.name = "adamw"
  config.optim.learning_rate = 1e-3
  config.optim.warmup_steps = 50

  config.train.num_steps = 1500
  config.train.log_every = 100
  config.train.eval_every = 500
  config.train.checkpoint_every = 500
  if arg.runlocal:
    config.train.num_steps = 60
    config.train.log_every = 20
    config.train.eval_every = 30
    config.train.checkpoint_every = 30
    config.optim.warmup_steps = 5
  return config

"""The embarrassingly simple baseline: the default run with a 2-layer MLP for the CNN.

    python main.py --config=configs/digits_mlp.py --workdir=runs/digits_mlp
    python main.py --config=configs/digits_mlp.py:runlocal --workdir=/tmp/m

Measured, seed 0, 1,500 steps, 2026-11-22: test accuracy 0.978 (loss 0.084) on a
2-core CPU (jax 0.10.2). The CNN (configs/default.py, 0.983) must beat this.
"""

import ml_collections

from configs import default


def get_config(arg=None):
  config = default.get_config(arg)
  config.model = ml_collections.ConfigDict({"name": "mlp", "hidden": (256, 256)})
  config.optim.learning_rate = 1e-3
  config.optim.weight_decay = 0.0
  return config

"""Ablation: the character-level Transformer's positional encoding and MLP activation, on the
embedded Shakespeare corpus (configs/shakespeare_char.py is the baseline: learned positions,
GELU). Each variant changes one switch of models/transformer.py.

    python main.py --mode=ablate --config=configs/ablations/shakespeare_arch.py --workdir=runs/abl
    python main.py --mode=ablate --config=configs/ablations/shakespeare_arch.py:runlocal --workdir=/tmp/abl

The full form trains 8 configs x 2 seeds for 20% of the baseline's 5,000 steps (about 7
minutes on one H100; table in README.md). The
runlocal form runs the same variants on the CPU-sized runlocal baseline, 2 seeds each; its
table (a CPU proxy, not a result about the architectures) is in README.md.
"""

import ml_collections

from configs import base


def get_config(arg=None):
  arg = base.parse_arg(arg, runlocal=False)
  config = ml_collections.ConfigDict()
  config.baseline = ml_collections.ConfigDict()
  config.baseline.config = "configs/shakespeare_char.py" + (":runlocal" if arg.runlocal else "")
  config.baseline.overrides = (("train.keep_checkpoints", 1),)
  config.variants = (
      ("sinusoidal", "model.position", "sinusoidal"),
      ("rope", "model.position", "rope"),
      ("alibi", "model.position", "alibi"),
      ("no_position", "model.position", "none"),
      ("relu", "model.activation", "relu"),
      ("sq_relu", "model.activation", "sq_relu"),
      ("swiglu", "model.activation", "swiglu"),
  )
  config.seeds = (0, 1)
  config.proxy = 0.2              # each run trains 20% of the baseline's steps
  config.metric = "loss"          # held-out loss (nats per byte) on data.eval_split
  config.higher_is_better = False
  config.early_stop = ml_collections.ConfigDict()
  config.early_stop.at = 0.5      # checked at the first evaluation from half of the run; 0 = off
  config.early_stop.sigmas = 2.0  # band: baseline mean + max(sigmas x std, tolerance x mean)
  config.early_stop.tolerance = 0.01
  if arg.runlocal:                # the CPU-sized baseline for 30 of its 60 steps, checked at 15
    config.baseline.overrides += (("train.eval_every", 15), ("train.log_every", 5))
    config.seeds = (0, 1)
    config.proxy = 0.5
  return config

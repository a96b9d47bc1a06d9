"""Ablation: architecture families as character LMs on the embedded Shakespeare corpus, at
about equal parameter count (10.7M-10.9M) and equal steps, against the Transformer of
configs/shakespeare_char.py. Each variant is another config file whose data section is the
baseline's (--mode=ablate refuses one that reads other data).

    python main.py --mode=ablate --config=configs/ablations/shakespeare_families.py --workdir=runs/families
    python main.py --mode=ablate --config=configs/ablations/shakespeare_families.py:runlocal --workdir=/tmp/fam

| variant | config | parameters |
| --- | --- | --- |
| baseline | configs/shakespeare_char.py (Transformer, 6 x 384) | 10,818,432 |
| lstm | configs/shakespeare_lstm.py (2 x 808) | 10,872,704 |
| gru | configs/shakespeare_gru.py (2 x 928) | 10,820,736 |
| ssm | configs/shakespeare_ssm.py (selective SSM) | see its docstring |
| moe | configs/shakespeare_moe.py (routed experts) | see its docstring |

The full form trains each family for 15% of the baseline's 5,000 steps (750), one seed, with no
early stop (every family is measured to the end); the table is in README.md. The runlocal
form runs the CPU-sized runlocal configs: a CPU proxy, not a result about the families.
"""

import ml_collections

from configs import base


def get_config(arg=None):
  arg = base.parse_arg(arg, runlocal=False)
  suffix = ":runlocal" if arg.runlocal else ""
  config = ml_collections.ConfigDict()
  config.baseline = ml_collections.ConfigDict()
  config.baseline.config = "configs/shakespeare_char.py" + suffix
  config.baseline.overrides = (("train.keep_checkpoints", 1),)
  config.variants = tuple((name, "config", f"configs/shakespeare_{name}.py{suffix}")
                          for name in ("lstm", "gru", "ssm", "moe"))
  config.seeds = (0,)
  config.proxy = 0.15             # each run trains 15% of the baseline's steps (750)
  config.metric = "loss"          # held-out loss (nats per byte) on data.eval_split
  config.higher_is_better = False
  config.early_stop = ml_collections.ConfigDict()
  config.early_stop.at = 0.0      # off: every family trains to the end
  config.early_stop.sigmas = 2.0
  config.early_stop.tolerance = 0.01
  if arg.runlocal:
    config.baseline.overrides += (("train.eval_every", 12), ("train.log_every", 6))
    config.proxy = 0.4
  return config

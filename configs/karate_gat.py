"""GAT (Velickovic et al., 2018) on Zachary's karate club: configs/karate_gcn.py's data
(networkx's two `club` factions, one-hot features; 2 labelled nodes per class, 11, 16 and
20, 22, train; the other 30 nodes held out for eval) and steps, with Velickovic et al.'s
Cora model: 8 heads of 8 units (concatenated, ELU), one output head, dropout 0.6 on the
inputs of both layers and on the attention weights, Adam at 0.005 (no weight decay: their
coupled L2 has no decoupled equivalent in optim). 2,502 parameters.

    python main.py --config=configs/karate_gat.py --workdir=runs/karate_gat
    python main.py --config=configs/karate_gat.py --workdir=runs/karate_gat --mode=eval
    python main.py --config=configs/karate_gat.py:runlocal --workdir=/tmp/k  # seconds, CPU

Measured (CPU, 2 cores, seed 0): test-node accuracy 0.967 (29 of 30), test loss 0.195 after
200 steps; ~145 steps/s (median of 20 log windows over two runs: 17-410, the shared
machine's load average near 8).
Measured (seed 0, one H200, jax 0.11.2, 2026-12-04): test-node accuracy 0.967 (29 of 30), test loss
0.195, 268 steps/s (one full-graph step each; bench/families.py, bench/RESULTS.md run 12).
"""

import ml_collections

from configs import karate_gcn


def get_config(arg=None):
  config = karate_gcn.get_config(arg)
  config.model = ml_collections.ConfigDict()
  config.model.name = "gat"
  config.model.hidden = (8,)                 # per head
  config.model.heads = 8
  config.model.out_heads = 1
  config.model.dropout = 0.6
  config.model.attention_dropout = 0.6
  config.optim.learning_rate = 0.005
  return config

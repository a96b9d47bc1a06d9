"""GCN (Kipf and Welling, 2017) on Zachary's karate club (networkx's, offline): node
classification of the two factions after the split (networkx's `club`: Mr. Hi's 17 members,
the Officer's 17). Semi-supervised: 2 labelled nodes per class, drawn with
data.split_seed=0 (nodes 11, 16 of Mr. Hi's, 20, 22 of the Officer's) train; the other 30
nodes are the held-out "test" split that eval scores. 594 parameters.

    python main.py --config=configs/karate_gcn.py --workdir=runs/karate_gcn
    python main.py --config=configs/karate_gcn.py --workdir=runs/karate_gcn --mode=eval
    python main.py --config=configs/karate_gcn.py:runlocal --workdir=/tmp/k  # seconds, CPU

Kipf and Welling's setting: one-hot node features, 2 layers (16 hidden units, ReLU),
dropout 0.5, Adam at 0.01 for 200 full-graph steps (no weight decay here: their coupled
L2 of 5e-4 on the first layer has no decoupled equivalent in optim).

Measured (CPU, 2 cores, seed 0): test-node accuracy 0.967 (29 of 30), test loss 0.084 after
200 steps; ~190 steps/s (median of 20 log windows over two runs: 20-790, the shared
machine's load average near 8).
Measured (seed 0, one H200, jax 0.11.2, 2026-12-04): test-node accuracy 0.967 (29 of 30), test loss
0.084, 284 steps/s (one full-graph step each; bench/families.py, bench/RESULTS.md run 12).
"""

from configs import base


def get_config(arg=None):
  arg = base.parse_arg(arg, runlocal=False)
  config = base.get_config()
  config.task.name = "node_classification"
  config.data.name = "graphs"
  config.data.graph = "karate_club"          # input_pipeline/graphs.py GRAPHS
  config.data.graph_labels = "club"          # club (2 factions) | communities (4, PyG's)
  config.data.train_per_class = 2            # labelled nodes per class; the rest are "test"
  config.data.split_seed = 0                 # which nodes are labelled
  config.data.max_nodes = 0                  # pad graphs to this many nodes; 0 = the largest
  config.data.max_edges = 0                  # and directed edges; 0 = the largest graph's
  config.data.batch_size = 1                 # graphs; karate club is one graph
  config.data.eval_batch_size = 1

  config.model.name = "gcn"
  config.model.hidden = (16,)
  config.model.dropout = 0.5

  config.optim.name = "adamw"
  config.optim.learning_rate = 0.01
  config.optim.schedule = "constant"
  config.optim.weight_decay = 0.0

  config.train.num_steps = 200
  config.train.log_every = 20
  config.train.eval_every = 50
  config.train.checkpoint_every = 100
  if arg.runlocal:
    config.train.num_steps = 20
    config.train.log_every = 5
    config.train.eval_every = 10
    config.train.checkpoint_every = 10
  return config

"""GCN and GAT fixtures: torch_geometric's GCNConv and GATConv, two layers each, random init
(seed 0), on a small directed random graph with one self-loop; and torch_geometric's
KarateClub (edges, 4 community labels) to check input_pipeline/graphs.py against.

    python tools/make_fixtures.py gnn      # -> tests/fixtures/gnn/{graph,gcn,gat,karate}.npz

gcn.npz / gat.npz hold each layer's parameters under torch's names ("conv0.lin.weight",
[out, in]) and the outputs of the first layer and of the whole model, in eval mode.
"""

import os

import numpy as np

NODES, FEATURES, EDGES, CLASSES = 12, 5, 40, 3


def random_graph(rng):
  """A directed graph without duplicate edges, with one self-loop (the layers replace
  self-loops by their own) and one node without incoming edges."""
  pairs = [(s, r) for s in range(NODES) for r in range(NODES) if s != r and r != NODES - 1]
  chosen = rng.choice(len(pairs), EDGES - 1, replace=False)
  edges = [pairs[i] for i in sorted(chosen)] + [(3, 3)]
  return np.array(edges, np.int64).T   # [2, E]: senders, receivers


def build(out_dir: str):
  import torch
  import torch.nn.functional as F
  from torch_geometric.datasets import KarateClub
  from torch_geometric.nn import GATConv, GCNConv

  torch.manual_seed(0)
  rng = np.random.default_rng(0)
  edge_index = random_graph(rng)
  x = rng.normal(size=(NODES, FEATURES)).astype(np.float32)
  ei, xt = torch.from_numpy(edge_index), torch.from_numpy(x)
  np.savez(os.path.join(out_dir, "graph.npz"), edge_index=edge_index.astype(np.int32), x=x)

  def save(name, convs, act):
    for conv in convs:   # a nonzero bias, so that its layout is tested too
      torch.nn.init.normal_(conv.bias, std=0.1)
    with torch.no_grad():
      first = convs[0](xt, ei)
      out = convs[1](act(first), ei)
    arrays = {f"conv{i}.{k}": v.detach().numpy() for i, c in enumerate(convs)
              for k, v in c.state_dict().items()}
    np.savez(os.path.join(out_dir, f"{name}.npz"), first=first.numpy(), out=out.numpy(),
             **arrays)

  save("gcn", [GCNConv(FEATURES, 8).eval(), GCNConv(8, CLASSES).eval()], F.relu)
  save("gat", [GATConv(FEATURES, 4, heads=3, concat=True).eval(),
               GATConv(12, CLASSES, heads=2, concat=False).eval()], F.elu)

  karate = KarateClub()[0]
  np.savez(os.path.join(out_dir, "karate.npz"),
           edge_index=karate.edge_index.numpy().astype(np.int32),
           y=karate.y.numpy().astype(np.int32))

"""Graphs for node classification, padded to one shape. data.name = "graphs" and
data.graph picks one of GRAPHS: "karate_club", Zachary's karate club (34 members, 78
friendships) as networkx bundles it (no download).

    data = GraphData(config.data, seed, sharding)   # data.name="graphs", data.graph="karate_club"
    batch = data.next_train()
    # {"nodes": f32[B,N,F], "senders": i32[B,E], "receivers": i32[B,E], "edge_mask": f32[B,E],
    #  "label": i32[B,N], "mask": f32[B,N]}   edge e: senders[e] -> receivers[e]
    # mask is 1 on the nodes of the split: labelled nodes in train batches, test nodes in eval

A dataset here is a list of graphs; an example is one graph, padded to data.max_nodes
nodes and data.max_edges directed edges (0: the largest graph's), with node and edge
masks 0 on the padding. Each train batch relabels every graph's nodes and edges in a fresh
order drawn from (seed, batch, row): a GNN is equivariant to it, so training sees the same
graph, and batches differ (--mode=sanity refuses repeated batches). Eval batches keep the
stored order; their padding rows have mask 0.

Karate club: features are one-hot node ids (Kipf and Welling's demo); an undirected
friendship is two directed edges (156). data.graph_labels = "club" (default) takes
networkx's two factions after the split (0: Mr. Hi's 17 members, 1: the Officer's 17);
"communities" takes the 4 modularity communities of torch_geometric's KarateClub (Kipf
and Welling's blog demo). The split is semi-supervised: data.train_per_class nodes of each
class, drawn with data.split_seed, are labelled (the "train" split); all the others are
the held-out "test" split. (split_nodes lists them; configs/karate_gcn.py names the nodes.)

No graph-level dataset: networkx bundles no collection of graphs with graph labels (its
atlas of small graphs has none, and its other real graphs are single graphs), so there
is none here rather than an invented one.
"""

import dataclasses

import numpy as np

from input_pipeline.base import Data, DataError, epoch_positions, register

# The 4 communities of torch_geometric's KarateClub (modularity clustering, after Kipf and
# Welling); tests/test_parity_gnn.py checks them against its fixture.
KARATE_COMMUNITIES = (1, 1, 1, 1, 3, 3, 3, 1, 0, 1, 3, 1, 1, 1, 0, 0, 3, 1, 0, 1, 0, 1,
                      0, 0, 2, 2, 0, 0, 2, 0, 0, 2, 0, 0)
SPLITS = ("train", "test")


@dataclasses.dataclass
class Graph:
  nodes: np.ndarray       # f32[n, F]
  senders: np.ndarray     # i32[m]
  receivers: np.ndarray   # i32[m]
  labels: np.ndarray      # i32[n]
  masks: dict             # split -> f32[n]: the nodes of that split


def karate_club(labels: str = "club"):
  """(graph without masks, number of classes)."""
  import networkx as nx
  g = nx.karate_club_graph()
  edges = np.array(sorted(g.edges()), np.int32)             # undirected, i < j
  both = np.concatenate([edges, edges[:, ::-1]])           # each direction once
  both = both[np.lexsort((both[:, 1], both[:, 0]))]
  n = g.number_of_nodes()
  if labels == "club":
    y, classes = np.array([g.nodes[i]["club"] != "Mr. Hi" for i in range(n)], np.int32), 2
  elif labels == "communities":
    y, classes = np.array(KARATE_COMMUNITIES, np.int32), 4
  else:
    raise DataError(f"data.graph_labels={labels!r} is unknown for karate_club; use 'club' "
                    "(2 factions) or 'communities' (4 classes)")
  return Graph(np.eye(n, dtype=np.float32), both[:, 0], both[:, 1], y, {}), classes


def split_nodes(labels, classes: int, per_class: int, seed: int) -> dict:
  """{"train": per_class nodes of each class drawn with `seed`, "test": the others}."""
  rng = np.random.default_rng(seed)
  train = np.zeros(len(labels), np.float32)
  for c in range(classes):
    members = np.flatnonzero(labels == c)
    if len(members) <= per_class:
      raise DataError(f"data.train_per_class={per_class} leaves no test node of class {c} "
                      f"({len(members)} nodes); lower it")
    train[rng.choice(members, per_class, replace=False)] = 1.0
  return {"train": train, "test": 1.0 - train}


# data.graph -> a function of data.graph_labels: (graph without masks, number of classes).
GRAPHS = {"karate_club": karate_club}


@register("graphs")
class GraphData(Data):
  def __init__(self, config, seed: int, sharding, eval_sharding=None):
    name = config.get("graph", "")
    if name not in GRAPHS:
      raise DataError(f"data.graph={name!r} is unknown; data.name='graphs' has "
                      f"{sorted(GRAPHS)}")
    super().__init__(config, seed, sharding, eval_sharding)
    for key, split in (("train_split", config.train_split), ("eval_split", config.eval_split)):
      if split not in SPLITS:
        raise DataError(f"data.{key}={split!r}: data.name='graphs' has node splits {SPLITS}")
    per_class = config.get("train_per_class", 1)
    if per_class < 1:
      raise DataError(f"data.train_per_class={per_class} must be >= 1")
    graph, self.num_classes = GRAPHS[name](config.get("graph_labels", "club"))
    graph.masks = split_nodes(graph.labels, self.num_classes, per_class,
                              config.get("split_seed", 0))
    self.graphs = [graph]
    self.num_node_features = graph.nodes.shape[1]
    self.max_nodes = config.get("max_nodes", 0) or max(len(g.labels) for g in self.graphs)
    self.max_edges = config.get("max_edges", 0) or max(len(g.senders) for g in self.graphs)
    for g in self.graphs:
      if len(g.labels) > self.max_nodes or len(g.senders) > self.max_edges:
        raise DataError(f"a graph of {len(g.labels)} nodes and {len(g.senders)} edges does "
                        f"not fit data.max_nodes={self.max_nodes}, data.max_edges="
                        f"{self.max_edges}; raise them (0: the largest graph's)")
    self.num_train = self.num_eval = len(self.graphs)   # examples are graphs
    self._orders = {}
    self.start()

  def eval_count(self) -> int:
    """Nodes one full eval scores: the eval split's nodes of every graph."""
    return int(sum(g.masks[self.config.eval_split].sum() for g in self.graphs))

  def pad(self, graph: Graph, split: str, rng=None) -> dict:
    """One graph as fixed-size arrays; with `rng`, its nodes and edges in a random order."""
    n, m = len(graph.labels), len(graph.senders)
    order, edges = np.arange(n), np.arange(m)
    if rng is not None:
      order, edges = rng.permutation(n), rng.permutation(m)
    new_id = np.empty(n, np.int32)
    new_id[order] = np.arange(n, dtype=np.int32)   # node order[k] is now node k
    N, E, F = self.max_nodes, self.max_edges, self.num_node_features
    out = {"nodes": np.zeros((N, F), np.float32), "senders": np.zeros(E, np.int32),
           "receivers": np.zeros(E, np.int32), "edge_mask": np.zeros(E, np.float32),
           "label": np.zeros(N, np.int32), "mask": np.zeros(N, np.float32)}
    out["nodes"][:n] = graph.nodes[order]
    out["label"][:n] = graph.labels[order]
    out["mask"][:n] = graph.masks[split][order]
    out["senders"][:m] = new_id[graph.senders[edges]]
    out["receivers"][:m] = new_id[graph.receivers[edges]]
    out["edge_mask"][:m] = 1.0
    return out

  def train_batch(self, j: int) -> dict:
    positions = self.local_positions(j, self.config.batch_size, self.local_batch)
    indices = epoch_positions(self.seed, positions, self.num_train, self._orders)
    rows = [self.pad(self.graphs[i], self.config.train_split,
                     np.random.default_rng((self.seed, 4, int(p))))
            for i, p in zip(indices, positions)]
    return {k: np.stack([r[k] for r in rows]) for k in rows[0]}

  def eval_batch(self, j: int, count: int = 0) -> dict:
    """Eval graphs of batch j (of the first `count`, default all); padding rows mask 0."""
    count = count or self.num_eval
    positions = self.local_positions(j, self.config.eval_batch_size, self.local_eval_batch)
    rows = []
    for p in positions:
      row = self.pad(self.graphs[min(p, len(self.graphs) - 1)], self.config.eval_split)
      if p >= count:
        row["mask"][:] = 0.0
      rows.append(row)
    return {k: np.stack([r[k] for r in rows]) for k in rows[0]}

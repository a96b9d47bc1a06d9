"""GCN and GAT (models/gnn.py) against torch_geometric's GCNConv and GATConv on the same
weights (fixtures from tools/parity/gnn.py); padding and node order change no real output;
the karate club matches torch_geometric's; bad data and model arguments are one-line
errors; both karate configs train through main.py, resume bit-exactly and evaluate with
--mode=eval. (--mode=sanity for both configs is in tests/test_sanity.py, which runs every
shipped config.)"""

import concurrent.futures
import os
import re
import shutil

import jax
import numpy as np
import pytest
from ml_collections import ConfigDict

from helpers import last_json, run_main
from input_pipeline import DataError, graphs
from models.gnn import GAT, GCN, GATConv, GCNConv
from test_reliability import assert_same_arrays, saved_state

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "gnn")
# The fixtures' models: two layers each, as tools/parity/gnn.py builds them.
MODELS = {"gcn": (GCN(num_classes=3, hidden=(8,)), GCNConv(8)),
          "gat": (GAT(num_classes=3, hidden=(4,), heads=3, out_heads=2),
                  GATConv(4, heads=3, concat=True))}


def load(name):
  return dict(np.load(os.path.join(FIXTURES, f"{name}.npz"), allow_pickle=False))


def torch_params(name, w):
  """torch_geometric's state dicts -> our parameters (Linear weight [out, in] -> kernel)."""
  params = {}
  for i in range(2):
    layer = {"lin": {"kernel": w[f"conv{i}.lin.weight"].T}, "bias": w[f"conv{i}.bias"]}
    if name == "gat":
      layer.update(att_src=w[f"conv{i}.att_src"][0], att_dst=w[f"conv{i}.att_dst"][0])
    params[f"conv{i}"] = layer
  return {"params": params}


def fixture_graph():
  """The fixture graph as a batch of one: (nodes, senders, receivers, edge_mask)."""
  g = load("graph")
  senders, receivers = g["edge_index"]
  return g["x"][None], senders[None], receivers[None], np.ones((1, len(senders)), np.float32)


@pytest.mark.parametrize("name", ["gcn", "gat"])
def test_parity_gcn_and_gat_match_torch_geometric(name):
  (model, conv0), w = MODELS[name], load(name)
  variables, apply = torch_params(name, w), jax.jit(model.apply)
  graph = fixture_graph()
  out = np.asarray(apply(variables, *graph)[0])
  first = np.asarray(conv0.apply({"params": variables["params"]["conv0"]}, *graph)[0])
  # float32 on both sides; only the order of the sums (matmul, scatter, softmax) differs:
  # 1e-5 on values of order 1 is a few ulps of accumulated rounding.
  np.testing.assert_allclose(first, w["first"], rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(out, w["out"], rtol=1e-5, atol=1e-5)
  # The comparison can fail: on this directed graph the edges' direction matters, and
  # GAT's source and target attention vectors are not interchangeable.
  x, senders, receivers, edge_mask = graph
  flipped = np.asarray(apply(variables, x, receivers, senders, edge_mask)[0])
  assert np.abs(flipped - w["out"]).max() > 1e-2
  if name == "gat":
    p = variables["params"]["conv0"]
    swapped = {"params": {**variables["params"],
                          "conv0": {**p, "att_src": p["att_dst"], "att_dst": p["att_src"]}}}
    assert np.abs(np.asarray(apply(swapped, *graph)[0]) - w["out"]).max() > 1e-2


@pytest.mark.parametrize("name", ["gcn", "gat"])
def test_parity_padding_and_node_order_change_no_real_output(name):
  (model, _), w = MODELS[name], load(name)
  variables, apply = torch_params(name, w), jax.jit(model.apply)
  x, senders, receivers, _ = fixture_graph()
  n, m = x.shape[1], senders.shape[1]
  rng = np.random.default_rng(0)
  # Row 0: the graph with 5 padded nodes (random features) and 9 padded edges between any
  # of its nodes (mask 0); row 1: another graph, which must not leak into row 0.
  N, E = n + 5, m + 9
  nodes = rng.normal(size=(2, N, x.shape[2])).astype(np.float32)
  nodes[0, :n] = x[0]
  send = rng.integers(0, N, (2, E)).astype(np.int32)
  recv = rng.integers(0, N, (2, E)).astype(np.int32)
  send[0, :m], recv[0, :m] = senders[0], receivers[0]
  mask = np.ones((2, E), np.float32)
  mask[0, m:] = 0.0
  padded = np.asarray(apply(variables, nodes, send, recv, mask))
  # Masked terms add exact zeros, but the scatter may sum in another order: 1e-6.
  np.testing.assert_allclose(padded[0, :n], w["out"], rtol=1e-5, atol=1e-6)
  # Relabelling the nodes (as every train batch does) permutes the outputs.
  order = rng.permutation(n)
  new_id = np.argsort(order).astype(np.int32)
  permuted = np.asarray(apply(variables, x[:, order], new_id[senders], new_id[receivers],
                              np.ones_like(senders, np.float32)))
  np.testing.assert_allclose(permuted[0], w["out"][order], rtol=1e-5, atol=1e-6)


def test_parity_karate_club_is_torch_geometric_s():
  ref = load("karate")
  graph, classes = graphs.karate_club("communities")
  assert classes == 4 and graph.nodes.shape == (34, 34)
  np.testing.assert_array_equal(graph.nodes, np.eye(34))
  np.testing.assert_array_equal(graph.labels, ref["y"])
  ours = set(zip(graph.senders.tolist(), graph.receivers.tolist()))
  assert len(ours) == len(graph.senders) == 156
  assert ours == set(zip(*ref["edge_index"].tolist()))
  club, two = graphs.karate_club()   # the default: networkx's two factions
  assert two == 2 and club.labels.sum() == 17   # networkx: 17 follow the officer
  assert club.labels[0] == 0 and club.labels[33] == 1   # Mr. Hi and the Officer


def graph_config(**overrides):
  config = ConfigDict({"name": "graphs", "graph": "karate_club", "batch_size": 2,
                       "eval_batch_size": 2, "train_split": "train", "eval_split": "test",
                       "worker_threads": 0, "prefetch": 0, "train_per_class": 2,
                       "split_seed": 1, "graph_labels": "communities", "max_nodes": 40,
                       "max_edges": 160})
  config.update(overrides)
  return config


SHARDING = jax.sharding.SingleDeviceSharding(jax.devices()[0])


def test_parity_karate_batches_pad_permute_and_split():
  data = graphs.GraphData(graph_config(), 0, SHARDING)
  a, b = data.train_batch(0), data.train_batch(1)
  assert a["nodes"].shape == (2, 40, 34) and a["senders"].shape == (2, 160)
  assert a["mask"].sum() == 2 * 8 and a["edge_mask"].sum() == 2 * 156
  assert not np.array_equal(a["senders"], b["senders"])   # a fresh node order per row
  for batch in (a, b):  # the same graph: labelled node -> label, and the edges
    for r in range(2):
      ids = batch["nodes"][r].argmax(-1)   # one-hot features name the original node
      real = batch["edge_mask"][r] > 0
      edges = set(zip(ids[batch["senders"][r][real]].tolist(),
                      ids[batch["receivers"][r][real]].tolist()))
      assert len(edges) == 156 and (0, 1) in edges and (1, 0) in edges
      np.testing.assert_array_equal(batch["label"][r][:34],
                                    np.array(graphs.KARATE_COMMUNITIES)[ids[:34]])
  ev = data.eval_batch(0)   # stored order; the second row is padding
  assert ev["mask"][0].sum() == 34 - 8 == data.eval_count() and ev["mask"][1].sum() == 0
  labelled = set(a["nodes"][0].argmax(-1)[a["mask"][0] > 0].tolist())
  assert labelled.isdisjoint(np.flatnonzero(ev["mask"][0]).tolist())
  # The configs' split (club, 2 per class, split_seed 0): the nodes their docstrings name.
  club = graphs.GraphData(graph_config(graph_labels="club", split_seed=0), 0, SHARDING)
  np.testing.assert_array_equal(np.flatnonzero(club.graphs[0].masks["train"]),
                                [11, 16, 20, 22])


@pytest.mark.parametrize("override, message", [
    ({"graph": "karate"}, "data.graph='karate' is unknown; data.name='graphs' has "
                          "['karate_club']"),
    ({"graph_labels": "faction"}, "data.graph_labels='faction' is unknown for karate_club"),
    ({"train_per_class": 17}, "data.train_per_class=17 leaves no test node of class 0"),
    ({"train_per_class": 0}, "data.train_per_class=0 must be >= 1"),
    ({"eval_split": "val"}, "data.eval_split='val': data.name='graphs' has node splits"),
    ({"max_nodes": 30}, "a graph of 34 nodes and 156 edges does not fit data.max_nodes=30"),
])
def test_parity_bad_graph_data_is_a_one_line_error(override, message):
  with pytest.raises(DataError) as e:
    graphs.GraphData(graph_config(**override), 0, SHARDING)
  assert str(e.value).startswith(message) and "\n" not in str(e.value)


@pytest.mark.parametrize("model, message", [
    (GAT(num_classes=2, heads=0), "heads=0 must be >= 1"),
    (GAT(num_classes=2, attention_dropout=1.0), "attention_dropout=1.0 must be in [0, 1)"),
    (GCN(num_classes=2, hidden=(16, 0)), "layer widths (16, 0, 2)"),
])
def test_parity_bad_model_arguments_are_value_errors(model, message):
  """setup.build shows a model's ValueError as one line: "model 'gat': <message>"."""
  x, senders, receivers, edge_mask = fixture_graph()
  with pytest.raises(ValueError, match=re.escape(message)):
    model.init(jax.random.PRNGKey(0), x, senders, receivers, edge_mask)


CONFIGS = ("karate_gcn", "karate_gat")


@pytest.fixture(scope="module")
def launched(tmp_path_factory):
  """Per config, three main.py launches, two at a time: the runlocal run to the end
  (checkpoints at steps 10 and 20); then a copy without its last checkpoint rerun, which
  must resume from step 10 and end on the same numbers and parameters; and --mode=eval on
  the first run's workdir."""
  root = tmp_path_factory.mktemp("karate")
  dirs = {n: (str(root / n / "ref"), str(root / n / "copy")) for n in CONFIGS}
  arg = {n: f"--config=configs/{n}.py:runlocal" for n in CONFIGS}
  with concurrent.futures.ThreadPoolExecutor(2) as pool:
    full = {n: pool.submit(run_main, arg[n], f"--workdir={dirs[n][0]}") for n in CONFIGS}
    full = {n: f.result() for n, f in full.items()}
    for ref, copy in dirs.values():
      shutil.copytree(ref, copy)
      shutil.rmtree(os.path.join(copy, "checkpoints", "20"))
    resumed = {n: pool.submit(run_main, arg[n], f"--workdir={dirs[n][1]}") for n in CONFIGS}
    evals = {n: pool.submit(run_main, arg[n], f"--workdir={dirs[n][0]}", "--mode=eval")
             for n in CONFIGS}
    return {n: (full[n], resumed[n].result(), evals[n].result(), *dirs[n]) for n in CONFIGS}


@pytest.mark.parametrize("name", CONFIGS)
def test_parity_karate_configs_train_resume_and_eval(name, launched):
  full, resumed, evaluated, ref, copy = launched[name]
  result = last_json(full.stdout)
  assert result["step"] == 20 and result["split"] == "test", result
  assert result["num_examples"] == 30, result   # the 34 nodes less 2 labelled per class
  assert np.isfinite(result["loss"]) and 0.0 <= result["accuracy"] <= 1.0
  assert "resumed from checkpoint at step 10" in resumed.stderr
  assert last_json(resumed.stdout) == result
  assert_same_arrays(saved_state(copy, 20), saved_state(ref, 20))
  # --mode=eval restores step 20 and scores the same test nodes to the same numbers.
  assert last_json(evaluated.stdout) == {**result, "mode": "eval"}

"""Node classification: a graph -> logits per node, scored on the nodes of the split.

    config.task.name = "node_classification"     # data.name = "graphs" (input_pipeline/graphs.py)
    logits_BxNxC = model(nodes, senders, receivers, edge_mask)   # models/gnn.py

Cross-entropy and accuracy are means over the nodes with mask 1: the labelled nodes in
train batches, the held-out ones in eval batches; padded nodes and graphs have mask 0.
An example is a graph (examples_per_sec counts graphs).
"""

import jax.numpy as jnp
import numpy as np
import optax

from train_lib.errors import UserError
from train_lib.tasks import register
from train_lib.tasks.base import MEAN, Task, entropy_of, mean, permute_where, uniform_loss

GRAPH = ("nodes", "senders", "receivers", "edge_mask")   # the model's inputs, in order


@register("node_classification")
class NodeClassification(Task):
  metrics = {"loss": MEAN, "accuracy": MEAN}
  console = ("accuracy",)

  def __init__(self, config, data, model):
    super().__init__(config, data, model)
    if not getattr(data, "num_node_features", None) or not data.num_classes:
      raise UserError(f"data.name={data.config.name!r} is not a graph dataset with node "
                      "labels; task 'node_classification' needs one (data.name='graphs')")
    self.num_classes = data.num_classes

  def init_inputs(self, batch):
    return tuple(batch[k] for k in GRAPH), {}

  def loss(self, apply, batch, rng, *, train, group=None):
    labels_BxN, mask_BxN = batch["label"], batch["mask"]
    logits_BxNxC = apply(*(batch[k] for k in GRAPH)).astype(jnp.float32)
    loss_BxN = optax.softmax_cross_entropy_with_integer_labels(logits_BxNxC, labels_BxN)
    count = mask_BxN.sum()
    total = (loss_BxN * mask_BxN).sum()
    correct = ((logits_BxNxC.argmax(-1) == labels_BxN) * mask_BxN).sum()
    return total / jnp.maximum(count, 1.0), {"loss": mean(total, count),
                                              "accuracy": mean(correct, count)}

  def initial_loss(self):
    return uniform_loss(self.num_classes)

  def _scored(self, host_batch):
    return np.asarray(host_batch["label"])[np.asarray(host_batch["mask"]) > 0]

  def input_free_loss(self, host_batch):
    return entropy_of(self._scored(host_batch), self.num_classes)

  def targets(self, host_batch):
    return "label", self._scored(host_batch), self.num_classes

  def shuffle_targets(self, batch, rng):
    """The labels permuted among the scored (mask 1) nodes of the whole batch."""
    return {**batch, "label": permute_where(rng, batch["label"], batch["mask"])}

  def check_output(self, output, batch) -> str:
    want = (*batch["label"].shape, self.num_classes)
    got = getattr(output, "shape", None)
    return "" if tuple(got or ()) == want else \
        f"output {got}, the task needs logits per node of shape {want}"

  def examples(self, host_batch):
    """Each graph's adjacency matrix (a white pixel per edge sender -> receiver, in the
    batch's node order) as an image, for sanity's data plot."""
    senders, receivers, edge_mask = (np.asarray(host_batch[k])
                                     for k in ("senders", "receivers", "edge_mask"))
    B, N = np.asarray(host_batch["label"]).shape
    adjacency_BxNxNx1 = np.zeros((B, N, N, 1), np.float32)
    for b in range(min(B, 32)):
      np.add.at(adjacency_BxNxNx1[b, :, :, 0], (senders[b], receivers[b]), edge_mask[b])
    return {"images": adjacency_BxNxNx1[:32], "labels": None}

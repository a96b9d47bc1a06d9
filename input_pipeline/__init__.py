"""Data: TFDS catalogue -> grain -> globally sharded jax.Array batches.

    data = input_pipeline.build(config.data, seed=config.seed, sharding=batch_sharding)
    batch = data.next_train()          # images: {"image", "label"}; text: {"tokens", "mask"}
    for batch in data.eval_batches():  # every eval example once; padding has mask 0
      ...
    state = data.train_iter.get_state()  # goes into the checkpoint

A data source is a file here that registers a Data class under its names
(`@register("shakespeare")`), or user code named "package.module:Name".

The order of training examples depends only on the seed, never on the number of
processes or devices: global batch i holds the same examples however it is split.
"""

import plugins
from input_pipeline import images
from input_pipeline.base import REGISTRY, Data, DataError, register  # noqa: F401
from input_pipeline.images import open_source, read_batch  # noqa: F401

REGISTRY.fallback = images.catalogue   # any other name: a prepared TFDS dataset


def build(config, *, seed: int, sharding, eval_sharding=None) -> Data:
  """config.data.name: a registered source, "tfds:NAME" (a TFDS text dataset),
  "package.module:Name" or "path/file.py:Name"."""
  try:
    source = REGISTRY.resolve(config.name)
  except plugins.PluginError as e:
    raise DataError(str(e)) from None
  return source(config, seed, sharding, eval_sharding)

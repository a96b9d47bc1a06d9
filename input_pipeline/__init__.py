"""Data: TFDS catalogue -> grain -> globally sharded jax.Array batches.

    data = input_pipeline.build(config.data, seed=config.seed, sharding=batch_sharding)
    batch = data.next_train()          # images: {"image", "label"}; text: {"tokens", "mask"}
    for batch in data.eval_batches():  # every eval example once; padding has mask 0
      ...
    state = data.train_iter.get_state()  # goes into the checkpoint

The order of training examples depends only on the seed, never on the number of
processes or devices: global batch i holds the same examples however it is split.
"""

from input_pipeline import images, text
from input_pipeline.base import Data, DataError  # noqa: F401
from input_pipeline.images import open_source, read_batch  # noqa: F401

TEXT_DATASETS = ("shakespeare", "text", "synthetic_tokens")


def build(config, *, seed: int, sharding, eval_sharding=None) -> Data:
  if config.name in TEXT_DATASETS:
    return text.TextData(config, seed, sharding, eval_sharding)
  return images.ImageData(config, images.open_source(config, seed), seed, sharding,
                          eval_sharding)

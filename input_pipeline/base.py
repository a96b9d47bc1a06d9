"""What every dataset's loader shares: batches by global index, grain threads and
prefetch, a checkpointable iterator, and the step from numpy to global jax.Arrays.

A subclass sets `num_train`, `num_eval`, `local_batch`, `local_eval_batch` and
implements `train_batch(j)` and `eval_batch(j)`: this process's rows of global batch j.
"""

import math
import os
import sys

import grain
import jax
import numpy as np
from array_record.python import array_record_module
from jax.experimental import multihost_utils

import plugins


class DataError(ValueError):
  """A dataset that cannot be read; the message says where the files should be."""


# config.data.name -> a Data class or function (config, seed, sharding, eval_sharding) -> Data.
# A name nobody registered is looked up in the TFDS catalogue (images.catalogue).
REGISTRY = plugins.Registry("data source", "input_pipeline")
register = REGISTRY.register


def tfds_dir(config) -> str:
  return os.path.expanduser(
      config.tfds_dir or os.environ.get("TFDS_DATA_DIR", "~/tensorflow_datasets"))


def prepare(builder):
  """Prepares a local builder once (process 0), then every process reads it."""
  if builder.is_prepared():
    return builder.as_data_source()
  import tensorflow_datasets as tfds
  if jax.process_index() == 0:
    tfds.disable_progress_bar()
    try:
      builder.download_and_prepare()
    except AssertionError as e:  # TFDS asserts that every split yields examples
      raise DataError(f"{builder.name}: {e}") from None
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(f"prepared {builder.name}")
    if jax.process_index() > 0:  # this builder still describes the unprepared folder
      builder = tfds.builder_from_directory(builder.data_dir)
  return builder.as_data_source()


def open_split(splits, split: str, name: str):
  """splits[split], once it is known to exist, to have every ArrayRecord shard present and
  readable, and to be non-empty; otherwise a one-line DataError that names the file."""
  if split not in splits:
    raise DataError(f"dataset {name!r} has no split {split!r}; it has {sorted(splits)}")
  source = splits[split]
  info = getattr(source, "dataset_info", None)
  for path in (info.splits[split].filepaths if info is not None else []):
    check_shard(os.fspath(path), name)
  if len(source) == 0:
    raise DataError(f"split {split!r} of dataset {name!r} is empty")
  return source


def check_shard(path: str, name: str):
  fix = (f"prepare dataset {name!r} again: delete {os.path.dirname(path)} and rerun "
         "(built-in datasets rebuild themselves) or run `tfds build`")
  if not os.path.isfile(path):
    raise DataError(f"ArrayRecord shard {path} is missing; {fix}")
  reader = array_record_module.ArrayRecordReader(path)
  ok = reader.ok()
  try:
    reader.close()
  except RuntimeError:  # raised for a file without its footer
    ok = False
  if not ok:
    raise DataError(f"ArrayRecord shard {path} is truncated or corrupt; {fix}")


def local_size(global_size, nproc, name):
  if global_size % nproc:
    raise DataError(f"data.{name}={global_size} is not divisible by the "
                    f"{nproc} processes; make it a multiple of {nproc}")
  return global_size // nproc


def epoch_positions(seed, positions, size, cache):
  """Indices into a split for stream `positions`: every epoch is a fresh seeded
  permutation of range(size)."""
  epochs = positions // size
  indices = np.empty(len(positions), np.int64)
  for epoch in np.unique(epochs):
    epoch = int(epoch)
    if epoch not in cache:
      for old in [e for e in cache if e < epoch - 1]:
        del cache[old]
      cache[epoch] = np.random.default_rng((seed, epoch)).permutation(size)
    sel = epochs == epoch
    indices[sel] = cache[epoch][positions[sel] % size]
  return indices


class Data:
  num_classes = None
  vocab_size = None
  seq_len = None

  def __init__(self, config, seed: int, sharding, eval_sharding=None):
    self.config, self.seed, self.sharding = config, seed, sharding
    self.eval_sharding = eval_sharding or sharding
    nproc = jax.process_count()
    self.local_batch = local_size(config.batch_size, nproc, "batch_size")
    self.local_eval_batch = local_size(config.eval_batch_size, nproc, "eval_batch_size")

  def start(self):
    """Builds the train iterator; call once the subclass is set up."""
    batches = grain.MapDataset.range(0, sys.maxsize // self.config.batch_size)
    self.train_iter = iter(batches.map(self.train_batch).to_iter_dataset(self._read_options()))

  def _read_options(self):
    return grain.ReadOptions(num_threads=self.config.worker_threads,
                             prefetch_buffer_size=self.config.prefetch)

  def local_positions(self, j: int, global_size: int, local_size: int):
    """Stream positions of this process's rows of global batch j."""
    first = j * global_size + jax.process_index() * local_size
    return np.arange(first, first + local_size)

  def eval_count(self) -> int:
    """How many masked-in items (examples, or target tokens) one full eval counts."""
    return self.num_eval

  @property
  def num_eval_batches(self):
    return math.ceil(self.num_eval / self.config.eval_batch_size)

  def to_global(self, local_batch, sharding=None):
    sharding = sharding or self.sharding
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x),
                        local_batch)

  def next_train(self):
    return self.to_global(next(self.train_iter))

  def eval_batches(self, split: str = "eval", limit: int = 0):
    """Every example of the eval split exactly once; the last global batch is padded
    (mask 0). split="train": the train split the same way, in order and unaugmented
    (for evaluators such as a linear probe), where the loader offers it; `limit` > 0
    stops after that many examples."""
    if split == "eval":
      count, read = self.num_eval, self.eval_batch
    elif split == "train" and hasattr(self, "ordered_train_batch"):
      count, read = self.num_train, self.ordered_train_batch
    else:
      raise DataError(f"data {self.config.name!r} cannot read its {split!r} split in order")
    count = min(count, limit) if limit else count
    num = math.ceil(count / self.config.eval_batch_size)
    ds = grain.MapDataset.range(0, num).map(lambda j: read(j, count))
    for batch in ds.to_iter_dataset(self._read_options()):
      yield self.to_global(batch, self.eval_sharding)

  def dummy_batch(self):
    """A one-row batch of zeros with the shapes and dtypes of a train batch."""
    return jax.tree.map(lambda x: np.zeros((1, *x.shape[1:]), x.dtype), self.train_batch(0))

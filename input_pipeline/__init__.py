"""Data: TFDS catalogue -> grain -> globally sharded jax.Array batches.

    data = input_pipeline.build(config.data, seed=config.seed, sharding=batch_sharding)
    batch = data.next_train()        # {"image": f32[B,H,W,C], "label": i32[B]}, sharded
    for batch in data.eval_batches():  # every test example once; padding has mask 0
      ...
    state = data.train_iter.get_state()  # goes into the checkpoint

The order of training examples depends only on the seed, never on the number of
processes or devices: global batch i holds the same examples however it is split.
"""

import dataclasses
import math
import os
import sys
from typing import Any

import grain
import jax
import numpy as np

from input_pipeline import builders


class DataError(ValueError):
  """A dataset that cannot be read; the message says where the files should be."""


class SyntheticSource:
  """Random images and labels, a pure function of the index: for benchmarks."""

  def __init__(self, shape, num_classes, size, seed):
    self.shape, self.num_classes, self.size, self.seed = tuple(shape), num_classes, size, seed

  def __len__(self):
    return self.size

  def __getitem__(self, i):
    rng = np.random.default_rng((self.seed, int(i)))
    return {"image": rng.integers(0, 256, self.shape, dtype=np.uint8),
            "label": int(rng.integers(self.num_classes))}


@dataclasses.dataclass
class Source:
  train: Any
  eval: Any
  num_classes: int
  example_shape: tuple


def tfds_dir(config) -> str:
  return os.path.expanduser(
      config.tfds_dir or os.environ.get("TFDS_DATA_DIR", "~/tensorflow_datasets"))


def _prepare(builder):
  """Prepares a local builder once (process 0), then every process reads it."""
  if jax.process_index() == 0 and not builder.is_prepared():
    import tensorflow_datasets as tfds
    tfds.disable_progress_bar()
    builder.download_and_prepare()
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices(f"prepared {builder.name}")
  return builder.as_data_source()


def open_source(config, seed: int = 0) -> Source:
  """Opens config.name's train and eval splits as random-access sources."""
  import tensorflow_datasets as tfds
  name, data_dir = config.name, tfds_dir(config)
  try:
    os.makedirs(data_dir, exist_ok=True)
  except OSError as e:
    raise DataError(f"cannot create TFDS directory {data_dir}: {e.strerror}; "
                    "set --config.data.tfds_dir to a writable folder") from None
  if name == "synthetic":
    make = lambda size, s: SyntheticSource(config.synthetic_shape, config.synthetic_classes,
                                           size, s)
    return Source(make(50_000, seed), make(10_000, seed + 1), config.synthetic_classes,
                  tuple(config.synthetic_shape))
  if name == "digits":
    splits = _prepare(builders.Digits(data_dir=data_dir, file_format="array_record"))
  elif name == "fashion_mnist" and not _catalogue_prepared(name, data_dir):
    source_dir = config.source_dir or builders.FASHION_MNIST_DIR
    missing = builders.missing_fashion_mnist_files(source_dir)
    if missing:
      raise DataError(
          f"Fashion-MNIST IDX file {missing[0]} not found ({len(missing)} of 4 missing): "
          f"install Debian's dataset-fashion-mnist, or put the 4 files from "
          f"github.com/zalandoresearch/fashion-mnist in {source_dir} "
          f"(or set --config.data.source_dir)")
    builder = builders.FashionMnistIdx(source_dir=source_dir, data_dir=data_dir,
                                       file_format="array_record")
    try:
      splits = _prepare(builder)
    except ValueError as e:
      raise DataError(f"cannot prepare Fashion-MNIST from {source_dir}: {e}") from None
  else:
    try:
      builder = tfds.builder(name, data_dir=data_dir, file_format="array_record")
    except Exception as e:  # unknown name, or a name TFDS cannot load
      raise DataError(f"unknown dataset {name!r} ({type(e).__name__}); use digits, "
                      "fashion_mnist, synthetic or a prepared TFDS name") from None
    if not _catalogue_prepared(name, data_dir):
      raise DataError(f"dataset {name!r} is not prepared in {data_dir}; run "
                      f"`tfds build {name} --file_format=array_record --data_dir={data_dir}` "
                      "on a machine with internet access and copy the folder here")
    splits = builder.as_data_source()
  for split in (config.train_split, config.eval_split):
    if split not in splits:
      raise DataError(f"dataset {name!r} has no split {split!r}; it has {sorted(splits)}")
    if len(splits[split]) == 0:
      raise DataError(f"split {split!r} of dataset {name!r} is empty")
  train, eval_ = splits[config.train_split], splits[config.eval_split]
  example = train[0]
  info_features = getattr(getattr(train, "dataset_info", None), "features", None)
  num_classes = info_features["label"].num_classes if info_features else 10
  return Source(train, eval_, num_classes, tuple(np.asarray(example["image"]).shape))


def _catalogue_prepared(name, data_dir) -> bool:
  import glob
  import tensorflow_datasets as tfds
  if not glob.glob(os.path.join(data_dir, name.split(":")[0], "*", "dataset_info.json")):
    return False
  try:
    builder = tfds.builder(name, data_dir=data_dir, file_format="array_record")
  except Exception:
    return False
  return builder.is_prepared() and builder.info.file_format is not None and \
      builder.info.file_format.value == "array_record"


def _normalizer(train_source, num=2048):
  """Per-channel mean and std from a fixed, evenly spaced sample of training images."""
  step = max(1, len(train_source) // num)
  sample = np.stack([np.asarray(train_source[i]["image"], np.float32)
                     for i in range(0, len(train_source), step)][:num])
  axes = tuple(range(sample.ndim - 1))
  return sample.mean(axes), sample.std(axes) + 1e-6


class Data:
  """Train iterator and eval batches for one process, as global jax.Arrays."""

  def __init__(self, config, source: Source, seed: int, sharding, eval_sharding=None):
    self.config, self.source, self.sharding = config, source, sharding
    self.eval_sharding = eval_sharding or sharding
    self.num_classes, self.example_shape = source.num_classes, source.example_shape
    self.num_train, self.num_eval = len(source.train), len(source.eval)
    self.mean, self.std = _normalizer(source.train)
    pid, nproc = jax.process_index(), jax.process_count()
    self.local_batch = _local_size(config.batch_size, nproc, "batch_size")
    self.local_eval_batch = _local_size(config.eval_batch_size, nproc, "eval_batch_size")

    # Global stream: shuffle (reshuffled every epoch), repeat, augment per example.
    stream = grain.MapDataset.source(source.train).shuffle(seed=seed).repeat(None)
    stream = stream.random_map(self._train_example, seed=seed + 1)
    G, L = config.batch_size, self.local_batch
    local = grain.MapDataset.range(0, sys.maxsize // G).map(
        lambda j: stream[(j // L) * G + pid * L + j % L])
    self.train_iter = iter(local.batch(L, drop_remainder=True).to_iter_dataset(
        grain.ReadOptions(num_threads=config.worker_threads,
                          prefetch_buffer_size=config.prefetch)))

  def _normalize(self, image):
    return ((np.asarray(image, np.float32) - self.mean) / self.std).astype(np.float32)

  def _train_example(self, ex, rng: np.random.Generator):
    image = np.asarray(ex["image"])
    pad = self.config.random_crop
    if pad:
      h, w = image.shape[:2]
      padded = np.pad(image, ((pad, pad), (pad, pad), (0, 0)))
      dy, dx = rng.integers(0, 2 * pad + 1, size=2)
      image = padded[dy:dy + h, dx:dx + w]
    if self.config.random_flip and rng.random() < 0.5:
      image = image[:, ::-1]
    return {"image": self._normalize(image), "label": np.int32(ex["label"])}

  def _eval_example(self, index):
    if index < self.num_eval:
      ex = self.source.eval[index]
      return {"image": self._normalize(ex["image"]), "label": np.int32(ex["label"]),
              "mask": np.float32(1)}
    return {"image": np.zeros(self.example_shape, np.float32), "label": np.int32(0),
            "mask": np.float32(0)}

  def to_global(self, local_batch, sharding=None):
    sharding = sharding or self.sharding
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x),
                        local_batch)

  def next_train(self):
    return self.to_global(next(self.train_iter))

  def eval_batches(self):
    """Every eval example exactly once; the last global batch is padded (mask 0)."""
    G, L, pid = self.config.eval_batch_size, self.local_eval_batch, jax.process_index()
    num_batches = math.ceil(self.num_eval / G)
    ds = grain.MapDataset.range(0, num_batches * L).map(
        lambda j: self._eval_example((j // L) * G + pid * L + j % L))
    ds = ds.batch(L).to_iter_dataset(grain.ReadOptions(
        num_threads=self.config.worker_threads, prefetch_buffer_size=self.config.prefetch))
    for batch in ds:
      yield self.to_global(batch, self.eval_sharding)


def _local_size(global_size, nproc, name):
  if global_size % nproc:
    raise DataError(f"data.{name}={global_size} is not divisible by the "
                    f"{nproc} processes; make it a multiple of {nproc}")
  return global_size // nproc


def build(config, *, seed: int, sharding, eval_sharding=None) -> Data:
  return Data(config, open_source(config, seed), seed, sharding, eval_sharding)

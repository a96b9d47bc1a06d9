"""Image classification data: TFDS splits -> whole-batch reads -> augmentation.

    data = ImageData(config.data, open_source(config.data), seed, sharding)
    batch = data.next_train()   # {"image": f32[B,H,W,C] normalised, "label": i32[B]}
"""

import dataclasses
import glob
import hashlib
import os
import tempfile
import zipfile
from typing import Any

import jax
import numpy as np

from input_pipeline import builders
from input_pipeline.base import Data, DataError, epoch_positions, open_split, prepare, register
from input_pipeline.base import tfds_dir


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
    splits = prepare(builders.Digits(data_dir=data_dir, file_format="array_record"))
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
      splits = prepare(builder)
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
  train, eval_ = (open_split(splits, split, name)
                  for split in (config.train_split, config.eval_split))
  example = train[0]
  info_features = getattr(getattr(train, "dataset_info", None), "features", None)
  num_classes = info_features["label"].num_classes if info_features else 10
  return Source(train, eval_, num_classes, tuple(np.asarray(example["image"]).shape))


def _catalogue_prepared(name, data_dir) -> bool:
  import tensorflow_datasets as tfds  # slow to import; only catalogue datasets need it
  if not glob.glob(os.path.join(data_dir, name.split(":")[0], "*", "dataset_info.json")):
    return False
  try:
    builder = tfds.builder(name, data_dir=data_dir, file_format="array_record")
  except Exception:
    return False
  return builder.is_prepared() and builder.info.file_format is not None and \
      builder.info.file_format.value == "array_record"


def read_batch(source, indices) -> dict:
  """Examples `indices` of a source as a dict of stacked numpy arrays."""
  if isinstance(source, ArraySource):
    return {k: v[indices] for k, v in source.arrays.items()}
  getitems = getattr(source, "__getitems__", None)
  records = getitems(list(indices)) if getitems else [source[int(i)] for i in indices]
  return {k: np.stack([np.asarray(r[k]) for r in records]) for k in ("image", "label")}


class ArraySource:
  """A split held in memory as numpy arrays: batches are one fancy-index away."""

  def __init__(self, arrays):
    self.arrays = arrays

  def __len__(self):
    return len(self.arrays["label"])

  def __getitem__(self, i):
    return {k: v[i] for k, v in self.arrays.items()}


def maybe_cache(source, max_mb: int, chunk: int = 4096):
  """Reads a split into memory once when it fits in `max_mb` (0 = never). A TFDS split's
  arrays are also kept in a file beside its shards (see _array_file), so that the next
  launch loads them at once rather than decoding every record again (Fashion-MNIST: 9 s)."""
  if isinstance(source, SyntheticSource) or max_mb <= 0:
    return source
  first = source[0]
  nbytes = sum(np.asarray(v).nbytes for v in first.values()) * len(source)
  if nbytes > max_mb * 2**20:
    return source
  path = _array_file(source)
  if path and os.path.isfile(path) and not os.path.islink(path):
    try:
      with np.load(path, allow_pickle=False) as f:
        arrays = {k: f[k] for k in ("image", "label")}
      if all(len(v) == len(source) for v in arrays.values()):
        return ArraySource(arrays)
    except (OSError, ValueError, KeyError, zipfile.BadZipFile):
      pass      # torn or foreign: decode the records again and rewrite it
  parts = [read_batch(source, range(i, min(i + chunk, len(source))))
           for i in range(0, len(source), chunk)]
  arrays = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
  if path:
    try:
      fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), suffix=".tmp")
    except OSError:             # a read-only dataset folder: decode each launch
      return ArraySource(arrays)
    try:
      with os.fdopen(fd, "wb") as f:
        np.savez(f, **arrays)
      os.replace(tmp, path)     # whole or absent, whichever process writes it
      prefix = os.path.basename(path).rsplit("-", 1)[0]
      for old in glob.glob(os.path.join(glob.escape(os.path.dirname(path)), prefix + "-*.npz")):
        if old != path:          # the same split's file for shards since rebuilt
          os.remove(old)
    except OSError:
      pass
    finally:
      if os.path.exists(tmp):
        os.remove(tmp)
  return ArraySource(arrays)


def _array_file(source):
  """The arrays' file for a TFDS split: beside its ArrayRecord shards, named by the split
  and then by the shards' paths, sizes and modification times (a rebuilt dataset gets a new
  one, which replaces the old); None for other sources."""
  info, split = getattr(source, "dataset_info", None), getattr(source, "split", None)
  if info is None or split is None:
    return None
  try:
    files = [os.fspath(p) for p in info.splits[split].filepaths]
    stats = [(p, os.stat(p).st_size, os.stat(p).st_mtime_ns) for p in files]
  except (OSError, KeyError, ValueError):
    return None
  if not files:
    return None
  digest = lambda x: hashlib.sha256(repr(x).encode()).hexdigest()
  name = f"whetstone-arrays-{digest(str(split))[:8]}-{digest((str(split), stats))[:20]}.npz"
  return os.path.join(os.path.dirname(files[0]), name)


def _normalizer(train_source, num=2048):
  """Per-channel mean and std from a fixed, evenly spaced sample of training images."""
  step = max(1, len(train_source) // num)
  sample = read_batch(train_source, np.arange(0, len(train_source), step)[:num])["image"]
  sample = sample.astype(np.float32)
  axes = tuple(range(sample.ndim - 1))
  return sample.mean(axes), sample.std(axes) + 1e-6


class ImageData(Data):
  """Train iterator and eval batches for one process, as global jax.Arrays.

  Work is done a batch at a time (one read, vectorised augmentation) in grain's
  threads. Global batch j holds positions j*G .. j*G+G-1 of an endless stream
  that visits every training example once per epoch in a seeded order; process p
  takes its slice of rows. Its augmentation draws come from (seed, j), so the
  data is the same whatever the number of processes.
  """

  def __init__(self, config, source: Source, seed: int, sharding, eval_sharding=None):
    super().__init__(config, seed, sharding, eval_sharding)
    self.num_classes, self.example_shape = source.num_classes, source.example_shape
    self.train_source = maybe_cache(source.train, config.cache_mb)
    self.eval_source = maybe_cache(source.eval, config.cache_mb)
    self.num_train, self.num_eval = len(self.train_source), len(self.eval_source)
    self.mean, self.std = _normalizer(self.train_source)
    self._orders = {}
    self.start()

  def _normalize(self, images):
    return ((images.astype(np.float32) - self.mean) / self.std).astype(np.float32)

  def train_batch(self, j: int) -> dict:
    """This process's rows of global batch j, as numpy arrays."""
    positions = self.local_positions(j, self.config.batch_size, self.local_batch)
    indices = epoch_positions(self.seed, positions, self.num_train, self._orders)
    batch = read_batch(self.train_source, indices)
    images = self._augment(batch["image"], j)
    return {"image": self._normalize(images), "label": batch["label"].astype(np.int32)}

  def _augment(self, images, j: int):
    pad, flip = self.config.random_crop, self.config.random_flip
    if not pad and not flip:
      return images
    G, L = self.config.batch_size, self.local_batch
    rows = slice(jax.process_index() * L, (jax.process_index() + 1) * L)
    rng = np.random.default_rng((self.seed, 1, j))
    offsets = rng.integers(0, 2 * pad + 1, size=(G, 2))[rows]
    flips = (rng.random(G) < 0.5)[rows]
    if pad:
      h, w = images.shape[1:3]
      padded = np.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
      images = np.stack([padded[i, dy:dy + h, dx:dx + w] for i, (dy, dx) in enumerate(offsets)])
    if flip:
      images = np.where(flips[:, None, None, None], images[:, :, ::-1], images)
    return images

  def eval_batch(self, j: int, count: int = 0) -> dict:
    """This process's rows of eval batch j; rows past the end are padding with mask 0."""
    return self._ordered_batch(self.eval_source, j, count or self.num_eval)

  def ordered_train_batch(self, j: int, count: int = 0) -> dict:
    """Batch j of the train split in its stored order, unaugmented, padded like eval."""
    return self._ordered_batch(self.train_source, j, count or self.num_train)

  def _ordered_batch(self, source, j: int, count: int) -> dict:
    positions = self.local_positions(j, self.config.eval_batch_size, self.local_eval_batch)
    valid = positions < count
    batch = read_batch(source, np.where(valid, positions, 0))
    return {"image": self._normalize(batch["image"]),
            "label": np.where(valid, batch["label"], 0).astype(np.int32),
            "mask": valid.astype(np.float32)}


@register("digits")
@register("fashion_mnist")
@register("synthetic")
def catalogue(config, seed: int, sharding, eval_sharding=None) -> ImageData:
  """An image dataset by name: digits, fashion_mnist, synthetic or a prepared TFDS name."""
  return ImageData(config, open_source(config, seed), seed, sharding, eval_sharding)

"""JPEG image classification from ArrayRecord shards: decode, random-resized crop, flip and
normalise, a whole batch per task, in grain worker processes (or threads).

    python tools/jpeg_records.py --out=/data/fmnist224 --fashion_mnist   # or --folder=IMAGES
    python main.py --config=configs/jpeg_resnet50.py --config.data.source_dir=/data/fmnist224

A records folder (tools/jpeg_records.py writes one) holds `records.json`, which names each
split's shards, its example count, the classes and the channels, and the shards themselves:
ArrayRecord files whose every record is one example, the label as 4 little-endian bytes then
the JPEG file's bytes. The folder is read as untrusted input: records.json is JSON, a shard
must be a plain file inside the folder (no links, no paths), and a record that does not
decode names its shard and index.

Training images: Inception-style random-resized crop (area `data.crop_scale` of the image,
aspect ratio 3/4..4/3, torchvision's ten tries then a centre crop) to data.image_size, a
horizontal flip when data.random_flip. Held-out images: the centre crop of fraction
data.eval_crop, resized to image_size (224 from 256). JPEG's DCT scaling decodes at 1/2,
1/4 or 1/8 size when the crop allows. Every random draw comes from (seed, global batch,
row), so the batches are the same for any number of workers or processes. Train batches
travel as uint8 pixels (a quarter of float32's bytes through shared memory and to the
device) and are normalised on the device, by per-channel statistics of a fixed sample of
training images; train_batch / eval_batch give the same float32 values on the host.
data.worker_processes > 0 prepares train batches in that many processes (grain's
mp_prefetch), else in data.worker_threads threads; both are checkpointed with the run.
"""

import functools
import io
import json
import math
import os
import struct
import sys
import threading
import time

import grain
import jax
import numpy as np
from array_record.python import array_record_module
from PIL import Image

from input_pipeline.base import Data, DataError, check_shard, epoch_positions, register

INFO = "records.json"
FORMAT = "whetstone-jpeg-records"
RATIO = (3 / 4, 4 / 3)


def encode(label: int, jpeg: bytes) -> bytes:
  return struct.pack("<i", int(label)) + jpeg


def read_info(folder: str) -> dict:
  """records.json of a records folder, checked; a DataError names what is wrong."""
  if not folder:
    raise DataError("data.name='jpeg' needs data.source_dir: a folder written by "
                    "tools/jpeg_records.py")
  path = os.path.join(folder, INFO)
  if not os.path.isfile(path):
    raise DataError(f"{path} not found: data.source_dir must be a folder written by "
                    "tools/jpeg_records.py")
  try:
    with open(path) as f:
      info = json.load(f)
  except (OSError, ValueError) as e:
    raise DataError(f"{path} is not readable JSON ({type(e).__name__}); write the folder "
                    "again with tools/jpeg_records.py") from None
  if not isinstance(info, dict) or info.get("format") != FORMAT:
    raise DataError(f"{path} is not a {FORMAT} file; write the folder with "
                    "tools/jpeg_records.py")
  return info


def split_paths(folder: str, info: dict, split: str) -> tuple:
  """(shard paths, example count) of a split; every shard a plain file in the folder."""
  splits = info.get("splits", {})
  if split not in splits:
    raise DataError(f"records in {folder} have no split {split!r}; they have "
                    f"{sorted(splits)}")
  paths = []
  for name in splits[split]["shards"]:
    path = os.path.join(folder, name)
    if os.path.basename(name) != name or name in ("", ".", "..") or os.path.islink(path):
      raise DataError(f"{os.path.join(folder, INFO)} names shard {name!r}, which is not a "
                      "plain file in the folder; write the folder again")
    check_shard(path, f"jpeg records {folder}")
    paths.append(path)
  readers = [array_record_module.ArrayRecordReader(p) for p in paths]
  count = sum(r.num_records() for r in readers)
  for r in readers:
    r.close()
  if count != splits[split]["examples"] or count == 0:
    raise DataError(f"split {split!r} in {folder} holds {count} records where {INFO} says "
                    f"{splits[split]['examples']}; write the folder again")
  return paths, count


def crop_box(rng, width: int, height: int, scale) -> tuple:
  """torchvision's RandomResizedCrop box (x, y, w, h): ten tries at a random area and
  log-uniform aspect ratio, then the centre crop of the ratio clamped to RATIO."""
  area = width * height
  for _ in range(10):
    target = area * rng.uniform(*scale)
    ratio = math.exp(rng.uniform(math.log(RATIO[0]), math.log(RATIO[1])))
    w, h = round(math.sqrt(target * ratio)), round(math.sqrt(target / ratio))
    if 0 < w <= width and 0 < h <= height:
      return int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1)), w, h
  ratio = width / height
  if ratio < RATIO[0]:
    w, h = width, round(width / RATIO[0])
  elif ratio > RATIO[1]:
    w, h = round(height * RATIO[1]), height
  else:
    w, h = width, height
  return (width - w) // 2, (height - h) // 2, w, h


def centre_box(width: int, height: int, fraction: float) -> tuple:
  """The centred square of side fraction x the shorter side (224 of 256)."""
  side = max(1, round(min(width, height) * fraction))
  return (width - side) // 2, (height - side) // 2, side, side


class Batches:
  """Reads and transforms whole batches of one split. Picklable and free of jax device
  state (it runs in grain's worker processes); opens its shards on first use."""

  def __init__(self, paths, count, *, num_classes, seed, size, channels, scale, eval_crop,
               flip, global_batch, local_batch, process_index):
    self.paths, self.count, self.num_classes = paths, count, num_classes
    self.seed, self.size, self.channels = seed, size, channels
    self.scale, self.eval_crop, self.flip = tuple(scale), eval_crop, flip
    self.global_batch, self.local_batch, self.process_index = global_batch, local_batch, process_index
    self._source, self._orders = None, {}

  def __getstate__(self):
    return {**self.__dict__, "_source": None, "_orders": {}}

  @property
  def source(self):
    if self._source is None:
      self._source = grain.sources.ArrayRecordDataSource(self.paths)
    return self._source

  def image(self, index: int, rng=None) -> tuple:
    """(label, uint8 [size, size, channels]) of record `index`; rng: train augmentation,
    else the held-out centre crop."""
    record = self.source[int(index)]
    label = struct.unpack("<i", record[:4])[0]
    if not 0 <= label < self.num_classes:
      raise DataError(f"record {index} of {self.paths} has label {label}, outside 0.."
                      f"{self.num_classes - 1}; write the folder again with tools/jpeg_records.py")
    mode = "RGB" if self.channels == 3 else "L"
    try:
      img = Image.open(io.BytesIO(record[4:]))
      if img.format != "JPEG":
        raise ValueError(f"a {img.format} image, not a JPEG")
      width, height = img.size
      x, y, w, h = (crop_box(rng, width, height, self.scale) if rng is not None
                    else centre_box(width, height, self.eval_crop))
      img.draft(mode, (math.ceil(width * self.size / w), math.ceil(height * self.size / h)))
      fx, fy = width / img.size[0], height / img.size[1]
      img = img.convert(mode).resize((self.size, self.size), Image.BILINEAR,
                                     box=(x / fx, y / fy, (x + w) / fx, (y + h) / fy))
    except (OSError, ValueError, SyntaxError) as e:
      raise DataError(f"record {index} of {self.paths} does not decode as a JPEG: {e}; "
                      "write the folder again with tools/jpeg_records.py") from None
    pixels = np.asarray(img, np.uint8).reshape(self.size, self.size, self.channels)
    if rng is not None and self.flip and rng.random() < 0.5:
      pixels = pixels[:, ::-1]
    return label, pixels

  def _stack(self, indices, rngs) -> dict:
    images = np.empty((len(indices), self.size, self.size, self.channels), np.uint8)
    labels = np.empty(len(indices), np.int32)
    for r, (i, rng) in enumerate(zip(indices, rngs)):
      labels[r], images[r] = self.image(i, rng)
    return {"image": images, "label": labels}

  def train(self, j: int) -> dict:
    """This process's rows of global batch j (uint8 pixels): a seeded permutation per
    epoch."""
    first = j * self.global_batch + self.process_index * self.local_batch
    rows = np.arange(first, first + self.local_batch)
    indices = epoch_positions(self.seed, rows, self.count, self._orders)
    rngs = [np.random.default_rng((self.seed, 2, j, int(row) - j * self.global_batch))
            for row in rows]
    return self._stack(indices, rngs)

  __call__ = train

  def ordered(self, j: int, count: int, eval_batch: int, local_eval_batch: int) -> dict:
    """Batch j of the split in stored order, centre-cropped (uint8 pixels); rows past
    `count` are padding (mask 0)."""
    first = j * eval_batch + self.process_index * local_eval_batch
    positions = np.arange(first, first + local_eval_batch)
    valid = positions < count
    batch = self._stack(np.where(valid, positions, 0), [None] * len(positions))
    batch["label"] = np.where(valid, batch["label"], 0).astype(np.int32)
    batch["mask"] = valid.astype(np.float32)
    return batch


class Position(grain.DatasetIterator):
  """The train iterator as checkpoints see it, {"next_index": batches read}, whatever the
  number of workers (so a run resumes with another data.worker_processes); set_state
  starts a fresh iterator at that batch."""

  def __init__(self, batches_from):
    super().__init__()
    self._batches_from, self._next = batches_from, 0
    self._iter = batches_from(0)

  def __iter__(self):
    return self

  def __next__(self):
    batch = next(self._iter)
    self._next += 1
    return batch

  def get_state(self) -> dict:
    return {"next_index": self._next}

  def set_state(self, state: dict):
    self.close()
    self._next = int(state["next_index"])
    self._iter = self._batches_from(self._next)

  def close(self):   # the worker processes end
    getattr(self._iter, "close", lambda: None)()


def _die_with(parent: int, worker_index: int, worker_count: int):
  """In a worker: exit within a second of the training process's end, even by kill -9,
  rather than live on as an orphan holding memory. (Linux's parent-death signal would fire
  when the thread that started the worker ends, and grain starts them from a pool.)"""
  del worker_index, worker_count

  def watch():
    while os.getppid() == parent:
      time.sleep(1.0)
    os._exit(1)

  threading.Thread(target=watch, daemon=True, name="die-with-parent").start()


@register("jpeg")
class JpegData(Data):
  """data.source_dir: a records folder; data.image_size, crop_scale, eval_crop,
  random_flip, worker_processes (0: data.worker_threads threads)."""

  def __init__(self, config, seed: int, sharding, eval_sharding=None):
    super().__init__(config, seed, sharding, eval_sharding)
    folder = os.path.expanduser(config.source_dir)
    info = read_info(folder)
    self.num_classes = int(info["num_classes"])
    channels = int(info.get("channels", 3))
    if channels not in (1, 3):
      raise DataError(f"{os.path.join(folder, INFO)} says channels={channels}; use 1 or 3")
    scale = tuple(config.crop_scale)
    if not (len(scale) == 2 and 0 < scale[0] <= scale[1] <= 1):
      raise DataError(f"data.crop_scale={scale} must be (low, high) with 0 < low <= high <= 1")
    if not 0 < config.eval_crop <= 1 or config.image_size < 1:
      raise DataError("data.eval_crop must be in (0, 1] and data.image_size >= 1")
    common = dict(num_classes=self.num_classes, seed=seed, size=config.image_size,
                  channels=channels, scale=scale, eval_crop=config.eval_crop,
                  flip=config.random_flip, global_batch=config.batch_size,
                  local_batch=self.local_batch, process_index=jax.process_index())
    self.train_reader = Batches(*split_paths(folder, info, config.train_split), **common)
    self.eval_reader = Batches(*split_paths(folder, info, config.eval_split), **common)
    self.mean, self.std = self._statistics(self.train_reader)
    inverse = np.float32(1) / self.std   # a product by constants: the same bits on the host
    # one formula for numpy arrays (train_batch, eval_batch) and, jitted, the device
    self._normalise = lambda x: (x.astype(np.float32) - self.mean) * inverse
    self._device_normalise = jax.jit(self._normalise)
    self.num_train, self.num_eval = self.train_reader.count, self.eval_reader.count
    self.example_shape = (config.image_size, config.image_size, channels)
    self.start()

  @staticmethod
  def _statistics(reader, num: int = 512):
    """Per-channel mean and std (0..255 units) of the centre crops of an evenly spaced
    sample of training images."""
    step = max(1, reader.count // num)
    pixels = np.stack([reader.image(i)[1] for i in range(0, reader.count, step)[:num]])
    pixels = pixels.astype(np.float32)
    return pixels.mean((0, 1, 2)), pixels.std((0, 1, 2)) + np.float32(1e-6)

  def start(self):
    self.train_iter = Position(self._batches_from)

  def _batches_from(self, first: int):
    """An iterator of train batches first, first + 1, ... in threads or worker processes."""
    batches = grain.MapDataset.range(first, sys.maxsize // self.config.batch_size)
    workers = self.config.worker_processes
    if workers <= 0:
      return iter(batches.map(self.train_reader).to_iter_dataset(self._read_options()))
    from absl import flags
    if not flags.FLAGS.is_parsed():   # grain's workers read absl flags (main.py parses them)
      flags.FLAGS.mark_as_parsed()
    # Each worker prepares whole batches with one thread; grain keeps their order.
    return iter(batches.map(self.train_reader).to_iter_dataset(
        grain.ReadOptions(num_threads=1, prefetch_buffer_size=1)).mp_prefetch(
            grain.MultiprocessingOptions(num_workers=workers,
                                         per_worker_buffer_size=max(1, self.config.prefetch)),
            worker_init_fn=functools.partial(_die_with, os.getpid())))

  def to_global(self, local_batch, sharding=None):
    """The train stream's uint8 pixels are normalised here, on the device."""
    batch = super().to_global(local_batch, sharding)
    if batch["image"].dtype == np.uint8:
      batch["image"] = self._device_normalise(batch["image"])
    return batch

  def _host(self, batch: dict) -> dict:
    return {**batch, "image": self._normalise(batch["image"])}

  def train_batch(self, j: int) -> dict:
    return self._host(self.train_reader.train(j))

  def eval_batch(self, j: int, count: int = 0) -> dict:
    return self._host(self.eval_reader.ordered(j, count or self.num_eval,
                                               self.config.eval_batch_size, self.local_eval_batch))

  def ordered_train_batch(self, j: int, count: int = 0) -> dict:
    return self._host(self.train_reader.ordered(j, count or self.num_train,
                                                self.config.eval_batch_size, self.local_eval_batch))

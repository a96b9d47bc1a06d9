"""Input pipeline: builders, splits, determinism, eval coverage, iterator state."""

import gzip

import jax
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

import input_pipeline
from configs import base
from input_pipeline import builders


def data_config(tfds_dir, **kw):
  config = base.get_config().data
  config.tfds_dir = tfds_dir
  config.update(kw)
  return config


def one_device_sharding():
  mesh = jax.make_mesh((1,), ("data",), devices=jax.devices()[:1])
  return NamedSharding(mesh, P("data"))


def build(tfds_dir, seed=0, **kw):
  return input_pipeline.build(data_config(tfds_dir, **kw), seed=seed,
                              sharding=one_device_sharding())


def test_digits_split_is_fixed_and_disjoint(tfds_dir):
  source = input_pipeline.open_source(data_config(tfds_dir))
  assert (len(source.train), len(source.eval)) == (1438, 359)
  assert source.num_classes == 10 and source.example_shape == (8, 8, 1)
  train = {np.asarray(source.train[i]["image"]).tobytes() for i in range(len(source.train))}
  test = [np.asarray(source.eval[i]["image"]).tobytes() for i in range(len(source.eval))]
  # sklearn's digits hold a few exact duplicates; the split is by example, not by pixels.
  assert sum(t in train for t in test) < 10


def test_train_batches_are_seeded_and_normalised(tfds_dir):
  a, b, c = build(tfds_dir, 0), build(tfds_dir, 0), build(tfds_dir, 1)
  xa, xb, xc = (np.asarray(d.next_train()["image"]) for d in (a, b, c))
  assert xa.shape == (64, 8, 8, 1) and xa.dtype == np.float32
  np.testing.assert_array_equal(xa, xb)
  assert not np.array_equal(xa, xc)
  many = np.concatenate([np.asarray(a.next_train()["image"]) for _ in range(20)])
  assert abs(many.mean()) < 0.1 and abs(many.std() - 1) < 0.1


def test_epochs_cover_the_train_split_and_reshuffle(tfds_dir):
  data = build(tfds_dir, batch_size=2, eval_batch_size=2)
  n = data.num_train
  labels = [np.asarray(data.next_train()["label"]) for _ in range(n)]
  first, second = np.concatenate(labels[: n // 2]), np.concatenate(labels[n // 2:])
  truth = np.bincount([int(data.train_source[i]["label"]) for i in range(n)], minlength=10)
  np.testing.assert_array_equal(np.bincount(first, minlength=10), truth)
  np.testing.assert_array_equal(np.bincount(second, minlength=10), truth)
  assert not np.array_equal(first, second)


def test_iterator_state_resumes_exactly(tfds_dir):
  data = build(tfds_dir, random_crop=1, random_flip=True)
  for _ in range(3):
    data.next_train()
  state = data.train_iter.get_state()
  expected = [np.asarray(data.next_train()["image"]) for _ in range(2)]
  fresh = build(tfds_dir, random_crop=1, random_flip=True)
  fresh.train_iter.set_state(state)
  for want in expected:
    np.testing.assert_array_equal(np.asarray(fresh.next_train()["image"]), want)


def test_eval_covers_every_example_once_with_padding(tfds_dir):
  data = build(tfds_dir, eval_batch_size=100)
  batches = list(data.eval_batches())
  assert len(batches) == 4                      # 359 examples -> 3 full + 1 padded
  mask = np.concatenate([np.asarray(b["mask"]) for b in batches])
  assert mask.sum() == 359 and mask[:359].all() and not mask[359:].any()
  labels = np.concatenate([np.asarray(b["label"]) for b in batches])[:359]
  truth = [int(data.eval_source[i]["label"]) for i in range(359)]
  np.testing.assert_array_equal(labels, truth)


def test_augmentation_keeps_shape_and_changes_pixels(tfds_dir):
  plain, augmented = build(tfds_dir), build(tfds_dir, random_crop=2, random_flip=True)
  x, y = np.asarray(plain.next_train()["image"]), np.asarray(augmented.next_train()["image"])
  assert x.shape == y.shape and not np.array_equal(x, y)


def test_synthetic_source_is_deterministic(tfds_dir):
  data = build(tfds_dir, name="synthetic", synthetic_shape=(4, 4, 3), synthetic_classes=5)
  assert data.num_classes == 5 and data.example_shape == (4, 4, 3)
  again = build(tfds_dir, name="synthetic", synthetic_shape=(4, 4, 3), synthetic_classes=5)
  np.testing.assert_array_equal(np.asarray(data.next_train()["label"]),
                                np.asarray(again.next_train()["label"]))


def write_idx(path, array):
  header = bytes([0, 0, 8, array.ndim]) + b"".join(
      int(d).to_bytes(4, "big") for d in array.shape)
  with gzip.open(path, "wb") as f:
    f.write(header + array.astype(np.uint8).tobytes())


def test_fashion_mnist_prepares_from_local_idx_files(tmp_path):
  rng = np.random.default_rng(0)
  src = tmp_path / "idx"
  src.mkdir()
  for split, n in (("train", 30), ("test", 10)):
    images_file, labels_file = builders.FASHION_MNIST_FILES[split]
    write_idx(src / images_file, rng.integers(0, 256, (n, 28, 28)))
    write_idx(src / labels_file, np.arange(n) % 10)
  source = input_pipeline.open_source(data_config(str(tmp_path / "tfds"),
                                                  name="fashion_mnist", source_dir=str(src)))
  assert (len(source.train), len(source.eval)) == (30, 10)
  assert source.example_shape == (28, 28, 1)
  labels = sorted(int(source.eval[i]["label"]) for i in range(10))
  assert labels == list(range(10))


def test_truncated_idx_file_is_named(tmp_path):
  path = str(tmp_path / "x.gz")
  write_idx(path, np.zeros((3, 2, 2)))
  with gzip.open(path, "rb") as f:
    data = f.read()
  with gzip.open(path, "wb") as f:
    f.write(data[:-3])
  with pytest.raises(ValueError, match="truncated"):
    builders.read_idx(path)


def test_missing_files_and_unknown_datasets_fail_fast(tmp_path):
  with pytest.raises(input_pipeline.DataError, match="dataset-fashion-mnist"):
    input_pipeline.open_source(data_config(str(tmp_path), name="fashion_mnist",
                                           source_dir=str(tmp_path / "none")))
  with pytest.raises(input_pipeline.DataError, match="not prepared"):
    input_pipeline.open_source(data_config(str(tmp_path), name="mnist"))
  with pytest.raises(input_pipeline.DataError, match="no split 'validation'"):
    input_pipeline.open_source(data_config(str(tmp_path), eval_split="validation"))


def test_real_fashion_mnist(tfds_dir):
  source = input_pipeline.open_source(data_config(tfds_dir, name="fashion_mnist"))
  assert (len(source.train), len(source.eval)) == (60_000, 10_000)
  counts = np.bincount([int(source.eval[i]["label"]) for i in range(0, 10_000, 10)])
  assert len(counts) == 10 and counts.min() > 50


def test_cached_and_streamed_reads_give_the_same_batches(tfds_dir):
  cached = build(tfds_dir, random_crop=2, random_flip=True)
  streamed = build(tfds_dir, random_crop=2, random_flip=True, cache_mb=0)
  assert type(cached.train_source).__name__ == "ArraySource"
  assert type(streamed.train_source).__name__ != "ArraySource"
  for _ in range(3):
    a, b = cached.next_train(), streamed.next_train()
    np.testing.assert_array_equal(np.asarray(a["image"]), np.asarray(b["image"]))
    np.testing.assert_array_equal(np.asarray(a["label"]), np.asarray(b["label"]))


def test_a_split_read_once_loads_from_its_array_file(tmp_path, monkeypatch):
  """The next launch loads a split's arrays from the file beside its shards; a torn file or
  a rebuilt shard decodes the records again."""
  import glob
  import os
  from input_pipeline import images
  config = data_config(str(tmp_path))
  first = images.open_source(config)
  want = images.maybe_cache(first.train, 64).arrays
  files = glob.glob(str(tmp_path / "**" / "whetstone-arrays-*.npz"), recursive=True)
  assert len(files) == 1
  decoded, real = [], images.read_batch
  monkeypatch.setattr(images, "read_batch", lambda *a: decoded.append(1) or real(*a))
  again = images.maybe_cache(images.open_source(config).train, 64).arrays
  assert not decoded
  for k in want:
    np.testing.assert_array_equal(again[k], want[k])
  with open(files[0], "r+b") as f:
    f.truncate(100)
  torn = images.maybe_cache(images.open_source(config).train, 64).arrays
  assert decoded and all(np.array_equal(torn[k], want[k]) for k in want)
  shard = images.open_source(config).train.dataset_info.splits["train"].filepaths[0]
  images.maybe_cache(images.open_source(config).eval, 64)
  os.utime(shard, ns=(1, 1))          # a rebuilt dataset: another file replaces the old one
  decoded.clear()
  images.maybe_cache(images.open_source(config).train, 64)
  assert decoded
  now = glob.glob(str(tmp_path / "**" / "whetstone-arrays-*.npz"), recursive=True)
  assert len(now) == 2 and files[0] not in now    # the new train file and the eval split's
  assert images.maybe_cache(first.eval, 0) is first.eval      # cache_mb=0: never read


def test_batch_rows_do_not_depend_on_the_number_of_processes(tfds_dir, monkeypatch):
  """Process p of P gets rows p*B/P.. of the same global batch, augmentation included."""
  whole = build(tfds_dir, random_crop=2, random_flip=True).train_batch(5)
  halves = []
  for pid in range(2):
    monkeypatch.setattr(jax, "process_count", lambda: 2)
    monkeypatch.setattr(jax, "process_index", lambda pid=pid: pid)
    halves.append(build(tfds_dir, random_crop=2, random_flip=True).train_batch(5))
  monkeypatch.undo()
  for key in ("image", "label"):
    np.testing.assert_array_equal(np.concatenate([h[key] for h in halves]), whole[key])

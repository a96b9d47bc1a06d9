"""TFDS builders for the offline datasets, written as ArrayRecord without TensorFlow.

    builder = Digits(data_dir=tfds_dir, file_format="array_record")
    builder.download_and_prepare()
    source = builder.as_data_source()["train"]   # random access: source[i] -> dict

Digits and FashionMnistIdx store `image` as uint8 HxWx1 and `label` as a ClassLabel;
TextFiles stores each file's `bytes`. All are LocalBuilders: preparing one prints one line
of ours on stderr ("preparing text corpus shakespeare from 42 files (5.33 MB) in ...") in
place of TFDS's "Downloading and preparing dataset Unknown size ..." on stdout, where
results go; nothing is downloaded.
"""

import gzip
import os
import sys

import numpy as np
import tensorflow_datasets as tfds

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
FASHION_MNIST_CLASSES = ["t-shirt_top", "trouser", "pullover", "dress", "coat",
                         "sandal", "shirt", "sneaker", "bag", "ankle_boot"]


def _megabytes(paths) -> str:
  return f"{sum(os.path.getsize(p) for p in paths) / 1e6:,.2f} MB"


class LocalBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """A builder of local data. TFDS's DatasetBuilder.download_and_prepare prints its
  "Downloading and preparing ..." and "... downloaded and prepared" lines through the two
  hooks overridden here; we print `describe()` once instead."""

  def describe(self) -> str:
    """What is prepared from where, e.g. "text corpus NAME from N files (X MB) in DIR"."""
    raise NotImplementedError

  def _log_download_bytes(self):
    print(f"preparing {self.describe()} -> {self.data_dir}", file=sys.stderr, flush=True)

  def _log_download_done(self):
    pass


def _features(shape):
  return tfds.features.FeaturesDict({
      "image": tfds.features.Tensor(shape=shape, dtype=np.uint8),
      "label": tfds.features.ClassLabel(num_classes=10),
  })


class Digits(LocalBuilder, skip_registration=True):
  """scikit-learn's 1,797 8x8 digits; a fixed seeded 80/20 train/test split."""
  name = "whetstone_digits"
  VERSION = tfds.core.Version("1.0.0")
  TEST_FRACTION = 0.2
  SPLIT_SEED = 0

  def describe(self) -> str:
    return "scikit-learn's digits (1,797 8x8 images)"

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, features=_features((8, 8, 1)),
                                 supervised_keys=("image", "label"))

  def _split_generators(self, dl_manager):
    from sklearn.datasets import load_digits
    digits = load_digits()
    order = np.random.RandomState(self.SPLIT_SEED).permutation(len(digits.target))
    num_test = int(round(len(order) * self.TEST_FRACTION))
    # sklearn's pixels are 0..16; scale to the usual 0..255 range.
    images = np.clip(digits.images * 16, 0, 255).astype(np.uint8)[..., None]
    return {"train": self._generate_examples(images, digits.target, order[num_test:]),
            "test": self._generate_examples(images, digits.target, order[:num_test])}

  def _generate_examples(self, images, labels, indices):
    for i in indices:
      yield int(i), {"image": images[i], "label": int(labels[i])}


def read_idx(path):
  """Reads one (optionally gzipped) IDX file into a numpy array."""
  opener = gzip.open if path.endswith(".gz") else open
  with opener(path, "rb") as f:
    data = f.read()
  if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
    raise ValueError(f"{path} is not an unsigned-byte IDX file")
  ndim = data[3]
  dims = np.frombuffer(data, ">u4", count=ndim, offset=4).astype(int)
  expected = 4 + 4 * ndim + int(np.prod(dims))
  if len(data) != expected:
    raise ValueError(f"{path} is truncated: {len(data)} bytes, expected {expected}")
  return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(dims)


def missing_fashion_mnist_files(source_dir):
  return [os.path.join(source_dir, f) for pair in FASHION_MNIST_FILES.values()
          for f in pair if not os.path.isfile(os.path.join(source_dir, f))]


class FashionMnistIdx(LocalBuilder, skip_registration=True):
  """Fashion-MNIST (Xiao et al., 2017) prepared from local IDX files."""
  name = "whetstone_fashion_mnist"
  VERSION = tfds.core.Version("1.0.0")

  def __init__(self, *, source_dir=FASHION_MNIST_DIR, **kwargs):
    self._source_dir = source_dir
    super().__init__(**kwargs)

  def describe(self) -> str:
    files = [os.path.join(self._source_dir, f) for pair in FASHION_MNIST_FILES.values()
             for f in pair]
    return f"Fashion-MNIST from 4 IDX files ({_megabytes(files)}) in {self._source_dir}"

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, features=_features((28, 28, 1)),
                                 supervised_keys=("image", "label"))

  def _split_generators(self, dl_manager):
    return {split: self._generate_examples(*files)
            for split, files in FASHION_MNIST_FILES.items()}

  def _generate_examples(self, images_file, labels_file):
    images = read_idx(os.path.join(self._source_dir, images_file))
    labels = read_idx(os.path.join(self._source_dir, labels_file))
    if len(images) != len(labels):
      raise ValueError(f"{images_file} has {len(images)} images but {labels_file} "
                       f"has {len(labels)} labels")
    for i, (image, label) in enumerate(zip(images, labels)):
      yield i, {"image": image[..., None], "label": int(label)}


class TextFilesConfig(tfds.core.BuilderConfig):
  """A corpus: its name (the folder under whetstone_text/) and its files."""

  def __init__(self, *, files, holdout_fraction=0.1, **kwargs):
    super().__init__(**kwargs)
    self.files, self.holdout_fraction = tuple(files), holdout_fraction


class TextFiles(LocalBuilder, skip_registration=True):
  """Plain-text files (.txt or .txt.gz) as bytes. Each file is one document; its first
  (1 - holdout_fraction) of bytes goes to `train`, the rest to `validation`."""
  name = "whetstone_text"
  VERSION = tfds.core.Version("1.0.0")

  def describe(self) -> str:
    files = self.builder_config.files
    folder = os.path.commonpath([os.path.dirname(os.path.abspath(f)) for f in files])
    return (f"text corpus {self.builder_config.name} from {len(files)} file"
            f"{'s' * (len(files) != 1)} ({_megabytes(files)}) in {folder}")

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
        "bytes": tfds.features.Tensor(shape=(None,), dtype=np.uint8)}))

  def _split_generators(self, dl_manager):
    return {"train": self._generate_examples(True), "validation": self._generate_examples(False)}

  def _generate_examples(self, train):
    for i, path in enumerate(self.builder_config.files):
      data = read_text_file(path)
      cut = int(len(data) * (1 - self.builder_config.holdout_fraction))
      part = data[:cut] if train else data[cut:]
      yield i, {"bytes": np.frombuffer(part, np.uint8)}


def read_text_file(path) -> bytes:
  opener = gzip.open if path.endswith(".gz") else open
  with opener(path, "rb") as f:
    return f.read()

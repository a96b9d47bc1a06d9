"""Test set-up: 8 fake CPU devices (set before jax is imported) and one shared
TFDS directory for the session, so each dataset is prepared once."""

import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.join(REPO, "tests"))

from helpers import xla_flags  # noqa: E402

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + xla_flags(8)).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pytest  # noqa: E402

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"


@pytest.fixture(scope="session")
def tfds_dir(tmp_path_factory):
  path = str(tmp_path_factory.mktemp("tfds"))
  os.environ["TFDS_DATA_DIR"] = path
  return path


@pytest.fixture(scope="session")
def jpeg_dir(tmp_path_factory):
  """A small JPEG records folder from Fashion-MNIST (tools/jpeg_records.py): 512 images a
  split, 64x64 RGB."""
  from tools import jpeg_records
  path = str(tmp_path_factory.mktemp("jpeg"))
  splits, classes = jpeg_records.fashion_mnist(FASHION_MNIST_DIR, 64, 3, 90, 512)
  jpeg_records.write(path, splits, classes, 3, 256)
  return path

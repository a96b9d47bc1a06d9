"""Writes a JPEG records folder for data.name="jpeg" (input_pipeline/jpeg.py).

    python tools/jpeg_records.py --out=/data/fmnist256 --fashion_mnist   # 256x256 RGB JPEGs
    python tools/jpeg_records.py --out=/data/imagenet --folder=/data/raw/imagenet
    python tools/jpeg_records.py --out=/tmp/small --fashion_mnist --size=64 --limit=2000

--fashion_mnist: the IDX files (--source_dir, default Debian's dataset-fashion-mnist),
each image upscaled bilinearly to --size, as RGB (--channels=3) or grey, JPEG quality
--quality; splits train and test. --folder: FOLDER/SPLIT/CLASS/IMAGE, ImageNet's layout
(classes sorted by name; the same classes in every split); JPEG files are stored as they
are, other image files re-encoded; links are not followed. Shards of about --shard_mb
each; records.json is written last, so a folder without one is incomplete.
"""

import argparse
import io
import json
import os
import sys

import numpy as np
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from array_record.python import array_record_module  # noqa: E402

from input_pipeline import builders, jpeg  # noqa: E402


def fashion_mnist(source_dir, size, channels, quality, limit):
  """{split: iterator of (label, jpeg bytes)}, and the class names."""
  missing = builders.missing_fashion_mnist_files(source_dir)
  if missing:
    raise SystemExit(f"Fashion-MNIST IDX file {missing[0]} not found: install Debian's "
                     "dataset-fashion-mnist or pass --source_dir")

  def examples(images_file, labels_file):
    images = builders.read_idx(os.path.join(source_dir, images_file))
    labels = builders.read_idx(os.path.join(source_dir, labels_file))
    for image, label in zip(images[:limit or None], labels[:limit or None]):
      img = Image.fromarray(image).resize((size, size), Image.BILINEAR)
      out = io.BytesIO()
      img.convert("RGB" if channels == 3 else "L").save(out, "JPEG", quality=quality)
      yield int(label), out.getvalue()

  return ({split: examples(*files) for split, files in builders.FASHION_MNIST_FILES.items()},
          builders.FASHION_MNIST_CLASSES)


def image_folder(folder, channels, quality, limit):
  """{split: iterator of (label, jpeg bytes)} of FOLDER/SPLIT/CLASS/IMAGE, and the classes."""
  splits = _subfolders(folder)
  if not splits:
    raise SystemExit(f"{folder} has no split folders; expected FOLDER/SPLIT/CLASS/IMAGE")
  classes = _subfolders(os.path.join(folder, splits[0]))
  for split in splits[1:]:
    if _subfolders(os.path.join(folder, split)) != classes:
      raise SystemExit(f"{os.path.join(folder, split)} has other classes than "
                       f"{os.path.join(folder, splits[0])}; every split needs the same")

  def examples(split):
    files = [(label, os.path.join(folder, split, c, f)) for label, c in enumerate(classes)
             for f in sorted(os.listdir(os.path.join(folder, split, c)))]
    files = [(label, p) for label, p in files if os.path.isfile(p) and not os.path.islink(p)]
    rng = np.random.default_rng(0)   # shards hold the classes mixed, in a fixed order
    for i in rng.permutation(len(files))[:limit or None]:
      label, path = files[i]
      with open(path, "rb") as f:
        data = f.read()
      try:
        img = Image.open(io.BytesIO(data))
        if img.format != "JPEG" or img.mode not in ("RGB", "L"):
          out = io.BytesIO()
          img.convert("RGB" if channels == 3 else "L").save(out, "JPEG", quality=quality)
          data = out.getvalue()
      except (OSError, ValueError, SyntaxError) as e:
        raise SystemExit(f"{path} is not a readable image ({e}); remove it") from None
      yield label, data

  return {split: examples(split) for split in splits}, classes


def _subfolders(path):
  """The sorted names of the folders in `path` that are not links."""
  return sorted(d for d in os.listdir(path) if os.path.isdir(os.path.join(path, d))
                and not os.path.islink(os.path.join(path, d)))


def write(out, splits, classes, channels, shard_mb):
  """Writes each split's shards, then records.json."""
  os.makedirs(out, exist_ok=True)
  if os.path.exists(os.path.join(out, jpeg.INFO)):
    os.remove(os.path.join(out, jpeg.INFO))   # the folder is incomplete until the end
  info = {"format": jpeg.FORMAT, "num_classes": len(classes), "classes": list(classes),
          "channels": channels, "splits": {}}
  for split, examples in splits.items():
    shards, count, writer, size = [], 0, None, 0
    for label, data in examples:
      if writer is None or size > shard_mb * 2**20:
        if writer is not None:
          writer.close()
        shards.append(f"{split}-{len(shards):05d}.array_record")
        writer = array_record_module.ArrayRecordWriter(os.path.join(out, shards[-1]),
                                                       "group_size:1")
        size = 0
      writer.write(jpeg.encode(label, data))
      count, size = count + 1, size + len(data) + 4
    if writer is not None:
      writer.close()
    info["splits"][split] = {"shards": shards, "examples": count}
    print(f"{split}: {count:,} images in {len(shards)} shards", flush=True)
  with open(os.path.join(out, jpeg.INFO), "w") as f:
    json.dump(info, f, indent=1)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--out", required=True)
  source = parser.add_mutually_exclusive_group(required=True)
  source.add_argument("--fashion_mnist", action="store_true")
  source.add_argument("--folder")
  parser.add_argument("--source_dir", default=builders.FASHION_MNIST_DIR)
  parser.add_argument("--size", type=int, default=256)
  parser.add_argument("--channels", type=int, default=3, choices=(1, 3))
  parser.add_argument("--quality", type=int, default=90)
  parser.add_argument("--limit", type=int, default=0, help="at most this many per split")
  parser.add_argument("--shard_mb", type=float, default=256)
  args = parser.parse_args()
  if args.fashion_mnist:
    splits, classes = fashion_mnist(args.source_dir, args.size, args.channels, args.quality,
                                    args.limit)
  else:
    splits, classes = image_folder(args.folder, args.channels, args.quality, args.limit)
  write(args.out, splits, classes, args.channels, args.shard_mb)


if __name__ == "__main__":
  main()

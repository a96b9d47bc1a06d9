"""data.name="jpeg" (input_pipeline/jpeg.py) on folders from tools/jpeg_records.py: the
same batches from threads and worker processes and after a resume, every held-out image
once with its own label, crops that follow torchvision's rule, DCT-scaled decoding that
matches a full decode, one-line errors for bad folders, and a run killed mid-way that
resumes to the same parameters. (--mode=sanity on configs/jpeg_resnet50.py is in
tests/test_sanity.py.)"""

import io
import json
import os

import jax
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P
from PIL import Image

import input_pipeline
from configs import base
from helpers import last_json, run_main
from input_pipeline import jpeg
from input_pipeline.base import DataError
from test_reliability import after_progress, assert_same_arrays, run_and_kill, saved_state
from tools import jpeg_records

GREYS = [15 + 25 * k for k in range(10)]   # label k: a flat image of this grey


def jpeg_bytes(pixels, fmt="JPEG"):
  out = io.BytesIO()
  Image.fromarray(pixels).save(out, fmt, quality=95)
  return out.getvalue()


def flat_examples(n, size=40, seed=0):
  """(label, JPEG) pairs whose image is a flat grey that names its label; varied shapes."""
  rng = np.random.default_rng(seed)
  for _ in range(n):
    k = int(rng.integers(10))
    h, w = int(rng.integers(size // 2, 2 * size)), int(rng.integers(size // 2, 2 * size))
    yield k, jpeg_bytes(np.full((h, w, 3), GREYS[k], np.uint8))


@pytest.fixture
def flat_dir(tmp_path):
  path = str(tmp_path / "flat")
  jpeg_records.write(path, {"train": flat_examples(150), "test": flat_examples(70, seed=1)},
                     [f"c{k}" for k in range(10)], 3, shard_mb=0.002)   # several shards
  return path


def data_config(folder, **overrides):
  config = base.get_config().data
  config.update(name="jpeg", source_dir=folder, image_size=24, batch_size=8,
                eval_batch_size=16, random_flip=True, worker_threads=2)
  config.update(**overrides)
  return config


def build(config, seed=0):
  mesh = jax.make_mesh((1,), ("data",))
  return input_pipeline.build(config, seed=seed, sharding=NamedSharding(mesh, P("data")))


def test_threads_processes_and_resume_give_the_same_batches(jpeg_dir):
  threads = build(data_config(jpeg_dir))
  want = [jax.device_get(threads.next_train()) for _ in range(5)]
  procs = build(data_config(jpeg_dir, worker_processes=2))
  got = [jax.device_get(procs.next_train()) for _ in range(2)]
  state = procs.train_iter.get_state()
  got += [jax.device_get(procs.next_train()) for _ in range(3)]
  for a, b in zip(want, got):
    np.testing.assert_array_equal(a["image"], b["image"])
    np.testing.assert_array_equal(a["label"], b["label"])
  assert state == {"next_index": 2}   # a global batch index, as checkpoints hold it
  procs.train_iter.set_state(state)
  np.testing.assert_array_equal(jax.device_get(procs.next_train())["image"], want[2]["image"])
  threads.train_iter.set_state({"next_index": 4})   # another worker count resumes the same
  np.testing.assert_array_equal(jax.device_get(threads.next_train())["image"], want[4]["image"])
  other_seed = jax.device_get(build(data_config(jpeg_dir), seed=1).next_train())
  assert not np.array_equal(other_seed["image"], want[0]["image"])
  images = np.concatenate([b["image"] for b in want])
  assert images.shape == (40, 24, 24, 3) and abs(images.mean()) < 0.5 < images.std()


def test_every_held_out_image_once_with_its_label(flat_dir):
  info = json.load(open(os.path.join(flat_dir, "records.json")))
  assert len(info["splits"]["train"]["shards"]) > 1
  data = build(data_config(flat_dir))
  assert (data.num_train, data.num_eval, data.num_classes) == (150, 70, 10)
  labels, greys = [], []
  for batch in data.eval_batches():
    batch = jax.device_get(batch)
    keep = batch["mask"] > 0
    labels += list(batch["label"][keep])
    pixels = batch["image"][keep] * data.std + data.mean
    greys += list(pixels.mean((1, 2, 3)))
  assert len(labels) == 70
  written = [k for k, _ in flat_examples(70, seed=1)]
  assert sorted(labels) == sorted(written)
  np.testing.assert_allclose(greys, [GREYS[k] for k in labels], atol=3)   # image <-> label
  train = jax.device_get(data.next_train())
  pixels = train["image"] * data.std + data.mean
  np.testing.assert_allclose(pixels.mean((1, 2, 3)), [GREYS[k] for k in train["label"]],
                             atol=3)


def test_train_pixels_travel_as_uint8_and_are_normalised_on_the_device(flat_dir):
  data = build(data_config(flat_dir))
  wire = next(data.train_iter)   # what worker processes send: a quarter of float32's bytes
  assert wire["image"].dtype == np.uint8 and wire["image"].shape == (8, 24, 24, 3)
  on_device = jax.device_get(data.to_global(wire))["image"]
  assert on_device.dtype == np.float32
  np.testing.assert_array_equal(on_device, data.train_batch(0)["image"])   # the same bits
  np.testing.assert_array_equal(jax.device_get(data.next_train())["image"],
                                data.train_batch(1)["image"])
  assert data.eval_batch(0)["image"].dtype == np.float32


@pytest.mark.parametrize("width, height", [(256, 256), (500, 100), (60, 400), (7, 5)])
def test_crop_box_follows_torchvision(width, height):
  rng = np.random.default_rng(0)
  for _ in range(300):
    x, y, w, h = jpeg.crop_box(rng, width, height, (0.08, 1.0))
    assert 0 <= x and x + w <= width and 0 <= y and y + h <= height and w > 0 and h > 0
    fallback = (x, y, w, h) == jpeg.crop_box(np.random.default_rng(1), width, height, (1, 1))
    if not fallback:   # the area share and aspect ratio drawn, up to rounding
      assert 0.08 * width * height - w - h <= w * h <= width * height
      assert 3 / 4 - 2 / h <= w / h <= 4 / 3 + 2 / h
  # no box of the whole area fits an aspect ratio in 3/4..4/3: the centre crop at 4/3
  assert jpeg.crop_box(rng, 500, 100, (1, 1)) == (183, 0, 133, 100)
  assert jpeg.centre_box(256, 300, 0.875) == (16, 38, 224, 224)


def test_scaled_decoding_matches_a_full_decode():
  """The DCT-scaled decode (draft) crops the same region as decoding every pixel."""
  yy, xx = np.mgrid[0:320, 0:480]
  pixels = np.stack([xx * 255 // 479, yy * 255 // 319, (xx + yy) % 256], -1).astype(np.uint8)
  batches = jpeg.Batches([], 1, num_classes=10, seed=0, size=32, channels=3, scale=(0.05, 0.3),
                         eval_crop=0.875, flip=False, global_batch=1, local_batch=1,
                         process_index=0)
  record = jpeg.encode(3, jpeg_bytes(pixels))
  batches._source = [record]
  for seed in range(8):
    label, got = batches.image(0, np.random.default_rng(seed))
    x, y, w, h = jpeg.crop_box(np.random.default_rng(seed), 480, 320, (0.05, 0.3))
    want = Image.open(io.BytesIO(record[4:])).convert("RGB").resize(
        (32, 32), Image.BILINEAR, box=(x, y, x + w, y + h))
    assert label == 3
    assert np.abs(got.astype(int) - np.asarray(want, int)).mean() < 4, seed
  label, centre = batches.image(0)
  x, y, w, h = jpeg.centre_box(480, 320, 0.875)
  want = Image.open(io.BytesIO(record[4:])).resize((32, 32), Image.BILINEAR,
                                                   box=(x, y, x + w, y + h))
  assert np.abs(centre.astype(int) - np.asarray(want, int)).mean() < 4


def test_bad_folders_fail_with_one_line(flat_dir, tmp_path):
  def error(folder, **overrides):
    with pytest.raises(DataError) as e:
      build(data_config(folder, **overrides))
    assert "\n" not in str(e.value)
    return str(e.value)

  assert "needs data.source_dir" in error("")
  assert "records.json not found" in error(str(tmp_path))
  info_path = os.path.join(flat_dir, "records.json")
  info = json.load(open(info_path))
  assert "have no split 'val'; they have ['test', 'train']" in error(flat_dir, eval_split="val")
  assert "crop_scale" in error(flat_dir, crop_scale=(0.5, 0.2))
  for shard in ("../outside.array_record", "/etc/passwd"):
    bad = json.loads(json.dumps(info))
    bad["splits"]["test"]["shards"][0] = shard
    json.dump(bad, open(info_path, "w"))
    assert "not a plain file in the folder" in error(flat_dir)
  bad = json.loads(json.dumps(info))
  bad["splits"]["test"]["examples"] += 1
  json.dump(bad, open(info_path, "w"))
  assert "holds 70 records where records.json says 71" in error(flat_dir)
  json.dump({"format": "other"}, open(info_path, "w"))
  assert "is not a whetstone-jpeg-records file" in error(flat_dir)

  png = str(tmp_path / "png")   # a record that is not a JPEG is named when it is read
  jpeg_records.write(png, {"train": [(1, jpeg_bytes(np.zeros((9, 9, 3), np.uint8), "PNG"))],
                           "test": [(1, jpeg_bytes(np.zeros((9, 9, 3), np.uint8)))]},
                     ["a", "b"], 3, 256)
  message = error(png)
  assert "record 0 of" in message and "does not decode as a JPEG" in message
  label = str(tmp_path / "label")   # a label outside the classes records.json names
  jpeg_records.write(label, {"train": [(2, jpeg_bytes(np.zeros((9, 9, 3), np.uint8)))],
                             "test": [(0, jpeg_bytes(np.zeros((9, 9, 3), np.uint8)))]},
                     ["a", "b"], 3, 256)
  assert "record 0 of" in error(label) and "has label 2, outside 0..1" in error(label)


def test_image_folder_layout_is_converted(tmp_path):
  """FOLDER/SPLIT/CLASS/IMAGE: JPEGs kept byte for byte, other formats re-encoded."""
  root = tmp_path / "raw"
  for split in ("train", "val"):
    for k, name in enumerate(("cat", "dog")):
      os.makedirs(root / split / name)
      (root / split / name / "a.jpg").write_bytes(jpeg_bytes(np.full((30, 20, 3), GREYS[k],
                                                                     np.uint8)))
      (root / split / name / "b.png").write_bytes(
          jpeg_bytes(np.full((20, 30, 3), GREYS[k], np.uint8), "PNG"))
  splits, classes = jpeg_records.image_folder(str(root), 3, 90, 0)
  assert classes == ["cat", "dog"] and sorted(splits) == ["train", "val"]
  jpeg_records.write(str(tmp_path / "out"), splits, classes, 3, 256)
  data = build(data_config(str(tmp_path / "out"), eval_split="val", eval_batch_size=4))
  batch = jax.device_get(next(data.eval_batches()))
  pixels = batch["image"] * data.std + data.mean
  np.testing.assert_allclose(pixels.mean((1, 2, 3)), [GREYS[k] for k in batch["label"]], atol=3)
  os.makedirs(root / "val" / "bird")
  with pytest.raises(SystemExit, match="other classes"):
    jpeg_records.image_folder(str(root), 3, 90, 0)


def test_resnet50_config_resumes_after_kill_with_worker_processes(tmp_path, jpeg_dir):
  def argv(workdir):
    return ["--config=configs/jpeg_resnet50.py:runlocal", f"--workdir={workdir}",
            f"--config.data.source_dir={jpeg_dir}", "--config.data.worker_processes=2",
            "--config.train.num_steps=20", "--config.train.log_every=5",
            "--config.train.checkpoint_every=10", "--config.train.eval_every=20"]
  ref, killed = str(tmp_path / "ref"), str(tmp_path / "killed")
  result = last_json(run_main(*argv(ref)).stdout)
  assert result["step"] == 20 and result["num_examples"] == 512 and np.isfinite(result["loss"])
  sealed = os.path.join(killed, "checkpoints", "10", "checksums.json")
  code, err, _ = run_and_kill(argv(killed), lambda lines, tmp: after_progress(3)(lines, tmp)
                              and os.path.exists(sealed), killed)
  assert code == -9, err[-2000:]
  resumed = run_main(*argv(killed))
  assert "resumed from checkpoint at step 10" in resumed.stderr
  assert last_json(resumed.stdout) == result
  assert_same_arrays(saved_state(killed, 20), saved_state(ref, 20))

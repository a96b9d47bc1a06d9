"""Input-pipeline throughput: batches/s and examples/s of the train iterator.

    python bench/input_pipeline.py [--dataset=fashion_mnist] [--batch_size=128] [--threads=4]

Compares, in one run, the in-memory path (the default for splits that fit in
data.cache_mb) with streaming batched reads from ArrayRecord (cache_mb=0).

    python bench/input_pipeline.py --jpeg=DIR --batch_size=256 --workers=4,8,16 --goal=5649

--jpeg: a records folder (tools/jpeg_records.py) read by data.name="jpeg": decode,
random-resized crop to --image_size, flip, normalise, in grain threads and then in worker
processes, each count of --workers; --goal (images/s, e.g. the ResNet-50 step's) adds the
ratio to it.
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
from jax.sharding import NamedSharding, PartitionSpec as P  # noqa: E402

import input_pipeline  # noqa: E402
from configs import base  # noqa: E402


def measure(config, seconds):
  mesh = jax.make_mesh((jax.device_count(),), ("data",))
  data = input_pipeline.build(config, seed=0, sharding=NamedSharding(mesh, P("data")))
  for _ in range(5):
    jax.block_until_ready(data.next_train())
  n, t0 = 0, time.perf_counter()
  while time.perf_counter() - t0 < seconds:
    jax.block_until_ready(data.next_train())
    n += 1
  return n / (time.perf_counter() - t0)


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--dataset", default="fashion_mnist")
  parser.add_argument("--batch_size", type=int, default=128)
  parser.add_argument("--threads", type=int, default=4)
  parser.add_argument("--seconds", type=float, default=5.0)
  parser.add_argument("--jpeg", default="", help="a JPEG records folder")
  parser.add_argument("--workers", default="4,8,16")
  parser.add_argument("--image_size", type=int, default=224)
  parser.add_argument("--goal", type=float, default=0.0)
  args = parser.parse_args()
  if args.jpeg:
    return jpeg_table(args)
  rows = []
  for label, cache_mb, crop, flip in [("in memory", 4096, 0, False),
                                      ("in memory + crop/flip", 4096, 2, True),
                                      ("streamed ArrayRecord", 0, 0, False),
                                      ("streamed + crop/flip", 0, 2, True)]:
    config = base.get_config().data
    config.update(name=args.dataset, batch_size=args.batch_size, cache_mb=cache_mb,
                  random_crop=crop, random_flip=flip, worker_threads=args.threads)
    bps = measure(config, args.seconds)
    rows.append((label, bps, bps * args.batch_size))
  print(f"\n{args.dataset}, batch {args.batch_size}, {args.threads} threads, "
        f"{os.cpu_count()} CPUs, {jax.devices()[0].platform}")
  print(f"{'path':<26}{'batches/s':>12}{'examples/s':>14}{'vs streamed':>13}")
  for label, bps, eps in rows:
    print(f"{label:<26}{bps:>12.1f}{eps:>14.0f}{bps / rows[2][1]:>12.1f}x")


def jpeg_table(args):
  rows = []
  for workers in map(int, args.workers.split(",")):
    for kind in ("threads", "processes"):
      config = base.get_config().data
      config.update(name="jpeg", source_dir=args.jpeg, batch_size=args.batch_size,
                    image_size=args.image_size, random_flip=True, worker_threads=workers,
                    worker_processes=workers if kind == "processes" else 0)
      bps = measure(config, args.seconds)
      rows.append((f"{workers} {kind}", bps, bps * args.batch_size))
      print(rows[-1], flush=True)
  print(f"\nJPEG records {args.jpeg}, random-resized crop {args.image_size}, flip, "
        f"batch {args.batch_size}, {os.cpu_count()} CPUs, to {jax.devices()[0].platform}")
  goal = f"{'vs goal':>10}" if args.goal else ""
  print(f"{'workers':<16}{'batches/s':>12}{'images/s':>12}{goal}")
  for label, bps, eps in rows:
    ratio = f"{eps / args.goal:>9.2f}x" if args.goal else ""
    print(f"{label:<16}{bps:>12.2f}{eps:>12.0f}{ratio}")


if __name__ == "__main__":
  main()

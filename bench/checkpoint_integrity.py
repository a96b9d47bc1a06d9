"""What checkpoint verification costs: save, seal (sha256 of every file), verify and restore
times of a real train state (parameters + AdamW moments), through train_lib.checkpointing.

    python bench/checkpoint_integrity.py --config=configs/gpt2_124m.py:synthetic
    python bench/checkpoint_integrity.py --config=configs/gpt_1b3.py --dir=/tmp/ckb --repeats=2

For each config: "save s" is orbax's save until committed (async save, then wait; no
checksums), "seal s" the digests of the committed step (checkpointing.seal, the files
still in the page cache as they are right after a save), "verify s" checkpointing.verify
(read back and hashed), "restore s" the restore into the target's shardings without the
check; "cold" rows drop the page cache first where the machine allows it (root), as a
restart on another host would. Overheads are ratios taken in the same run.
"""

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import grain  # noqa: E402
import jax  # noqa: E402

from bench import table  # noqa: E402
from bench.train_step import load_config  # noqa: E402
from train_lib import checkpointing, setup, state as state_lib  # noqa: E402


def drop_caches() -> bool:
  try:
    subprocess.run(["sync"], check=True)
    with open("/proc/sys/vm/drop_caches", "w") as f:
      f.write("3\n")
    return True
  except OSError:
    return False


def size_gb(path):
  return sum(os.path.getsize(os.path.join(r, n)) for r, _, ns in os.walk(path) for n in ns) / 1e9


def measure(spec, directory, repeats):
  config = load_config(spec)
  s = setup.build(config)
  state = state_lib.create(s.model, s.tx, s.task, s.dummy_batch, config.seed, s.state_sharding)
  target = checkpointing.sharded_target(s.abstract_state, s.state_sharding)
  data = iter(grain.MapDataset.range(0, 10).to_iter_dataset())
  times = {k: [] for k in ("save", "seal", "verify", "restore", "verify_cold", "restore_cold")}
  cold = True
  for r in range(repeats):
    shutil.rmtree(directory, ignore_errors=True)
    ckpt = checkpointing.Checkpointer(directory, config.train)
    t = time.perf_counter()
    ckpt.manager.save(1, args=checkpointing.ocp.args.Composite(
        state=checkpointing.ocp.args.StandardSave(state),
        data=grain.checkpoint.CheckpointSave(data)), force=True)
    ckpt.manager.wait_until_finished()
    times["save"].append(time.perf_counter() - t)
    step_dir = os.path.join(ckpt.directory, "1")
    t = time.perf_counter()
    checkpointing.seal(step_dir)
    times["seal"].append(time.perf_counter() - t)
    for suffix in ("", "_cold"):
      if suffix and not (cold := drop_caches()):
        continue
      t = time.perf_counter()
      assert checkpointing.verify(step_dir) == ""
      times["verify" + suffix].append(time.perf_counter() - t)
      if suffix:
        drop_caches()
      t = time.perf_counter()
      restored = ckpt.manager.restore(1, args=checkpointing.ocp.args.Composite(
          state=checkpointing.ocp.args.StandardRestore(target)))["state"]
      jax.block_until_ready(restored)
      times["restore" + suffix].append(time.perf_counter() - t)
      del restored
    gb = size_gb(step_dir)
    ckpt.manager.close()
  shutil.rmtree(directory, ignore_errors=True)
  med = {k: statistics.median(v) if v else None for k, v in times.items()}
  return {"config": spec, "params": state_lib.num_params(state.params), "gb": gb, **med,
          "cold": cold}


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--config", action="append", required=True)
  parser.add_argument("--dir", default="/tmp/whetstone_ckpt_bench")
  parser.add_argument("--repeats", type=int, default=3)
  a = parser.parse_args()
  rows = [measure(spec, a.dir, a.repeats) for spec in a.config]
  f = lambda k: (lambda r: "-" if r[k] is None else f"{r[k]:.2f}")  # noqa: E731
  ratio = lambda n, d: (lambda r: "-" if r[n] is None else f"{r[n] / r[d]:.0%}")  # noqa: E731
  print(f"{jax.devices()[0].device_kind}, {os.cpu_count()} CPU cores, jax {jax.__version__}")
  table.print_table([
      ("config", -34, lambda r: r["config"]), ("params", 14, lambda r: f"{r['params']:,}"),
      ("step GB", 8, lambda r: f"{r['gb']:.2f}"), ("save s", 7, f("save")),
      ("seal s", 7, f("seal")), ("seal/save", 9, ratio("seal", "save")),
      ("restore s", 9, f("restore")), ("verify s", 8, f("verify")),
      ("verify/restore", 14, ratio("verify", "restore")),
      ("cold restore s", 14, f("restore_cold")), ("cold verify s", 13, f("verify_cold")),
      ("cold v/r", 8, ratio("verify_cold", "restore_cold"))], rows)


if __name__ == "__main__":
  main()

"""Checkpoint integrity (README, "Reliability"): every file of a step is checked against the
sha256 digests written when its save committed (checkpoints/<step>/checksums.json), before
any of its values are used. Bytes flipped at seeded random positions in every kind of file
of a step are detected; the step moves to quarantine/ and the next older verified one
restores; training from there ends bit-identical to the uninterrupted run."""

import glob
import json
import os
import shutil

import jax.numpy as jnp
import numpy as np
import pytest

from configs import base
from helpers import last_json, run_main
from test_reliability import (STEPS, args, assert_same_arrays, fake_data, reference,  # noqa
                              save_steps, saved_state, steps_in, target)
from train_lib import checkpointing

KINDS = {   # what each kind of file of a step holds -> its paths, relative to the step
    "array data": "state/**/d/*",
    "array metadata": ["state/_METADATA", "state/_sharding", "state/array_metadatas/*",
                       "state/**/manifest.ocdbt"],
    "data-iterator state": "data/*.json",
    "step metadata": "_CHECKPOINT_METADATA",
    "checksums": checkpointing.MANIFEST,
}


def files_of(step_dir, kind):
  patterns = KINDS[kind] if isinstance(KINDS[kind], list) else [KINDS[kind]]
  found = {p for pattern in patterns
           for p in glob.glob(os.path.join(step_dir, pattern), recursive=True)}
  return sorted(p for p in found if os.path.isfile(p))


def flip(path, rng, count):
  """XORs `count` bytes at random positions with random non-zero values: each one changes."""
  data = bytearray(open(path, "rb").read())
  where = rng.choice(len(data), size=min(count, len(data)), replace=False)
  for i in where:
    data[i] ^= int(rng.integers(1, 256))
  with open(path, "wb") as f:
    f.write(data)
  return sorted(int(i) for i in where)


def cases(n=25, seed=0):
  """n seeded (kind, file index, byte count): every kind, single and multi-byte flips."""
  rng = np.random.default_rng(seed)
  kinds = list(KINDS)
  return [(kinds[i % len(kinds)], int(rng.integers(0, 1 << 30)),
           1 if i % 2 == 0 else int(rng.integers(2, 17))) for i in range(n)]


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("pristine"))
  save_steps(workdir, [1, 2])
  return workdir


@pytest.mark.parametrize("kind, pick, count", cases())
def test_a_flipped_byte_anywhere_in_the_newest_step_is_detected_and_the_older_step_restores(
    pristine, tmp_path, capfd, kind, pick, count):
  workdir = str(tmp_path / "w")
  shutil.copytree(pristine, workdir)
  candidates = files_of(os.path.join(workdir, "checkpoints", "2"), kind)
  assert candidates, kind
  path = candidates[pick % len(candidates)]
  flip(path, np.random.default_rng(pick), count)

  data = fake_data()
  step, state = checkpointing.Checkpointer(workdir, base.get_config().train).restore_newest(
      target(), data)
  assert step == 1 and float(state["w"][0]) == 1.0 and float(state["b"][2]) == 2.0
  assert data.train_iter.get_state() == {"next_index": 1}
  err = capfd.readouterr().err
  assert "checkpoint step 2" in err and "failed verification" in err, err
  assert steps_in(workdir) == [1]
  (moved,) = os.listdir(os.path.join(workdir, "quarantine"))
  assert moved.startswith("2-damaged")


def test_a_step_whose_checksums_were_never_written_is_not_trusted(pristine, tmp_path, capfd):
  """A save killed after orbax committed but before the digests were written."""
  workdir = str(tmp_path / "w")
  shutil.copytree(pristine, workdir)
  os.remove(os.path.join(workdir, "checkpoints", "2", checkpointing.MANIFEST))
  step, _ = checkpointing.Checkpointer(workdir, base.get_config().train).restore_newest(target())
  assert step == 1 and f"has no {checkpointing.MANIFEST}" in capfd.readouterr().err


def test_retention_keeps_the_newest_verified_step(tmp_path):
  """keep_checkpoints=1: while step 3 has no digests, step 2 (verified) is not deleted."""
  train = base.get_config().train
  train.keep_checkpoints = 1
  workdir = str(tmp_path)
  ckpt = checkpointing.Checkpointer(workdir, train)
  data = fake_data()
  for s in (1, 2):
    ckpt.save(s, {"w": jnp.full((1000,), float(s)), "b": jnp.arange(3.0)}, data.train_iter)
    ckpt.wait()
  assert steps_in(workdir) == [2]
  os.remove(os.path.join(workdir, "checkpoints", "2", checkpointing.MANIFEST))
  ckpt._retain()
  assert steps_in(workdir) == [2]     # unverified but the only one: kept
  ckpt.save(3, {"w": jnp.full((1000,), 3.0), "b": jnp.arange(3.0)}, data.train_iter)
  ckpt.wait()                          # 3 verified: now 2 may go
  assert steps_in(workdir) == [3]
  ckpt.close()


def corrupt(workdir, step, kind, seed):
  step_dir = os.path.join(workdir, "checkpoints", str(step))
  path = files_of(step_dir, kind)[0]
  flip(path, np.random.default_rng(seed), 4)


def test_training_from_a_corrupted_newest_step_ends_bit_identical(reference, tmp_path,
                                                                  tfds_dir):
  """Steps 60 (array data) and 57 (array metadata) corrupted: the run restores 54 and its
  last checkpoint equals the uninterrupted run's; then the data-iterator state of the new
  step 60 is corrupted and a continued run restores 57 and ends the same way again."""
  ref_dir, ref_result = reference
  workdir = str(tmp_path / "copy")
  shutil.copytree(ref_dir, workdir)
  assert steps_in(workdir) == [54, 57, 60]
  corrupt(workdir, 60, "array data", 1)
  corrupt(workdir, 57, "array metadata", 2)
  proc = run_main(*args(workdir, tfds_dir))
  assert "checkpoint step 60" in proc.stderr and "checkpoint step 57" in proc.stderr
  assert "restored step 54" in proc.stderr, proc.stderr[-2000:]
  assert last_json(proc.stdout) == ref_result
  assert_same_arrays(saved_state(workdir, STEPS), saved_state(ref_dir, STEPS))

  corrupt(workdir, 60, "data-iterator state", 3)
  shutil.rmtree(os.path.join(workdir, "checkpoints", "60", "state"))   # and more
  proc = run_main(*args(workdir, tfds_dir))
  assert "restored step 57" in proc.stderr, proc.stderr[-2000:]
  assert last_json(proc.stdout) == ref_result
  assert_same_arrays(saved_state(workdir, STEPS), saved_state(ref_dir, STEPS))
  assert sorted(d.split("-")[0] for d in os.listdir(os.path.join(workdir, "quarantine"))) == [
      "57", "60", "60"]


def test_eval_never_reports_a_corrupted_step(reference, tmp_path, tfds_dir):
  """--mode=eval on a corrupted newest step names it, evaluates the newest one that verifies
  and says which; a corrupted step asked for by number exits 2. Nothing is moved: eval only
  reads."""
  workdir = str(tmp_path / "copy")
  shutil.copytree(reference[0], workdir)
  corrupt(workdir, 60, "array data", 4)
  proc = run_main(*args(workdir, tfds_dir), "--mode=eval")
  result = last_json(proc.stdout)
  assert result["step"] == 57 and np.isfinite(result["loss"]), result
  assert "checkpoint step 60" in proc.stderr and "using step 57" in proc.stderr
  assert steps_in(workdir) == [54, 57, 60]

  proc = run_main(*args(workdir, tfds_dir), "--mode=eval", "--config.eval.step=60", check=False)
  assert proc.returncode == 2 and "Traceback" not in proc.stderr
  assert "checkpoint step 60" in proc.stderr and "failed verification" in proc.stderr
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    evals = [json.loads(l) for l in f if '"mode": "eval"' in l]
  assert [e["step"] for e in evals] == [57]


def test_verify_names_what_differs(pristine, tmp_path):
  step_dir = str(tmp_path / "2")
  shutil.copytree(os.path.join(pristine, "checkpoints", "2"), step_dir)
  assert checkpointing.verify(step_dir) == ""
  data_file = files_of(step_dir, "data-iterator state")[0]
  with open(data_file, "a") as f:
    f.write(" ")
  os.remove(files_of(step_dir, "array data")[0])
  open(os.path.join(step_dir, "stray"), "w").close()
  problem = checkpointing.verify(step_dir)
  assert "missing" in problem and "stray not in" in problem and "bytes, not" in problem

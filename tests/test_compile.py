"""--mode=compile: the real steps compiled ahead of time for a TPU topology (libtpu on this
CPU host) or for the devices present; memory, fit, collectives, the search, bad input."""

import json
import os
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from helpers import REPO, last_json, run_main
from train_lib.tools import compile as compile_tool

GPT = "--config=configs/gpt2_124m.py:runlocal"
FSDP4 = ("--config.mesh.fsdp=-1", "--config.mesh.data=1", "--config.model.d_model=512",
         "--config.model.num_heads=4")    # 128-wide shards: no TPU tile padding
# Memory that shrinks with the micro-batch: 32 x 256 tokens on 4 chips; the limit below
# lies between micro-batches 32 (16.2 MiB per chip with libtpu 0.0.42) and 16 (14.3 MiB)
BATCH = 32
SEARCHED = (f"--config.data.batch_size={BATCH}", "--config.data.seq_len=256",
            "--config.model.max_len=256", "--config.model.d_model=128",
            "--config.model.num_heads=1", "--config.model.num_layers=1")
LIMIT_GIB = 0.0149


def compile_main(workdir, *args, check=True):
  return run_main(GPT, f"--workdir={workdir}", "--mode=compile", *args, check=check)


@pytest.fixture(scope="module")
def fsdp_run(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("compile_fsdp"))
  proc = compile_main(workdir, "--config.compile.topology=v5e:2x2", *FSDP4)
  return workdir, proc, last_json(proc.stdout)


def test_gpt2_compiles_for_a_tpu_topology(fsdp_run):
  workdir, proc, r = fsdp_run
  assert (r["topology"], r["device_kind"], r["devices"]) == ("v5e:2x2", "TPU v5 lite", 4)
  assert r["mesh"]["fsdp"] == 4 and r["fits"]
  with open(os.path.join(workdir, "compile.json")) as f:
    assert json.load(f) == r
  for prog in ("train", "eval"):
    with open(os.path.join(workdir, "compile", f"{prog}_step.hlo.txt")) as f:
      assert "ENTRY" in f.read()
    assert r["memory_per_device"][prog]["peak"] > 0
  assert "DOES NOT FIT" not in proc.stderr and ": fits," in proc.stderr   # the table
  # FSDP moves parameters and gradients between the 4 chips every step
  moved = sum(c["bytes"] for c in r["collectives"]["train"].values())
  assert moved > r["state_bytes_total"] / 4
  assert r["model_flops_per_step"] > 0 and r["xla_flops_per_step"] > 0


def test_argument_bytes_are_the_state_over_fsdp(fsdp_run):
  _, _, r = fsdp_run
  expected = r["state_bytes_total"] / r["mesh"]["fsdp"]
  args = r["memory_per_device"]["train"]["argument"]   # the state's shard and the batch's
  assert abs(args - expected) / expected < 0.05, (args, expected)


def test_too_large_for_the_chip_exits_2(tmp_path):
  # ~1.6B parameters replicated on every chip (data parallel): 19 GB of state > 16 GiB
  proc = compile_main(tmp_path, "--config.compile.topology=v5e:2x2",
                      "--config.model.d_model=4096", "--config.model.num_heads=32",
                      "--config.model.num_layers=8", "--config.model.scan_layers=true",
                      check=False)
  assert proc.returncode == 2, proc.stderr[-2000:]
  line = proc.stderr.strip().splitlines()[-1]
  # libtpu refuses it itself ("... (33.42G) exceeds available HBM (15.75G)"), or XLA's
  # account exceeds the chip's 16 GiB
  assert "does not fit v5e:2x2" in line and re.search(r"\d+\.\d+ ?G", line), line
  r = json.load(open(os.path.join(tmp_path, "compile.json")))
  assert not r["fits"] and r["peak_bytes"] > r["memory_limit_bytes"] == 16 * 2**30


def test_search_finds_the_largest_micro_batch_that_fits(tmp_path):
  limit = ("--config.compile.topology=v5e:2x2", f"--config.compile.memory_gib={LIMIT_GIB}")
  proc = compile_main(tmp_path / "s", *limit, *SEARCHED, "--config.compile.search=micro_batch")
  r = last_json(proc.stdout)
  found = r["search"]
  micro, up = found["value"], found["next_value"]
  assert up > micro and BATCH % micro == 0 and micro % 4 == 0
  assert found["grad_accum_steps"] == BATCH // micro
  from configs import gpt2_124m   # the search replaced the config's own value
  own = gpt2_124m.get_config("runlocal").optim.grad_accum_steps
  assert found["replaced"] == {"optim.grad_accum_steps": own}
  assert r["fits"] and r["peak_bytes"] <= LIMIT_GIB * 2**30 < found["next_peak_bytes"]
  assert "is set but nothing" not in proc.stderr   # the candidates' reads are the config's
  # the next size up, compiled on its own, does not fit
  again = compile_main(tmp_path / "up", *limit, *SEARCHED,
                       f"--config.optim.grad_accum_steps={BATCH // up}", check=False)
  assert again.returncode == 2 and "does not fit" in again.stderr


def test_unknown_topology_lists_the_known_ones(tmp_path):
  proc = compile_main(tmp_path, "--config.compile.topology=v9:2x2", check=False)
  assert proc.returncode == 2
  line = proc.stderr.strip().splitlines()[-1]
  assert "v9:2x2" in line and "v5e:4x4" in line and "v5p:2x2x2" in line and "local" in line
  bad_shape = compile_main(tmp_path, "--config.compile.topology=v5e:3x3", check=False)
  assert bad_shape.returncode == 2 and "v5e:16x16" in bad_shape.stderr


def test_mesh_that_does_not_divide_the_topology_exits_2(tmp_path):
  proc = compile_main(tmp_path, "--config.compile.topology=v5e:2x2", "--config.mesh.data=3",
                      check=False)
  assert proc.returncode == 2 and "mesh" in proc.stderr.strip().splitlines()[-1]


def test_every_known_topology_builds():
  code = ("import json; from train_lib.tools import compile as c; "
          "print(json.dumps({n: [len((t := c.target(n)).devices), t.chips, t.memory_bytes] "
          "for n in c.known_names()}))")
  out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                       text=True, env=dict(os.environ, JAX_PLATFORMS="cpu"), check=True)
  found = json.loads(out.stdout.strip().splitlines()[-1])
  assert set(found) == set(compile_tool.known_names())
  for name, (devices, num_chips, memory) in found.items():
    shape = [int(d) for d in name.split(":")[1].split("x")]
    assert num_chips == np.prod(shape) and devices % num_chips == 0, name
    gen = name.split(":")[0]
    assert memory * devices / num_chips == compile_tool.chips.TPUS[gen].hbm_gib * 2**30


def test_local_compile_on_8_cpu_devices(tmp_path):
  proc = run_main("--config=configs/gpt_1b3.py:runlocal", f"--workdir={tmp_path}",
                  "--mode=compile", "--config.model.d_model=128",
                  "--config.data.batch_size=16", devices=8)
  r = last_json(proc.stdout)
  assert (r["topology"], r["devices"], r["mesh"]["fsdp"]) == ("local", 8, 8)
  expected = r["state_bytes_total"] / 8
  args = r["memory_per_device"]["train"]["argument"]
  assert abs(args - expected) / expected < 0.05, (args, expected)
  assert r["fits"] and r["memory_limit_source"] == "host memory / devices"


def _scanned_gather(length):
  mesh = jax.make_mesh((8,), ("x",), devices=jax.devices()[:8])

  def body(carry, _):
    gathered = jax.shard_map(lambda a: jax.lax.all_gather(a, "x", tiled=True), mesh=mesh,
                             in_specs=P("x"), out_specs=P(), check_vma=False)(carry)
    return carry + gathered.sum(), None

  def fn(x):
    return jax.lax.scan(body, x, None, length=length)[0]
  x = jax.ShapeDtypeStruct((64,), jnp.float32, sharding=NamedSharding(mesh, P("x")))
  return compile_tool.collectives(jax.jit(fn).lower(x).compile().as_text())


def test_collectives_count_each_loop_iteration():
  once, thrice = _scanned_gather(1), _scanned_gather(3)
  assert once["all-gather"]["count"] >= 1
  assert thrice["all-gather"]["count"] == 3 * once["all-gather"]["count"]
  assert thrice["all-gather"]["bytes"] == 3 * once["all-gather"]["bytes"]
  assert once["all-gather"]["bytes"] == 64 * 4 * once["all-gather"]["count"]  # f32[64] out


def test_bad_compile_settings_exit_2(tmp_path):
  for flag, word in (("--config.compile.search=batch", "compile.search"),
                     ("--config.compile.memory_gib=-1", "memory_gib"),
                     ("--config.compile.step_time_s=-2", "step_time_s")):
    proc = compile_main(tmp_path, flag, check=False)
    assert proc.returncode == 2 and word in proc.stderr.strip().splitlines()[-1], flag


def test_search_finds_the_smallest_fsdp_that_fits(tmp_path):
  # ~75 MB of state: replicated (fsdp=1) ~0.10 GiB per chip, fsdp=2 ~0.06, fsdp=4 ~0.04
  proc = compile_main(tmp_path, "--config.compile.topology=v5e:2x2", *FSDP4[2:],
                      "--config.compile.search=fsdp", "--config.compile.memory_gib=0.08")
  r = last_json(proc.stdout)
  found = r["search"]
  assert found["value"] == r["mesh"]["fsdp"] and found["next_value"] < found["value"]
  assert r["mesh"]["fsdp"] * r["mesh"]["data"] == 4
  assert r["peak_bytes"] <= 0.08 * 2**30 < found["next_peak_bytes"]
  assert "is set but nothing" not in proc.stderr

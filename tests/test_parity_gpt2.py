"""GPT-2 weights in and out (train_lib/weights/hf_gpt2.py, tools/export.py) against a tiny
Hugging Face GPT2LMHeadModel (tests/fixtures/gpt2/, made by tools/parity/gpt2.py): its
logits through weights.load with layers scanned and unrolled; import -> train state ->
export gives the file back bit for bit, with a fresh optimizer; vocabulary padding; a bad
file's one error naming every tensor; a configs/gpt2_124m.py:runlocal run from the file
(its first loss is the file's model's), resumed without importing again, and exported by
tools/export.py to exactly its checkpointed parameters; tools/export.py's one-line errors.
(configs/gpt2_124m.py itself goes through --mode=sanity in tests/test_sanity.py.)"""

import math
import os
import shutil
import subprocess
import sys
from types import SimpleNamespace

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from configs import base, gpt2_124m
from helpers import REPO, last_json, main_env, read_metrics, run_main
from input_pipeline.text import TextData
from models.transformer import Transformer
from test_reliability import assert_same_arrays, saved_state
from tools import export as export_tool
from train_lib import config_io, setup as setup_lib, state as state_lib, weights
from train_lib.errors import UserError
from train_lib.weights import hf_gpt2

HERE = os.path.dirname(os.path.abspath(__file__))
FILE = os.path.join(HERE, "fixtures", "gpt2", "model.safetensors")
IO = np.load(os.path.join(HERE, "fixtures", "gpt2", "io.npz"), allow_pickle=False)
# The fixture's shape (2 layers, 4 heads, width 64, 64 positions, 256 tokens) as overrides of
# configs/gpt2_124m.py:runlocal, which has 2 layers, width 64 and 64 positions already.
RUNLOCAL = dict(num_heads=4, vocab_size=256, use_bias=True)
TINY = dict(num_layers=2, d_model=64, max_len=64, **RUNLOCAL)
# float32 on both sides; XLA and torch sum the matmuls and LayerNorm statistics in other
# orders (flax's variance is E[x^2] - E[x]^2): measured max |diff| 6e-6 on logits of std 1.5.
ATOL = 5e-5


def model_config(**overrides):
  config = base.transformer_model()
  config.update({**TINY, **overrides})
  return config


def fresh(config):
  """The model and zeros in the shapes of its variables (loading fills every one)."""
  model = Transformer(**{k: v for k, v in config.items() if k != "name"})
  shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, 8), jnp.int32))
  return model, jax.tree.map(lambda x: np.zeros(x.shape, x.dtype),
                             flax.linen.meta.unbox(shapes))


def flat(tree):
  return flax.traverse_util.flatten_dict(tree)


def assert_same_tensors(got: dict, want: dict):
  """The same names, dtypes and values, bit for bit."""
  assert sorted(got) == sorted(want)
  for name in want:
    assert got[name].dtype == want[name].dtype and np.array_equal(got[name], want[name]), name


@pytest.mark.parametrize("scan_layers", [True, False])
def test_parity_gpt2_logits_and_export(scan_layers):
  config = model_config(scan_layers=scan_layers)
  model, variables = fresh(config)
  loaded = weights.load(f"hf_gpt2:{FILE}", variables, config)
  apply = jax.jit(model.apply)
  logits = np.asarray(apply(loaded, IO["tokens"]))
  np.testing.assert_allclose(logits, IO["logits"], atol=ATOL, rtol=0)

  # The test can fail: q and k swapped in one layer is far outside the tolerance.
  swapped = flat(loaded)
  layer = ("params", "layers") if scan_layers else ("params", "layer_0")
  q, k = layer + ("attn", "query", "kernel"), layer + ("attn", "key", "kernel")
  swapped[q], swapped[k] = swapped[k], swapped[q]
  wrong = np.asarray(apply(flax.traverse_util.unflatten_dict(swapped), IO["tokens"]))
  assert np.abs(wrong - IO["logits"]).max() > 100 * ATOL

  # Export gives back the file's own tensors, bit for bit, under its own names.
  assert_same_tensors(weights.export("hf_gpt2", loaded, config), load_file(FILE))


def runlocal_config(tfds_dir):
  config = gpt2_124m.get_config("runlocal")
  config.model.update(RUNLOCAL)
  config.data.tfds_dir = tfds_dir
  config.init_from = f"hf_gpt2:{FILE}"
  return config


def test_parity_gpt2_import_into_train_state_and_export(tfds_dir):
  """As train_lib/loop.py starts a run: a fresh train state, then weights.init_state. Its
  parameters export to the file bit for bit; its optimizer state is the fresh one."""
  config = runlocal_config(tfds_dir)
  s = setup_lib.build(config, devices=jax.devices()[:1])
  new = state_lib.create(s.model, s.tx, s.task, s.dummy_batch, config.seed, s.state_sharding)
  state = weights.init_state(new, config, s.task, s.state_sharding)
  exported = weights.export("hf_gpt2", {"params": jax.device_get(state.params)}, config.model)
  assert_same_tensors(exported, load_file(FILE))
  assert int(state.step) == 0
  assert_same_arrays(jax.device_get(state.opt_state), jax.device_get(new.opt_state))


def test_parity_gpt2_vocab_padded_on_import_and_cut_on_export(tmp_path, monkeypatch):
  """A 200-token file into a 256-row model (200 rounded up to a multiple of 64)."""
  tensors = load_file(FILE)
  tensors["transformer.wte.weight"] = tensors["transformer.wte.weight"][:200]
  path = str(tmp_path / "v200.safetensors")
  save_file(tensors, path)
  config = model_config(scan_layers=False)
  _, variables = fresh(config)
  embed = weights.load(f"hf_gpt2:{path}", variables, config)["params"]["embed"]["embedding"]
  np.testing.assert_array_equal(embed[:200], tensors["transformer.wte.weight"])
  # each padding row is the mean row: its logit is the mean logit, so the extra mass is at
  # most 56/200 of the file's (Jensen), log(1 + 56/200) nats on any loss
  np.testing.assert_allclose(embed[200:], np.broadcast_to(embed[:200].mean(0), (56, 64)),
                             rtol=1e-6)
  monkeypatch.setattr(hf_gpt2, "VOCAB", 200)   # GPT-2's 50257 -> 50304, here 200 -> 256
  loaded = weights.load(f"hf_gpt2:{path}", variables, config)
  out = weights.export("hf_gpt2", loaded, config)
  np.testing.assert_array_equal(out["transformer.wte.weight"], tensors["transformer.wte.weight"])

  # 200 into 320 rows is not a padding (320 is not 200 rounded up): the check names it
  config = model_config(vocab_size=320, scan_layers=False)
  with pytest.raises(UserError, match=r"mis-shaped: transformer.wte.weight \(200, 64\)"):
    weights.load(f"hf_gpt2:{path}", fresh(config)[1], config)


def test_parity_gpt2_model_not_gpt2_shaped():
  config = model_config(use_bias=False, norm="rmsnorm")
  with pytest.raises(UserError, match=r"--config.model.norm=layernorm \(now 'rmsnorm'\) "
                                      r"--config.model.use_bias=True \(now False\)$"):
    weights.load(f"hf_gpt2:{FILE}", {"params": {}}, config)


def test_parity_gpt2_names_without_prefix(tmp_path):
  """GPT2Model's names, as in the hub's gpt2 file: no "transformer.", with mask buffers."""
  tensors = {k.removeprefix("transformer."): v for k, v in load_file(FILE).items()}
  tensors["h.0.attn.bias"] = np.tril(np.ones((1, 1, 64, 64), np.float32))
  path = str(tmp_path / "bare.safetensors")
  save_file(tensors, path)
  config = model_config(scan_layers=False)
  _, variables = fresh(config)
  a = weights.load(f"hf_gpt2:{path}", variables, config)
  b = weights.load(f"hf_gpt2:{FILE}", variables, config)
  assert all(np.array_equal(a_, b_) for a_, b_ in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def run_args(tfds_dir, init_from):
  return ["--config=configs/gpt2_124m.py:runlocal", f"--config.data.tfds_dir={tfds_dir}",
          f"--config.init_from=hf_gpt2:{init_from}",
          *(f"--config.model.{k}={v}" for k, v in RUNLOCAL.items())]


def test_parity_gpt2_bad_file_is_one_error_naming_every_tensor(tmp_path):
  """A missing, an extra and a mis-shaped tensor: one UserError (main.py's one line, exit
  code 2) that names all three."""
  tensors = load_file(FILE)
  del tensors["transformer.ln_f.bias"]
  tensors["transformer.h.2.mlp.c_fc.weight"] = tensors["transformer.h.1.mlp.c_fc.weight"]
  tensors["transformer.wpe.weight"] = tensors["transformer.wpe.weight"][:32]
  path = str(tmp_path / "bad.safetensors")
  save_file(tensors, path)
  config = model_config(scan_layers=False)
  with pytest.raises(UserError) as e:
    weights.load(f"hf_gpt2:{path}", fresh(config)[1], config)
  message = str(e.value)
  assert message.startswith("init_from: the weights do not fit") and "\n" not in message
  assert ("missing: transformer.ln_f.bias" in message and
          "extra: transformer.h.2.mlp.c_fc.weight" in message and
          "mis-shaped: transformer.wpe.weight (32, 64)" in message), message


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tfds_dir):
  """Two launches: 4 steps from the file with checkpoints at 2 and 4, then a copy rolled
  back to step 2 and continued to 4."""
  root = tmp_path_factory.mktemp("gpt2_runs")
  ref, resumed = str(root / "ref"), str(root / "resumed")
  argv = [*run_args(tfds_dir, FILE), "--config.train.num_steps=4",
          "--config.train.checkpoint_every=2", "--config.train.log_every=1",
          "--config.train.eval_every=0", "--config.optim.warmup_steps=0"]
  first = run_main(*argv, f"--workdir={ref}")
  shutil.copytree(ref, resumed)
  second = run_main(*argv, f"--workdir={resumed}", "--config.train.restore_step=2")
  return SimpleNamespace(ref=ref, resumed=resumed, first=first, second=second,
                         config=config_io.from_json(os.path.join(ref, "config.json")))


def test_parity_gpt2_run_starts_from_the_file(runs):
  """The logged loss of step 1 is the file's model's on the run's first batch (far from a
  fresh init's ln 256)."""
  assert f"parameters from hf_gpt2:{FILE}" in runs.first.stderr
  logged = next(m["loss"] for m in read_metrics(runs.ref)
                if m["split"] == "train" and m["step"] == 1)
  config = runs.config
  mesh = jax.make_mesh((1,), ("data",), devices=jax.devices()[:1])
  data = TextData(config.data, config.seed, jax.sharding.NamedSharding(
      mesh, jax.sharding.PartitionSpec("data")))
  tokens = data.train_batch(0)["tokens"]     # the run's first batch
  model, variables = fresh(config.model)
  logits = jax.jit(model.apply)(weights.load(f"hf_gpt2:{FILE}", variables, config.model),
                                tokens[:, :-1])
  nll = -jnp.take_along_axis(jax.nn.log_softmax(logits), tokens[:, 1:, None], -1)
  # float32 means of 512 token losses, the run's over 2 micro-batches through the fused,
  # chunked head+loss: the same sums in other orders
  assert abs(logged - float(nll.mean())) < 1e-5, (logged, float(nll.mean()))
  assert abs(logged - math.log(256)) > 0.5, logged


def test_parity_gpt2_resumed_run_does_not_import_again(runs):
  """Rolled back to step 2, the run continues from its checkpoint, not from the file: no
  "parameters from" line, and the same result and saved arrays as the run that went on."""
  assert "rolled back to step 2" in runs.second.stderr
  assert "parameters from" not in runs.second.stderr
  assert last_json(runs.second.stdout) == last_json(runs.first.stdout)
  assert_same_arrays(saved_state(runs.resumed, 4), saved_state(runs.ref, 4))


def test_parity_gpt2_export_tool_writes_the_checkpointed_parameters(runs, tmp_path, capsys):
  """tools/export.py on the trained workdir, newest step and --step=2: the checkpoint's own
  parameters in GPT-2's names and layout, bit for bit, no longer the file's."""
  fixture = load_file(FILE)
  for step, flags in ((4, []), (2, ["--step=2"])):
    out = str(tmp_path / f"step{step}.safetensors")
    assert export_tool.main([f"--workdir={runs.ref}", "--format=hf_gpt2", f"--out={out}",
                             *flags]) == 0
    assert f"from step {step} of" in capsys.readouterr().out
    got = load_file(out)
    params = saved_state(runs.ref, step)["params"]
    assert_same_tensors(got, weights.export("hf_gpt2", {"params": params}, runs.config.model))
    assert all(got[k].shape == fixture[k].shape for k in fixture)
    assert not any(np.array_equal(got[k], fixture[k]) for k in fixture)   # it trained
  assert sorted(os.listdir(tmp_path)) == ["step2.safetensors", "step4.safetensors"]


def test_parity_gpt2_export_tool_bad_input_one_line_exit_2(runs, tmp_path, capsys):
  """Every registered format is served by its name; an unknown one, a folder without a run
  or without checkpoints, a missing step and a model the format does not fit are each one
  line on stderr and exit code 2, with nothing written."""
  names = weights.REGISTRY.names()
  assert {"hf_gpt2", "hf_vit", "timm_vit", "torchvision_resnet"} <= set(names)
  out = str(tmp_path / "out.safetensors")
  empty = tmp_path / "empty"
  empty.mkdir()
  no_ckpt = tmp_path / "no_ckpt"
  no_ckpt.mkdir()
  shutil.copy(os.path.join(runs.ref, "config.json"), no_ckpt)
  cases = [(f"--workdir={empty}", f"--format={name}", "no config.json") for name in names]
  cases += [(f"--workdir={runs.ref}", "--format=hf_gtp2",
             "--format: unknown weights format 'hf_gtp2'"),
            (f"--workdir={no_ckpt}", "--format=hf_gpt2", "no checkpoint in"),
            (f"--workdir={runs.ref}", "--format=hf_gpt2", "--step=3", "step 3 not found"),
            (f"--workdir={runs.ref}", "--format=hf_vit", "hf_vit: ")]
  for *argv, message in cases:
    assert export_tool.main([*argv, f"--out={out}"]) == 2, argv
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], (argv, err)
  assert sorted(os.listdir(tmp_path)) == ["empty", "no_ckpt"]   # nothing written

  # the script itself, as a user runs it
  proc = subprocess.run([sys.executable, os.path.join(REPO, "tools", "export.py"),
                         f"--workdir={runs.ref}", "--format=nope", f"--out={out}"],
                        env=main_env(), capture_output=True, text=True, timeout=120)
  assert proc.returncode == 2 and proc.stdout == "", proc.stderr
  assert proc.stderr.count("\n") == 1 and "unknown weights format 'nope'" in proc.stderr

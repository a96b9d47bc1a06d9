"""models/ssm.py against references: one block against a plain sequential numpy scan in
float64 (tests/fixtures/ssm/, made by tools/parity/ssm.py), in one pass and decoded in
pieces; the associative scan against a sequential lax.scan on a long sequence; causality;
decoding token by token equals one pass; configs/shakespeare_ssm.py:runlocal trains through
main.py, resumes bit-exactly and samples (--mode=sample). (--mode=sanity for the config is
in tests/test_sanity.py, which runs every shipped config.)"""

import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import last_json, run_main
from models.ssm import SSM, MambaBlock, selective_scan
from test_reliability import assert_rollback_ends_the_same

FIXTURE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "ssm", "block.npz")
CONFIG = "--config=configs/shakespeare_ssm.py:runlocal"
TRAIN = ["--config.train.num_steps=8", "--config.train.log_every=4",
         "--config.train.eval_every=0", "--config.train.checkpoint_every=4"]


def block_params(w: dict, flip_conv: bool = False) -> dict:
  """The reference's (torch-layout) weights as MambaBlock's parameters."""
  conv_KxE = w["conv1d.weight"][:, 0, :].T
  if flip_conv:   # a convolution instead of a cross-correlation: must not pass
    conv_KxE = conv_KxE[::-1]
  params = {"norm": {"scale": w["norm.weight"]}, "mixer": {
      "in_proj": {"kernel": w["in_proj.weight"].T},
      "conv1d": {"kernel": conv_KxE[:, None, :], "bias": w["conv1d.bias"]},
      "x_proj": {"kernel": w["x_proj.weight"].T},
      "dt_proj": {"kernel": w["dt_proj.weight"].T, "bias": w["dt_proj.bias"]},
      "A_log": w["A_log"], "D": w["D"],
      "out_proj": {"kernel": w["out_proj.weight"].T}}}
  return jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), params)


def test_parity_ssm_block_matches_sequential_numpy():
  f = np.load(FIXTURE, allow_pickle=False)
  d_model, d_inner, d_state, d_conv, dt_rank = (int(n) for n in f["config"])
  w = {k[2:]: f[k] for k in f.files if k.startswith("w.")}
  block = MambaBlock(d_inner, d_state, d_conv, dt_rank, out_std=0.02, dtype=jnp.float32)
  x = jnp.asarray(f["x"], jnp.float32)
  fresh = nn.unbox(jax.eval_shape(block.init, jax.random.key(0), x)["params"])
  assert jax.tree.map(jnp.shape, block_params(w)) == jax.tree.map(jnp.shape, fresh)
  apply = jax.jit(block.apply)
  out, _ = apply({"params": block_params(w)}, x)
  # float32 against a float64 reference (weights rounded to float32 too): |out| reaches
  # ~22 and the scan runs 12 steps, so rounding of ~1e-7 relative per op gives ~1e-5
  # absolute (measured 1.2e-5 max); a wrong layout is off by > 1e-2 (below).
  np.testing.assert_allclose(np.asarray(out), f["out"], rtol=1e-5, atol=5e-5)
  flipped, _ = apply({"params": block_params(w, flip_conv=True)}, x)
  assert np.abs(np.asarray(flipped) - f["out"]).max() > 1e-2   # the test can fail

  # Decoded in pieces (5 steps, 1, 1 - shorter than the conv's 3-step context - then 5),
  # each call starting from the cache the last one left: the same answer, same tolerance.
  decoder = MambaBlock(d_inner, d_state, d_conv, dt_rank, out_std=0.02, dtype=jnp.float32,
                       decode=True)
  cache = jax.eval_shape(decoder.init, jax.random.key(0), x[:, :1])["cache"]
  cache = jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), cache)
  decode = jax.jit(lambda c, x: decoder.apply({"params": block_params(w), "cache": c}, x,
                                              mutable=["cache"]))
  pieces = []
  for start, stop in ((0, 5), (5, 6), (6, 7), (7, 12)):
    (piece, _), variables = decode(cache, x[:, start:stop])
    pieces.append(piece)
    cache = variables["cache"]
  np.testing.assert_allclose(np.concatenate(pieces, axis=1), f["out"], rtol=1e-5, atol=5e-5)


def sequential_scan(dA_BxTxExN, dBx_BxTxExN):
  def step(h, ab):
    h = ab[0] * h + ab[1]
    return h, h
  _, h_TxBxExN = jax.lax.scan(step, jnp.zeros_like(dA_BxTxExN[:, 0]),
                              (dA_BxTxExN.swapaxes(0, 1), dBx_BxTxExN.swapaxes(0, 1)))
  return h_TxBxExN.swapaxes(0, 1)


def test_parity_ssm_associative_scan_matches_sequential_loop():
  k1, k2 = jax.random.split(jax.random.key(0))
  T = 1000   # decays from 0.5 to 0.9999: some states remember the whole sequence
  dA = jnp.exp(-jnp.exp(jax.random.uniform(k1, (2, T, 4, 3), minval=-9.0, maxval=-0.5)))
  dBx = jax.random.normal(k2, (2, T, 4, 3))
  got, want = jax.jit(selective_scan)(dA, dBx), jax.jit(sequential_scan)(dA, dBx)
  # float32 in two association orders over 1000 steps: states reach |14|, and rounding
  # of ~1e-7 relative per combine stays near 1e-5 (measured 3e-6); a wrong recurrence
  # is off by O(1).
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-4, atol=1e-4)
  shifted = jax.jit(selective_scan)(dA, jnp.roll(dBx, 1, axis=1))
  assert np.abs(np.asarray(shifted) - np.asarray(want)).max() > 1e-1


def test_parity_ssm_is_causal_and_decodes_token_by_token_as_one_pass():
  """Changing token 6 leaves the logits before it exactly alone; decode=True (the sampler's
  path: a prompt in one call, then a token per call) starts every block from the states
  the last call left in "cache" and gives the one pass's logits."""
  model = SSM(vocab_size=20, num_layers=2, d_model=16, d_state=4)
  tokens_BxT = jax.random.randint(jax.random.key(0), (2, 9), 0, 20)
  params = jax.jit(model.init)(jax.random.key(1), tokens_BxT)["params"]
  apply = jax.jit(model.apply)
  logits = np.asarray(apply({"params": params}, tokens_BxT))
  assert logits.shape == (2, 9, 20) and logits.dtype == np.float32
  changed = np.asarray(apply({"params": params}, tokens_BxT.at[:, 6].add(1) % 20))
  # Exact: earlier positions' arithmetic never reads a later input.
  np.testing.assert_array_equal(logits[:, :6], changed[:, :6])
  assert np.abs(logits[:, 6:] - changed[:, 6:]).max() > 0

  cache = jax.eval_shape(lambda: model.init(jax.random.key(1), tokens_BxT[:, :1],
                                            decode=True)["cache"])   # as the sampler does
  cache = jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), cache)
  decode = jax.jit(lambda v, x: model.apply(v, x, decode=True, mutable=["cache"]))
  pieces = []
  for t in [slice(0, 4)] + [slice(t, t + 1) for t in range(4, 9)]:
    out, variables = decode({"params": params, "cache": cache}, tokens_BxT[:, t])
    pieces.append(out)
    cache = variables["cache"]
  # The same float32 operations, the scan split at other steps: 1e-5 (measured ~1e-8).
  np.testing.assert_allclose(np.concatenate(pieces, axis=1), logits, atol=1e-5)

  # bfloat16 compute (the GPU config's), the scan still float32: bfloat16 keeps 8 bits
  # (~4e-3 relative) through a few matmuls; logits here are below |0.4| (measured 1e-3).
  half = SSM(vocab_size=20, num_layers=2, d_model=16, d_state=4, dtype=jnp.bfloat16)
  np.testing.assert_allclose(jax.jit(half.apply)({"params": params}, tokens_BxT), logits,
                             atol=1e-2)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tfds_dir):
  """The runlocal config trained 8 steps, checkpoints at 4 and 8 (shared by the tests below)."""
  ref = str(tmp_path_factory.mktemp("ssm") / "ref")
  result = last_json(run_main(CONFIG, f"--config.data.tfds_dir={tfds_dir}", *TRAIN,
                              f"--workdir={ref}").stdout)
  return ref, result


def test_parity_ssm_config_trains_and_resumes_bit_exactly(trained, tmp_path, tfds_dir):
  """A copy rolled back to step 4 and continued to 8 (params, optimizer, key and data
  position restored) ends with the same result and the same saved arrays."""
  ref, result = trained
  assert result["step"] == 8 and result["loss"] < np.log(256), result   # learns at all
  resumed = str(tmp_path / "resumed")
  assert_rollback_ends_the_same([CONFIG, f"--config.data.tfds_dir={tfds_dir}", *TRAIN], ref,
                                resumed, 4, 8, result)


def test_parity_ssm_config_samples(trained, tfds_dir):
  """--mode=sample runs on the SSM: the prompt prefilled through the scan, then the
  decode cache a token at a time."""
  ref, _ = trained
  out = last_json(run_main(CONFIG, f"--config.data.tfds_dir={tfds_dir}", "--mode=sample",
                           f"--workdir={ref}").stdout)
  assert out["step"] == 8 and len(out["samples"]) == 1
  assert out["samples"][0].startswith("\n") and len(out["samples"][0]) > 1
  assert os.path.getsize(os.path.join(ref, "samples.txt")) > 0

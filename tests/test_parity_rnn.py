"""models/rnn.py against torch.nn.LSTM and torch.nn.GRU on torch's weights
(tests/fixtures/rnn/, made by tools/parity/rnn.py): outputs and final states; decoding
in chunks carries the state on; configs/shakespeare_{lstm,gru}.py:runlocal train through
main.py and resume bit-exactly. (--mode=sanity for both configs is in tests/test_sanity.py,
which runs every shipped config.)"""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import last_json, run_main
from models.rnn import RNN
from test_reliability import assert_rollback_ends_the_same

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "rnn")


def load(cell):
  return dict(np.load(os.path.join(FIXTURES, f"{cell}.npz"), allow_pickle=False))


def core_params(f, num_layers):
  """torch's state_dict -> the core's parameters: the weights transposed, biases as they are."""
  return {"core": {f"layer_{k}": {"weight_ih": f[f"weight_ih_l{k}"].T,
                                  "weight_hh": f[f"weight_hh_l{k}"].T,
                                  "bias_ih": f[f"bias_ih_l{k}"], "bias_hh": f[f"bias_hh_l{k}"]}
                   for k in range(num_layers)}}


def run_core(cell, f):
  L, _, H = f["h0"].shape
  states = (f["h0"], f["c0"]) if cell == "lstm" else f["h0"]
  model = RNN(cell=cell, num_layers=L, hidden=H)
  return jax.jit(lambda p, x, s: model.apply({"params": p}, x, s, method="recurrent"))(
      core_params(f, L), f["x"], states)


def max_error(got, f, cell):
  y, states = got
  want = (f["y"], f["h_n"], f["c_n"]) if cell == "lstm" else (f["y"], f["h_n"])
  got = (y, *states) if cell == "lstm" else (y, states)
  assert [g.shape for g in got] == [w.shape for w in want]
  return max(float(np.abs(np.asarray(g) - w).max()) for g, w in zip(got, want))


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_parity_rnn_core_matches_torch(cell):
  f = load(cell)
  # float32 against torch's float64 forward on the same float32 weights and inputs: only
  # float32 rounding in the matmuls and gates, over 7 steps and 2 layers of values in
  # (-1, 1) (LSTM cells a little beyond); seen ~1e-7, so 1e-5 is roomy yet far below
  # what a layout error gives (> 1e-2, checked below).
  assert max_error(run_core(cell, f), f, cell) < 1e-5

  # The test can fail: a wrong gate order (LSTM i <-> f) or, for the GRU, b_hn outside the
  # reset product (moved into b_in) does not pass.
  wrong = dict(f)
  H = f["h0"].shape[-1]
  for k in range(2):
    if cell == "lstm":
      for name in (f"weight_ih_l{k}", f"weight_hh_l{k}", f"bias_ih_l{k}", f"bias_hh_l{k}"):
        wrong[name] = np.concatenate([f[name][H:2 * H], f[name][:H], f[name][2 * H:]])
    else:
      b_hn = f[f"bias_hh_l{k}"][2 * H:]
      wrong[f"bias_ih_l{k}"] = f[f"bias_ih_l{k}"] + np.r_[np.zeros(2 * H), b_hn]
      wrong[f"bias_hh_l{k}"] = np.r_[f[f"bias_hh_l{k}"][:2 * H], np.zeros(H)]
  assert max_error(run_core(cell, wrong), f, cell) > 1e-2


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_parity_rnn_decode_in_chunks_equals_one_pass(cell):
  """decode=True (the sampler's path) starts each call from the last one's final states."""
  model = RNN(cell=cell, vocab_size=20, num_layers=2, hidden=16)
  tokens_BxT = jax.random.randint(jax.random.PRNGKey(0), (2, 9), 0, 20)
  params = jax.jit(model.init)(jax.random.PRNGKey(1), tokens_BxT)["params"]
  cache = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(1), tokens_BxT[:, :1],
                                            decode=True)["cache"])   # as the sampler does
  cache = jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), cache)
  decode = jax.jit(lambda v, x: model.apply(v, x, decode=True, mutable=["cache"]))
  logits = []
  for chunk in (tokens_BxT[:, :4], tokens_BxT[:, 4:5], tokens_BxT[:, 5:]):
    out, variables = decode({"params": params, "cache": cache}, chunk)
    logits.append(out)
    cache = variables["cache"]
  # The same float32 operations in both, split at other places along time: 1e-5.
  np.testing.assert_allclose(jnp.concatenate(logits, axis=1),
                             jax.jit(model.apply)({"params": params}, tokens_BxT), atol=1e-5)


@pytest.mark.parametrize("name", ["shakespeare_lstm", "shakespeare_gru"])
def test_parity_rnn_config_trains_and_resumes_bit_exactly(name, tmp_path, tfds_dir):
  """Two launches: 8 steps with a checkpoint at 4, then a copy rolled back to step 4 and
  continued to 8 (params, optimizer, key and data position restored): the same result."""
  ref, resumed = str(tmp_path / "ref"), str(tmp_path / "resumed")
  argv = [f"--config=configs/{name}.py:runlocal", f"--config.data.tfds_dir={tfds_dir}",
          "--config.train.num_steps=8", "--config.train.log_every=4",
          "--config.train.eval_every=0", "--config.train.checkpoint_every=4"]
  result = last_json(run_main(*argv, f"--workdir={ref}").stdout)
  assert result["step"] == 8 and result["loss"] < np.log(256), result
  assert_rollback_ends_the_same(argv, ref, resumed, 4, 8, result)

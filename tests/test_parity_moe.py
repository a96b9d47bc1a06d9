"""The mixture of experts (models/moe.py) against Hugging Face Mixtral's sparse MoE block
(tests/fixtures/moe/, made by tools/parity/moe.py), a numpy reference of token dropping and
of the auxiliary losses, one device against expert-parallel meshes of 8 fake CPU devices
(tests/conftest.py), and configs/shakespeare_moe.py:runlocal through main.py (train, per-expert
load in metrics.jsonl, bit-exact resume; its --mode=sanity is in tests/test_sanity.py)."""

import functools
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import shakespeare_moe
from helpers import last_json, read_metrics, run_main
import models
from models import moe
from tests.test_reliability import assert_rollback_ends_the_same
from train_lib import partitioning

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "moe")
E, K, F = 4, 2, 32   # the fixture's experts, experts per token, units per expert


def fixture():
  w = np.load(os.path.join(FIXTURES, "weights.npz"), allow_pickle=False)
  io = np.load(os.path.join(FIXTURES, "io.npz"), allow_pickle=False)
  return dict(w), dict(io)


def from_hf(w, swap=False):
  """HF Mixtral's layouts -> MoEMLP's params: gate [E, D] -> router [D, E]; gate_up_proj
  [E, 2F, D] -> w1 (its first F rows), w3 (the last F) as [E, D, F]; down_proj -> w2 [E, F, D]."""
  gate_up = w["gate_up_proj"].transpose(0, 2, 1)
  w1, w3 = gate_up[..., :F], gate_up[..., F:]
  if swap:
    w1, w3 = w3, w1
  return {"router": {"kernel": w["gate"].T}, "w1": w1, "w3": w3,
          "w2": w["down_proj"].transpose(0, 2, 1)}


def numpy_params(model, *args, std=0.02, seed=0):
  """Parameters at model.init's shapes drawn in numpy, N(0, std), norm scales 1 + N(0, std):
  a jitted init spends seconds per tensor compiling the CPU random number generator."""
  shapes = nn.meta.unbox(jax.eval_shape(model.init, jax.random.PRNGKey(0), *args)["params"])
  rng = np.random.default_rng(seed)
  draw = lambda path, x: ((path[-1].key == "scale") + std * rng.standard_normal(x.shape)
                          ).astype(x.dtype)
  return jax.tree_util.tree_map_with_path(draw, shapes)


def block(capacity_factor, num_experts=E, top_k=K, hidden=F):
  return moe.MoEMLP(num_experts, top_k, hidden, capacity_factor)


def numpy_moe(x_BxTxD, w, cap=None):
  """The block in float64 numpy, one (token, choice) at a time; with `cap`, each expert
  takes the first `cap` choices of a sequence, first choices before second ones."""
  x = x_BxTxD.astype(np.float64)
  B, T, _ = x.shape
  logits = x @ w["gate"].T.astype(np.float64)
  probs = np.exp(logits - logits.max(-1, keepdims=True))
  probs /= probs.sum(-1, keepdims=True)
  idx = np.argsort(-probs, axis=-1)[..., :K]
  top = np.take_along_axis(probs, idx, -1)
  weights = top / top.sum(-1, keepdims=True)
  kept = np.ones(idx.shape, bool)
  if cap is not None:
    for b in range(B):
      taken = np.zeros(E, int)
      for k in range(K):
        for t in range(T):
          kept[b, t, k] = taken[idx[b, t, k]] < cap
          taken[idx[b, t, k]] += 1
  y = np.zeros_like(x)
  for b, t, k in zip(*np.nonzero(kept)):
    e = idx[b, t, k]
    gate_up = w["gate_up_proj"][e].astype(np.float64) @ x[b, t]
    h = gate_up[:F] / (1 + np.exp(-gate_up[:F])) * gate_up[F:]
    y[b, t] += weights[b, t, k] * (w["down_proj"][e].astype(np.float64) @ h)
  return y, kept


@pytest.mark.parametrize("capacity_factor", [0.0, E / K])   # dropless; capacity C = T
def test_parity_block_matches_mixtral(capacity_factor):
  w, io = fixture()
  x = jnp.asarray(io["x"])
  (y, stats), seen = block(capacity_factor).apply({"params": from_hf(w)}, x,
                                                 capture_intermediates=True,
                                                 mutable=["intermediates"])
  logits = seen["intermediates"]["router"]["__call__"][0]
  # float32 dot products of 16 and 32 terms in another order than torch's: ~1e-6 on
  # values of order 1.
  np.testing.assert_allclose(np.asarray(logits).reshape(-1, E), io["router_logits"],
                             rtol=1e-5, atol=1e-5)
  weights, idx = moe.route(logits.reshape(-1, E), K)
  np.testing.assert_array_equal(np.asarray(idx), io["top_k_index"])   # the same choices
  np.testing.assert_allclose(np.asarray(weights), io["top_k_weights"], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(np.asarray(y), io["y"], rtol=1e-5, atol=1e-5)
  assert float(stats["dropped_fraction"]) == 0.0
  # A wrong split of gate_up_proj (w1 and w3 swapped) is far outside the tolerance.
  wrong, _ = block(capacity_factor).apply({"params": from_hf(w, swap=True)}, x)
  assert np.abs(np.asarray(wrong) - io["y"]).max() > 1e-2


def test_parity_capacity_mode_drops_past_the_capacity():
  w, io = fixture()
  capacity_factor = 0.5                       # C = ceil(0.5 * 12 * 2 / 4) = 3 of 12 tokens
  cap = moe.capacity(capacity_factor, 12, K, E)
  assert cap == 3
  y, stats = block(capacity_factor).apply({"params": from_hf(w)}, jnp.asarray(io["x"]))
  ref_y, kept = numpy_moe(io["x"], w, cap)
  assert 0 < (~kept).sum() < kept.size
  np.testing.assert_allclose(float(stats["dropped_fraction"]), 1 - kept.mean(), rtol=1e-6)
  # float32 against float64: as the fixture (~1e-6 on values of order 1).
  np.testing.assert_allclose(np.asarray(y), ref_y, rtol=1e-5, atol=1e-5)
  full, _ = numpy_moe(io["x"], w)
  np.testing.assert_allclose(full, io["y"], rtol=1e-5, atol=1e-5)   # the reference is HF's
  assert np.abs(np.asarray(y) - full).max() > 1e-2                   # dropping shows


def test_parity_ragged_dot_and_einsum_dispatch_agree():
  """Dropless (sorted rows, ragged_dot) and capacity C = T (one-hot einsums) are the same
  function: outputs and gradients of the input and every parameter."""
  x = np.random.default_rng(0).standard_normal((2, 16, 8)).astype(np.float32)
  mods = [block(c, num_experts=4, top_k=2, hidden=16) for c in (0.0, 2.0)]
  params = numpy_params(mods[0], x, std=0.2)   # spread the routing

  def loss(m, params, x):
    y, stats = m.apply({"params": params}, x)
    return jnp.sum(jnp.sin(y)) + stats["load_balance_loss"] + stats["z_loss"]
  (a, ga), (b, gb) = [jax.jit(jax.value_and_grad(functools.partial(loss, m), (0, 1)))(params, x)
                      for m in mods]
  # The same products summed in another order (ragged_dot vs einsum): float32 rounding.
  np.testing.assert_allclose(a, b, rtol=1e-5)
  for u, v in zip(jax.tree.leaves(ga), jax.tree.leaves(gb)):
    np.testing.assert_allclose(u, v, rtol=1e-4, atol=1e-6)


def test_parity_aux_losses_match_numpy_and_hf():
  w, io = fixture()
  logits = io["router_logits"].astype(np.float64)
  idx = io["top_k_index"]
  kept = np.ones(idx.shape, bool)
  kept[:3, 1] = False
  stats = moe.router_stats(jnp.asarray(io["router_logits"]), jnp.asarray(idx),
                           jnp.asarray(kept))
  N = logits.shape[0]
  probs = np.exp(logits - logits.max(-1, keepdims=True))
  probs /= probs.sum(-1, keepdims=True)
  f = np.bincount(idx.ravel(), minlength=E) / N          # fraction of tokens routed to e
  lse = np.log(np.exp(logits).sum(-1))
  # float32 reductions over 24 tokens: ~1e-7 relative.
  np.testing.assert_allclose(stats["load_balance_loss"], E * (f * probs.mean(0)).sum(), rtol=1e-5)
  np.testing.assert_allclose(stats["load_balance_loss"], io["load_balancing_loss"], rtol=1e-5)
  np.testing.assert_allclose(stats["z_loss"], (lse ** 2).mean(), rtol=1e-5)
  np.testing.assert_allclose(stats["expert_load"], f / K, rtol=1e-6)
  np.testing.assert_allclose(stats["dropped_fraction"], 3 / idx.size, rtol=1e-6)


def test_parity_model_aux_is_the_weighted_layer_mean():
  model = moe.MoETransformer(vocab_size=32, num_layers=2, num_heads=2, d_model=16, mlp_dim=8,
                             num_experts=4, max_len=16, load_balance_weight=0.1,
                             z_loss_weight=0.01)
  tokens = np.random.default_rng(0).integers(0, 32, (2, 16))
  v = {"params": numpy_params(model, tokens, std=0.2)}

  @jax.jit
  def outputs(v, tokens):
    return (model.apply(v, tokens, tokens, method="fused_nll", with_aux=True),
            model.apply(v, tokens, with_aux=True), model.apply(v, tokens))
  ((nll, _), aux), (logits, aux2), plain = outputs(v, tokens)
  assert set(aux) == {"loss", *model.aux_metrics}
  for name in aux:   # the fused head and the logits path see the same routing
    np.testing.assert_allclose(aux[name], aux2[name], rtol=1e-6, err_msg=name)
  np.testing.assert_allclose(aux["loss"], 0.1 * aux["load_balance_loss"]
                             + 0.01 * aux["z_loss"], rtol=1e-6)
  np.testing.assert_allclose(sum(aux[f"expert_load/{e}"] for e in range(4)), 1.0, rtol=1e-6)
  np.testing.assert_array_equal(plain, logits)   # the logits alone without with_aux
  assert nll.shape == (2, 16)


MESHES = {"expert 8, dropless": (dict(data=1, expert=8), 0.0),
          "data 2 x expert 4, capacity": (dict(data=2, expert=4), 1.0)}


def runlocal_mesh(devices=None, **mesh):
  """shakespeare_moe:runlocal's mesh config with `mesh`'s sizes, its mesh and checked rules."""
  config = shakespeare_moe.get_config("runlocal")
  config.mesh.update(data=1, fsdp=1, tensor=1, expert=1)
  config.mesh.update(mesh)
  mesh = partitioning.make_mesh(config.mesh, devices)
  return config, mesh, partitioning.check_rules(config.mesh.rules, mesh)


def sharded_loss_and_grads(mod, params, x, mesh, rules):
  """A loss of the block's output plus its aux losses, its router stats and gradients,
  jitted with parameters sharded by their logical names and x by the batch axes."""
  boxed = jax.eval_shape(mod.init, jax.random.PRNGKey(0), x)["params"]
  shardings = (partitioning.state_sharding(mesh, boxed, rules), partitioning.batch_sharding(mesh))

  def fn(params, x):
    with jax.sharding.use_abstract_mesh(mesh.abstract_mesh), nn.logical_axis_rules(rules):
      y, stats = mod.apply({"params": params}, x)
    return jnp.mean(jnp.square(y)) + stats["load_balance_loss"] + stats["z_loss"], stats
  params, x = jax.device_put((params, x), shardings)
  out = jax.jit(jax.value_and_grad(fn, has_aux=True), in_shardings=shardings)(params, x)
  return shardings[0], jax.device_get(out)


@pytest.mark.parametrize("name", list(MESHES))
def test_parity_expert_parallel_matches_one_device(name):
  """An MoE block (8 experts) on 8 fake devices, the experts sharded over `expert` by
  shakespeare_moe's mesh.rules and the batch over data x expert, gives one device's loss,
  router stats and gradients; the config's model shards its stacked experts the same way."""
  mesh_sizes, capacity_factor = MESHES[name]
  mod = block(capacity_factor, num_experts=8, top_k=2, hidden=32)
  x = np.random.default_rng(0).standard_normal((16, 16, 32)).astype(np.float32)
  params = numpy_params(mod, x, std=0.3)
  _, (one, grads1) = sharded_loss_and_grads(mod, params, x, *runlocal_mesh(jax.devices()[:1])[1:])
  config, mesh, rules = runlocal_mesh(**mesh_sizes)
  shardings, (eight, grads8) = sharded_loss_and_grads(mod, params, x, mesh, rules)
  assert tuple(shardings["w1"].spec)[0] == "expert"
  assert shardings["w1"].shard_shape((8, 32, 32))[0] == 8 // mesh_sizes["expert"]
  dropped = one[1]["dropped_fraction"]
  assert dropped > 0 if capacity_factor else dropped == 0   # capacity 1.0 drops some
  # Another partitioning of the same float32 sums (as tests/test_partitioning.py): the loss
  # and stats within 1e-5 relative, each gradient within 1e-5 of its largest entry, as
  # entries near zero carry the rounding of the large ones (seen: 2e-7 for both).
  for (path, a), b in zip(jax.tree_util.tree_leaves_with_path((one, grads1)),
                          jax.tree.leaves((eight, grads8))):
    np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-5 * np.abs(a).max(),
                               err_msg=jax.tree_util.keystr(path))

  # The config's whole model: its scanned experts [L, E, D, F] shard on E as well.
  config.model.num_experts = 8
  model = models.build(config.model)
  boxed = jax.eval_shape(model.init, jax.random.PRNGKey(0), np.zeros((2, 8), np.int32))
  w1 = partitioning.state_sharding(mesh, boxed, rules)["params"]["layers"]["moe"]["w1"]
  assert tuple(w1.spec)[:2] == (None, "expert")


def test_parity_runlocal_trains_logs_expert_load_and_resumes_bit_exactly(tmp_path, tfds_dir):
  """Two launches: 8 steps with a checkpoint at 4, then a copy rolled back to step 4 and
  continued to 8: the same result, log lines and saved arrays. (--mode=sanity of the
  runlocal config is in tests/test_sanity.py, which runs every shipped config.)"""
  args = ["--config=configs/shakespeare_moe.py:runlocal", f"--config.data.tfds_dir={tfds_dir}",
          "--config.train.num_steps=8", "--config.train.log_every=4",
          "--config.train.eval_every=0", "--config.train.checkpoint_every=4"]
  ref, copy = str(tmp_path / "ref"), str(tmp_path / "copy")
  result = last_json(run_main(*args, f"--workdir={ref}").stdout)
  assert result["step"] == 8 and result["loss"] < np.log(256), result
  train = [r for r in read_metrics(ref) if r["split"] == "train" and "loss" in r]
  assert [r["step"] for r in train] == [0, 4, 8]   # step 0: the loss at init
  for r in train[1:]:   # the lm task logs the model's aux metrics on every train line
    loads = [r[f"expert_load/{e}"] for e in range(4)]
    assert abs(sum(loads) - 1) < 1e-5 and r["dropped_fraction"] == 0.0, r
    assert r["load_balance_loss"] > 0 and r["z_loss"] > 0
  assert "expert_load/0" in result            # and the held-out eval

  assert_rollback_ends_the_same(args, ref, copy, 4, 8, result)

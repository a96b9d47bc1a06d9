"""models/layers/flash_attention.py: the Pallas flash attention with dropout (in Pallas'
interpreter here) against XLA with the same keep mask, the mask's statistics, and the
Attention layer that uses it, on one device and on a mesh."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from models.layers import flash_attention as fa
from models.layers.attention import Attention


def reference(q, k, v, keep, rate, causal):
  """Attention in XLA with the given keep mask [B, N, T, S] and inverted dropout."""
  B, T, N, H = q.shape
  S, K = k.shape[1], k.shape[2]
  k, v = jnp.repeat(k, N // K, axis=2), jnp.repeat(v, N // K, axis=2)
  s = jnp.einsum("btnh,bsnh->bnts", q, k, preferred_element_type=jnp.float32) * H ** -0.5
  if causal:
    s = jnp.where(jnp.tril(jnp.ones((T, S), bool)), s, -jnp.inf)
  p = jnp.where(keep, jax.nn.softmax(s, -1) / (1 - rate), 0.0)
  return jnp.einsum("bnts,bsnh->btnh", p.astype(v.dtype), v)


@pytest.mark.parametrize("B, T, N, K, H, rate, causal", [
    (2, 128, 4, 2, 32, 0.2, True),     # two blocks each way, grouped K/V heads
    (1, 64, 2, 2, 16, 0.0, False)])    # no dropout, bidirectional
def test_kernels_match_xla_with_the_same_mask(B, T, N, K, H, rate, causal):
  r = np.random.default_rng(0)
  q, k, v = (jnp.asarray(r.normal(size=shape), jnp.float32)
             for shape in [(B, T, N, H), (B, T, K, H), (B, T, K, H)])
  seeds = jnp.asarray(r.integers(0, 2**32, (B, 1), dtype=np.uint32))
  keep = fa.keep_mask(seeds, N, T, T, rate)
  flash = lambda q, k, v: fa.attention(q, k, v, seeds, rate, causal, True)
  plain = lambda q, k, v: reference(q, k, v, keep, rate, causal)
  np.testing.assert_allclose(flash(q, k, v), plain(q, k, v), atol=2e-6)
  w = jnp.asarray(r.normal(size=q.shape), jnp.float32)
  grads = [jax.grad(lambda *a: (f(*a) * w).sum(), (0, 1, 2))(q, k, v) for f in (flash, plain)]
  for got, want in zip(*grads):
    np.testing.assert_allclose(got, want, atol=5e-6)


def test_keep_mask_is_uniform_and_independent():
  rate, N, T = 0.2, 2, 256
  seeds = jnp.arange(4, dtype=jnp.uint32)[:, None]        # neighbouring seeds, the worst case
  keep = np.asarray(fa.keep_mask(seeds, N, T, T, rate))   # [4, 2, 256, 256]
  assert abs(keep.mean() - (1 - rate)) < 0.004            # 524,288 draws: sd 0.00055
  x = keep.astype(np.float32) - keep.mean()
  corr = lambda a, b: float((a * b).mean() / x.var())
  for a, b in [(x[0], x[1]),                               # next seed
               (x[:, 0], x[:, 1]),                         # next head
               (x[..., :-1, :], x[..., 1:, :]),            # next query
               (x[..., :-1], x[..., 1:])]:                 # next key
    assert abs(corr(a, b)) < 0.01
  assert np.asarray(fa.keep_mask(seeds, N, T, T, 0.0)).all()
  assert fa.fits(64, 65536, 65536) and not fa.fits(64, 2 * 65536, 65536)   # 32-bit counters


def attention_layer(**kw):
  return Attention(num_heads=4, num_kv_heads=2, head_dim=16, **kw)


def test_the_layer_drops_per_step_and_matches_xla_without_dropout():
  x = jnp.asarray(np.random.default_rng(1).normal(size=(2, 64, 32)), jnp.float32)
  pos = jnp.broadcast_to(jnp.arange(64), (2, 64))
  xla = attention_layer(implementation="xla")
  params = xla.init(jax.random.key(0), x, pos)
  want = xla.apply(params, x, pos)
  pallas = attention_layer(implementation="pallas", dropout=0.3)
  np.testing.assert_allclose(pallas.apply(params, x, pos), want, atol=2e-6)   # deterministic
  training = pallas.clone(deterministic=False)
  run = lambda seed: training.apply(params, x, pos, rngs={"dropout": jax.random.key(seed)})
  a, b = run(1), run(2)
  np.testing.assert_array_equal(a, run(1))
  assert float(jnp.abs(a - b).max()) > 1e-2 and float(jnp.abs(a - want).max()) > 1e-2
  with pytest.raises(ValueError, match="attention_impl='pallas' needs head_dim"):
    attention_layer(implementation="pallas").apply(params, x[:, :48], pos[:, :48])
  with pytest.raises(ValueError, match="unknown"):
    attention_layer(implementation="flash").apply(params, x, pos)


def test_a_batch_split_over_devices_drops_as_one_device_does():
  """Under data x fsdp = 4 x 2 the kernels run per device's rows (kernels.over_rows); the
  seeds are drawn per example, so the output and gradients are the unsplit layer's."""
  import flax.linen as nn
  from configs import base
  from train_lib import partitioning
  config = base.get_config().mesh
  config.data, config.fsdp = 4, 2
  mesh = partitioning.make_mesh(config)
  x = jnp.asarray(np.random.default_rng(2).normal(size=(8, 64, 32)), jnp.float32)
  pos = jnp.broadcast_to(jnp.arange(64), (8, 64))
  layer = attention_layer(implementation="pallas", dropout=0.3, deterministic=False)
  params = layer.init(jax.random.key(0), x, pos)
  loss = lambda p, x: (layer.apply(p, x, pos, rngs={"dropout": jax.random.key(3)}) ** 2).sum()
  want = jax.value_and_grad(loss, (0, 1))(params, x)
  rows = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(("data", "fsdp")))
  split = jax.jit(jax.value_and_grad(loss, (0, 1)), in_shardings=(None, rows))
  with jax.sharding.use_abstract_mesh(mesh.abstract_mesh), nn.logical_axis_rules(
      config.rules):
    text = split.lower(params, x).as_text()
    got = split(params, x)
  assert "shard_map" in text or "manual" in text.lower()
  for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_allclose(g, w, rtol=2e-5, atol=2e-5)

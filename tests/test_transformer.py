"""The Transformer against plain references: attention in numpy, RoPE's properties,
KV-cache decoding against the full forward pass, the initial loss, overfitting one
batch, and every config switch training a few steps."""


import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from models.layers.attention import Attention, alibi_slopes, choose_implementation, rope
from models.layers.head_loss import fused_head_loss
from models.transformer import Transformer


def numpy_attention(q, k, v, causal=True, kv_len=None, bias=None):
  """q [B,T,N,H], k/v [B,S,K,H] in float64, grouped heads by repetition."""
  q, k, v = (np.asarray(a, np.float64) for a in (q, k, v))
  B, T, N, H = q.shape
  S, K = k.shape[1], k.shape[2]
  k, v = np.repeat(k, N // K, axis=2), np.repeat(v, N // K, axis=2)
  scores = np.einsum("btnh,bsnh->bnts", q, k) / np.sqrt(H)
  if bias is not None:
    scores = scores + bias
  mask = np.ones((B, 1, T, S), bool)
  if causal:
    mask &= np.tril(np.ones((T, S), bool))[None, None]
  if kv_len is not None:
    mask &= (np.arange(S)[None, :] < np.asarray(kv_len)[:, None])[:, None, None, :]
  scores = np.where(mask, scores, -np.inf)
  weights = np.exp(scores - scores.max(-1, keepdims=True))
  weights = np.where(mask, weights, 0)
  weights /= weights.sum(-1, keepdims=True)
  return np.einsum("bnts,bsnh->btnh", weights, v)


@pytest.mark.parametrize("num_heads, num_kv_heads", [(4, 4), (4, 2), (4, 1)])
@pytest.mark.parametrize("with_padding", [False, True])
def test_attention_matches_numpy(num_heads, num_kv_heads, with_padding):
  rng = np.random.default_rng(0)
  B, T, H = 2, 7, 8
  q = rng.normal(size=(B, T, num_heads, H)).astype(np.float32)
  k = rng.normal(size=(B, T, num_kv_heads, H)).astype(np.float32)
  v = rng.normal(size=(B, T, num_kv_heads, H)).astype(np.float32)
  kv_len = np.array([T, 4]) if with_padding else None
  got = jax.nn.dot_product_attention(q, k, v, is_causal=True, implementation="xla",
                                     key_value_seq_lengths=None if kv_len is None
                                     else jnp.asarray(kv_len, jnp.int32))
  want = numpy_attention(q, k, v, kv_len=kv_len)
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-5)


def test_attention_module_with_alibi_matches_numpy():
  B, T, D, N = 2, 6, 16, 4
  x = jax.random.normal(jax.random.PRNGKey(0), (B, T, D))
  pos = jnp.broadcast_to(jnp.arange(T), (B, T))
  attn = Attention(num_heads=N, num_kv_heads=2, head_dim=D // N, position="alibi")
  params = attn.init(jax.random.PRNGKey(1), x, pos)["params"]
  got = attn.apply({"params": params}, x, pos)
  p = jax.tree.map(np.asarray, nn.meta.unbox(params))   # init's leaves carry axis names
  q = np.einsum("btd,dnh->btnh", x, p["query"]["kernel"])
  k = np.einsum("btd,dnh->btnh", x, p["key"]["kernel"])
  v = np.einsum("btd,dnh->btnh", x, p["value"]["kernel"])
  rel = np.arange(T)[None, :] - np.arange(T)[:, None]
  bias = alibi_slopes(N)[None, :, None, None] * rel[None, None]
  heads = numpy_attention(q, k, v, bias=bias)
  want = np.einsum("btnh,nhd->btd", heads, p["out"]["kernel"])
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-4, atol=1e-5)


def test_auto_attention_picks_xla_off_gpu_and_refuses_unknown_names():
  # jax's own default (implementation=None) is XLA even on a GPU: "auto" decides itself.
  assert choose_implementation("auto", jnp.bfloat16, 64, False) == (
      "cudnn" if jax.devices()[0].platform == "gpu" else "xla")
  assert choose_implementation("auto", jnp.float32, 64, False) == "xla"
  assert choose_implementation("auto", jnp.bfloat16, 64, True) == "xla"
  assert choose_implementation("cudnn", jnp.float32, 64, False) == "cudnn"
  with pytest.raises(ValueError, match="attention_impl 'flash' unknown"):
    choose_implementation("flash", jnp.bfloat16, 64, False)


@pytest.mark.parametrize("causal", [True, False])
def test_odd_lengths_padded_to_even_give_the_unpadded_attention_and_gradients(causal):
  """attend_even (cuDNN's path for ViT's 197 tokens) pads to 198 and hides the padding by the
  sequence lengths: the same outputs and gradients as the unpadded attention, also with
  shorter key lengths."""
  from models.layers.attention import attend_even
  rng = np.random.default_rng(0)
  B, T, N, K, H = 2, 7, 4, 2, 8
  q, k, v = (jnp.asarray(rng.normal(size=(B, T, n, H)), jnp.float32) for n in (N, K, K))
  kv_len = jnp.array([T, 4])
  plain = jax.jit(lambda q, k, v: jax.nn.dot_product_attention(
      q, k, v, is_causal=causal, key_value_seq_lengths=kv_len, implementation="xla"))
  even = jax.jit(lambda q, k, v: attend_even(q, k, v, causal, kv_len, "xla"))
  np.testing.assert_allclose(even(q, k, v), plain(q, k, v), rtol=1e-5, atol=1e-6)
  w = jnp.asarray(rng.normal(size=(B, T, N, H)), jnp.float32)
  grads = lambda f: jax.jit(jax.grad(lambda *a: jnp.sum(f(*a) * w), argnums=(0, 1, 2)))(q, k, v)
  for got, want in zip(grads(even), grads(plain)):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_auto_attention_on_a_gpu_sends_odd_lengths_to_cudnn_padded(monkeypatch):
  from models.layers import attention, kernels
  monkeypatch.setattr(kernels, "gpu_16bit", lambda dtype: True)
  assert choose_implementation("auto", jnp.bfloat16, 64, False) == "cudnn"
  calls, real = [], attention.attend_even

  def on_xla(q, k, v, causal, kv_lengths, implementation):   # cuDNN is not on the CPU
    calls.append((q.shape[1], implementation))
    return real(q, k, v, causal, kv_lengths, "xla")

  monkeypatch.setattr(attention, "attend_even", on_xla)
  x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 197, 32)), jnp.bfloat16)
  layer = lambda impl: Attention(4, 4, 8, position="none", causal=False, implementation=impl,
                                 dtype=jnp.bfloat16)
  v = layer("xla").init(jax.random.PRNGKey(0), x, None)
  got = layer("auto").apply(v, x, None)
  assert calls == [(197, "cudnn")]                         # ViT-B/16's length, padded
  np.testing.assert_allclose(np.asarray(got, np.float32),
                             np.asarray(layer("xla").apply(v, x, None), np.float32), atol=2e-2)


@pytest.mark.parametrize("causal", [True, False])
def test_attention_dropout_zeroes_or_rescales_each_exact_probability(causal):
  """With one-hot values the output rows are the dropped probabilities themselves: each entry is
  0 or p / (1 - rate) for numpy's p, never a masked one, and about `rate` of them are 0."""
  rng = np.random.default_rng(0)
  B, T, N, K, rate = 2, 16, 4, 2, 0.25
  q = rng.normal(size=(B, T, N, T)).astype(np.float32)
  k = rng.normal(size=(B, T, K, T)).astype(np.float32)
  v = np.broadcast_to(np.eye(T, dtype=np.float32)[None, :, None, :], (B, T, K, T))
  kv_len = np.array([T, 11])
  attn = Attention(num_heads=N, num_kv_heads=K, head_dim=T, causal=causal, dropout=rate,
                   deterministic=False)
  got = np.asarray(attn.apply({}, q, k, v, None, None, jnp.asarray(kv_len),
                              method=Attention._attend_dropout,
                              rngs={"dropout": jax.random.PRNGKey(0)}))
  # numpy_attention scales by 1/sqrt(head_dim): here head_dim = T, as in the module
  want = numpy_attention(q, k, v, causal=causal, kv_len=kv_len)   # [B, T, N, S]
  kept = got != 0
  np.testing.assert_allclose(got[kept], want[kept] / (1 - rate), rtol=1e-5, atol=1e-6)
  assert not kept[want == 0].any()                                  # masked keys stay 0
  dropped = (~kept[want > 0]).mean()
  assert abs(dropped - rate) < 0.05, dropped
  again = attn.apply({}, q, k, v, None, None, jnp.asarray(kv_len),
                     method=Attention._attend_dropout, rngs={"dropout": jax.random.PRNGKey(0)})
  other = attn.apply({}, q, k, v, None, None, jnp.asarray(kv_len),
                     method=Attention._attend_dropout, rngs={"dropout": jax.random.PRNGKey(1)})
  np.testing.assert_array_equal(np.asarray(again), got)              # same key, same mask
  assert (np.asarray(other) != got).any()


def test_attention_dropout_is_unbiased_and_off_in_evaluation():
  B, T, D, N = 2, 6, 16, 4
  x = jax.random.normal(jax.random.PRNGKey(0), (B, T, D))
  pos = jnp.broadcast_to(jnp.arange(T), (B, T))
  plain = Attention(num_heads=N, num_kv_heads=2, head_dim=D // N, position="rope")
  params = plain.init(jax.random.PRNGKey(1), x, pos)["params"]
  want = plain.apply({"params": params}, x, pos)
  dropping = plain.clone(dropout=0.3, deterministic=False)
  evaluating = plain.clone(dropout=0.3, deterministic=True)
  np.testing.assert_array_equal(np.asarray(evaluating.apply({"params": params}, x, pos)),
                                np.asarray(want))
  outs = jax.vmap(lambda key: dropping.apply({"params": params}, x, pos,
                                             rngs={"dropout": key}))(
      jax.random.split(jax.random.PRNGKey(2), 4000))
  assert float(jnp.abs(outs[0] - want).max()) > 1e-2                # one sample does drop
  np.testing.assert_allclose(np.asarray(outs.mean(0)), np.asarray(want), atol=0.01)
  with pytest.raises(ValueError, match="no attention dropout"):
    dropping.clone(implementation="cudnn").apply({"params": params}, x, pos,
                                                 rngs={"dropout": jax.random.PRNGKey(0)})


def test_rope_preserves_norms_and_depends_only_on_relative_position():
  rng = np.random.default_rng(0)
  q = jnp.asarray(rng.normal(size=(1, 1, 1, 16)), jnp.float32)
  k = jnp.asarray(rng.normal(size=(1, 1, 1, 16)), jnp.float32)
  at = lambda x, p: rope(x, jnp.array([[p]]))
  for p in (0, 3, 100):
    np.testing.assert_allclose(jnp.linalg.norm(at(q, p)), jnp.linalg.norm(q), rtol=1e-5)
  score = lambda i, j: float(jnp.sum(at(q, i) * at(k, j)))
  assert score(5, 2) == pytest.approx(score(13, 10), rel=1e-4)
  assert score(7, 7) == pytest.approx(score(0, 0), rel=1e-4)
  assert score(5, 2) != pytest.approx(score(5, 4), rel=1e-3)


SMALL = dict(vocab_size=64, num_layers=2, num_heads=4, d_model=32, max_len=16)


@pytest.mark.parametrize("position", ["learned", "sinusoidal", "rope", "alibi", "none"])
def test_kv_cache_decoding_matches_full_forward(position):
  model = Transformer(**SMALL, position=position, num_kv_heads=2)
  tokens = jax.random.randint(jax.random.PRNGKey(0), (2, 12), 0, 64)
  params = model.init(jax.random.PRNGKey(1), tokens)["params"]
  full = jax.jit(model.apply)({"params": params}, tokens)
  cache = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(1), tokens[:, :1],
                                            decode=True)["cache"])
  cache = jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), cache)
  decode = jax.jit(lambda v, t: model.apply(v, t, decode=True, mutable=["cache"]))
  # Prefill 5 tokens at once, then one at a time.
  logits, v = decode({"params": params, "cache": cache}, tokens[:, :5])
  steps = [logits]
  for t in range(5, 12):
    logits, v = decode({"params": params, "cache": v["cache"]}, tokens[:, t:t + 1])
    steps.append(logits)
  np.testing.assert_allclose(np.concatenate(steps, 1), full, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("vocab", [256, 50304])
def test_initial_loss_is_near_log_vocabulary(vocab):
  model = Transformer(**{**SMALL, "vocab_size": vocab, "d_model": 64})
  tokens = jax.random.randint(jax.random.PRNGKey(0), (4, 17), 0, vocab)
  params = model.init(jax.random.PRNGKey(1), tokens[:, :-1])["params"]
  nll, _ = model.apply({"params": params}, tokens[:, :-1], tokens[:, 1:], method="fused_nll")
  assert abs(float(nll.mean()) / np.log(vocab) - 1) < 0.1


def test_fused_chunked_loss_matches_full_logits_with_gradients():
  h = jax.random.normal(jax.random.PRNGKey(0), (2, 16, 8))
  w = jax.random.normal(jax.random.PRNGKey(1), (8, 50))
  t = jax.random.randint(jax.random.PRNGKey(2), (2, 16), 0, 50)
  loss = lambda h, w, c: fused_head_loss(h, w, t, c)[0].mean()
  for chunk in (4, 8):
    np.testing.assert_allclose(loss(h, w, chunk), loss(h, w, 0), rtol=1e-6)
    g_chunk, g_full = jax.grad(loss, (0, 1))(h, w, chunk), jax.grad(loss, (0, 1))(h, w, 0)
    for a, b in zip(g_chunk, g_full):
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def train_steps(model, steps=30, lr=3e-3, same_batch=True, seed=0):
  tokens = jax.random.randint(jax.random.PRNGKey(seed), (4, 17), 0, model.vocab_size)
  params = model.init({"params": jax.random.PRNGKey(1), "dropout": jax.random.PRNGKey(2)},
                      tokens[:, :-1])["params"]
  tx = optax.adam(lr)
  opt = tx.init(params)

  @jax.jit
  def step(params, opt, tokens, i):
    def loss_fn(p):
      nll, _ = model.apply({"params": p}, tokens[:, :-1], tokens[:, 1:], train=True,
                           rngs={"dropout": jax.random.fold_in(jax.random.PRNGKey(3), i)},
                           method="fused_nll")
      return nll.mean()
    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt = tx.update(grads, opt, params)
    return optax.apply_updates(params, updates), opt, loss

  losses = []
  for i in range(steps):
    params, opt, loss = step(params, opt, tokens, i)
    losses.append(float(loss))
  return losses


def test_tiny_model_overfits_one_batch():
  losses = train_steps(Transformer(**SMALL), steps=150)
  assert losses[-1] < 0.1 * losses[0], losses[::10]


SWITCHES = {
    "position": ["learned", "sinusoidal", "rope", "alibi", "none"],
    "norm": ["layernorm", "rmsnorm"], "pre_norm": [True, False],
    "activation": ["gelu", "relu", "sq_relu", "swiglu"], "num_kv_heads": [0, 2, 1],
    "tie_embeddings": [True, False], "use_bias": [True, False], "dropout": [0.0, 0.1],
    "attention_dropout": [0.0, 0.2],
    "scaled_residual_init": [True, False], "scan_layers": [True, False],
    "remat": ["none", "full", "dots", "dots_no_batch"], "loss_chunk": [0, 4],
    "dtype": [jnp.float32, jnp.bfloat16], "attention_impl": ["auto", "xla"],
}
# Five models cover every value of every switch (value i of a switch goes to model i mod n).
COMBOS = [{k: vs[i % len(vs)] for k, vs in SWITCHES.items()} for i in range(5)]


def test_combos_cover_every_switch_value():
  for k, vs in SWITCHES.items():
    assert {repr(c[k]) for c in COMBOS} == {repr(v) for v in vs}, k


@pytest.mark.parametrize("combo", COMBOS, ids=lambda c: f"{c['position']}-{c['activation']}")
def test_every_switch_trains(combo):
  losses = train_steps(Transformer(**{**SMALL, **combo}), steps=8)
  assert np.isfinite(losses).all() and losses[-1] < losses[0], (combo, losses)


@pytest.mark.parametrize("vocab", [64, 4096])
def test_lookup_matches_take_with_gradients(vocab):
  # One-hot matmul below ONE_HOT_VOCAB, gather above: the same values and gradients.
  from models.layers.head_loss import lookup
  table = jax.random.normal(jax.random.PRNGKey(0), (vocab, 8))
  ids = jax.random.randint(jax.random.PRNGKey(1), (3, 5), 0, vocab)
  g = jax.random.normal(jax.random.PRNGKey(2), (3, 5, 8))
  f = lambda fn: jax.value_and_grad(lambda t: jnp.sum(fn(t, ids) * g))(table)
  (v1, g1), (v2, g2) = f(lookup), f(lambda t, i: jnp.take(t, i, axis=0))
  np.testing.assert_allclose(v1, v2, rtol=1e-6)
  np.testing.assert_allclose(g1, g2, rtol=1e-6, atol=1e-6)

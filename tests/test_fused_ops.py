"""The train step's hand-written pieces against the plain jax/flax they replace: values
and gradients of the one-pass logsumexp (XLA and Pallas), the recomputing GELU and the
Pallas LayerNorm (the kernels run in Pallas' interpreter on CPU: the same kernel code that
the GPU compiles)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from models.layers import fused_norm, fused_softmax
from models.layers.mlp import gelu_tanh
from models.layers.norm import choose_implementation
from models.layers.head_loss import fused_head_loss, logsumexp_and_max
from models.transformer import Transformer


def close(a, b, **tol):
  np.testing.assert_allclose(np.asarray(a, np.float32), np.asarray(b, np.float32), **tol)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_logsumexp_and_max_match_jax_with_gradients(dtype):
  logits = (jax.random.normal(jax.random.PRNGKey(0), (3, 5, 1000)) * 6).astype(dtype)
  w = jax.random.normal(jax.random.PRNGKey(1), (3, 5))
  lse, m = logsumexp_and_max(logits)
  close(lse, jax.nn.logsumexp(logits.astype(jnp.float32), -1), rtol=1e-6)
  close(m, logits.astype(jnp.float32).max(-1), rtol=0)
  grad = jax.grad(lambda l: (logsumexp_and_max(l)[0] * w).sum())(logits)
  ref = jax.grad(lambda l: (jax.nn.logsumexp(l.astype(jnp.float32), -1) * w).sum())(logits)
  assert grad.dtype == logits.dtype
  close(grad, ref, rtol=1e-2 if dtype == jnp.bfloat16 else 1e-5, atol=1e-6)


@pytest.mark.parametrize("impl", ["xla", "pallas"])
def test_logsumexp_and_max_with_masked_entries_and_an_empty_row(impl):
  logits = jax.random.normal(jax.random.PRNGKey(0), (11, 3000)) * 4
  logits = logits.at[:, ::3].set(-jnp.inf).at[2].set(-jnp.inf)     # row 2: all masked
  logits = logits.at[5, :2048].set(-jnp.inf)                        # row 5: first block empty
  lse, m = logsumexp_and_max(logits, impl)
  close(lse, jax.nn.logsumexp(logits, -1), rtol=1e-6)
  close(m, logits.max(-1), rtol=0)
  assert np.isneginf(lse[2]) and np.isfinite(np.delete(np.asarray(lse), 2)).all()
  if impl == "pallas":  # 4 rows per program (11 is not a multiple); blocks of 1024 columns
    m2, s2 = fused_softmax.max_sumexp(logits, True, rows=4, cols=1024)
    close(m2, m, rtol=0)
    close(m2 + jnp.log(s2), lse, rtol=1e-6)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_pallas_softmax_statistics_match_xla_with_gradients(dtype):
  logits = (jax.random.normal(jax.random.PRNGKey(0), (2, 7, 5000)) * 6).astype(dtype)
  w = jax.random.normal(jax.random.PRNGKey(1), (2, 7))
  for a, b in zip(logsumexp_and_max(logits, "pallas"), logsumexp_and_max(logits, "xla")):
    close(a, b, rtol=1e-6)
  loss = lambda impl: lambda l: (logsumexp_and_max(l, impl)[0] * w).sum()
  close(jax.grad(loss("pallas"))(logits), jax.grad(loss("xla"))(logits),
        rtol=1e-2 if dtype == jnp.bfloat16 else 2e-5, atol=1e-9)   # bf16: one rounding


def test_head_loss_nll_and_correct_match_a_plain_softmax():
  h = jax.random.normal(jax.random.PRNGKey(0), (2, 16, 8))
  w = jax.random.normal(jax.random.PRNGKey(1), (8, 50)) * 3
  logits = jnp.einsum("btd,dv->btv", h, w)
  t = jnp.where(jax.random.bernoulli(jax.random.PRNGKey(2), 0.5, (2, 16)), logits.argmax(-1),
                jax.random.randint(jax.random.PRNGKey(3), (2, 16), 0, 50))
  nll, correct = fused_head_loss(h, w, t, 0)
  ref_nll = -jnp.take_along_axis(jax.nn.log_softmax(logits), t[..., None], -1)[..., 0]
  close(nll, ref_nll, rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(correct, (logits.argmax(-1) == t).astype(np.float32))
  assert 0 < float(correct.mean()) < 1


def test_gelu_tanh_matches_jax_with_gradients():
  x = jax.random.normal(jax.random.PRNGKey(0), (64, 96)) * 4
  close(gelu_tanh(x), jax.nn.gelu(x, approximate=True), rtol=1e-6, atol=1e-7)
  f = lambda g: lambda x: (g(x) * jnp.cos(x)).sum()
  close(jax.grad(f(gelu_tanh))(x), jax.grad(f(lambda x: jax.nn.gelu(x, approximate=True)))(x),
        rtol=1e-5, atol=1e-6)
  xb = x.astype(jnp.bfloat16)
  assert gelu_tanh(xb).dtype == jax.grad(lambda x: gelu_tanh(x).sum().astype(jnp.float32))(
      xb).dtype == jnp.bfloat16


# rows not a multiple of the kernel's ROWS; D not a power of two (padded in registers)
@pytest.mark.parametrize("shape,dtype", [((3, 5, 24), jnp.float32), ((2, 13, 48), jnp.bfloat16)])
def test_pallas_layer_norm_matches_flax_with_gradients(shape, dtype):
  keys = jax.random.split(jax.random.PRNGKey(0), 5)
  x = (jax.random.normal(keys[0], shape) * 2 + 0.5).astype(dtype)
  delta = jax.random.normal(keys[1], shape).astype(dtype)
  scale = jax.random.normal(keys[2], shape[-1:]) * 0.1 + 1
  w1, w2 = jax.random.normal(keys[3], shape), jax.random.normal(keys[4], shape)
  ln = nn.LayerNorm(epsilon=1e-5, use_bias=False, dtype=dtype)
  flax_ln = lambda x, s: ln.apply({"params": {"scale": s}}, x)
  tol = dict(rtol=2e-2, atol=2e-2) if dtype == jnp.bfloat16 else dict(rtol=1e-5, atol=1e-5)

  plain = lambda f: lambda x, s: (f(x, s).astype(jnp.float32) * w1).sum()
  ours = lambda x, s: fused_norm.layer_norm(x, s, 1e-5, True)
  close(ours(x, scale), flax_ln(x, scale), **tol)
  for a, b in zip(jax.grad(plain(ours), (0, 1))(x, scale),
                  jax.grad(plain(flax_ln), (0, 1))(x, scale)):
    close(a, b, **tol)

  def added(f):
    def loss(x, d, s):
      r, y = f(x, d, s)
      return (r.astype(jnp.float32) * w1).sum() + (y.astype(jnp.float32) * w2).sum()
    return loss
  ours_add = lambda x, d, s: fused_norm.add_layer_norm(x, d, s, 1e-5, True)
  flax_add = lambda x, d, s: (x + d, flax_ln(x + d, s))
  for a, b in zip(ours_add(x, delta, scale), flax_add(x, delta, scale)):
    assert a.dtype == dtype
    close(a, b, **tol)
  for a, b in zip(jax.grad(added(ours_add), (0, 1, 2))(x, delta, scale),
                  jax.grad(added(flax_add), (0, 1, 2))(x, delta, scale)):
    close(a, b, **tol)


def test_transformer_with_pallas_kernels_matches_xla():
  # scanned layers here; unscanned ones (the GPT-2 config's) in test_partitioning's mesh test
  kw = dict(vocab_size=64, num_layers=2, num_heads=2, d_model=32, max_len=16, scan_layers=True)
  tokens = jax.random.randint(jax.random.PRNGKey(0), (2, 9), 0, 64)
  params = Transformer(**kw).init(jax.random.PRNGKey(1), tokens[:, :-1])["params"]

  def loss_and_grads(impl):
    model = Transformer(**kw, norm_impl=impl, loss_impl=impl)
    loss = lambda p: model.apply({"params": p}, tokens[:, :-1], tokens[:, 1:],
                                 method="fused_nll")[0]
    return jax.value_and_grad(lambda p: loss(p).mean())(params)
  (l1, g1), (l2, g2) = loss_and_grads("xla"), loss_and_grads("pallas")
  close(l2, l1, rtol=1e-6)
  for a, b in zip(jax.tree.leaves(g2), jax.tree.leaves(g1)):
    close(a, b, rtol=1e-4, atol=1e-6)


def test_norm_implementation_choice():
  assert choose_implementation("auto", "layernorm", jnp.bfloat16, False) == (
      "pallas" if jax.devices()[0].platform == "gpu" else "xla")
  assert choose_implementation("auto", "rmsnorm", jnp.bfloat16, False) == "xla"
  assert choose_implementation("auto", "layernorm", jnp.bfloat16, True) == "xla"
  with pytest.raises(ValueError, match="norm_impl 'triton' unknown"):
    choose_implementation("triton", "layernorm", jnp.float32, False)
  with pytest.raises(ValueError, match="use norm_impl='xla'"):
    choose_implementation("pallas", "rmsnorm", jnp.float32, False)

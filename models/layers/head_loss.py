"""The output head and its cross-entropy, fused: what a task calls for per-position NLL.

    nll_BxT, correct_BxT = fused_head_loss(h_BxTxD, w_DxV, targets_BxT, chunk=0, impl="xla")
    lse, max_ = logsumexp_and_max(logits_BxTxV, impl="xla")   # one read of the logits
    x_BxTxD = lookup(table_VxD, ids_BxT)                      # a gather with a fast gradient

With chunk > 0 the head and the loss run over rematerialised chunks of positions, so the
[B,T,V] logits never exist whole. A model offers this to its tasks as a method (the
Transformer's `fused_nll`); the task decides what the NLL is summed over.
"""

import functools

import jax
import jax.numpy as jnp

from models.layers import fused_softmax, kernels


# Up to this vocabulary size, row lookups are one-hot matmuls: the gradient of a gather
# is a scatter-add, and thousands of tokens adding into a few hundred rows serialise on
# atomics (28 ms of a 48 ms step for Shakespeare's 256 bytes on an H100).
ONE_HOT_VOCAB = 2048


def lookup(table_VxD, ids):
  """table[ids] whose gradient stays fast for small and large vocabularies."""
  if table_VxD.shape[0] <= ONE_HOT_VOCAB:
    one_hot = jax.nn.one_hot(ids, table_VxD.shape[0], dtype=table_VxD.dtype)
    return jnp.matmul(one_hot, table_VxD, precision=jax.lax.Precision.HIGHEST)  # exact
  return jnp.take(table_VxD, ids, axis=0)


def _online_max_sumexp(x):
  """(max, sum(exp(x - max))) over the last axis in one pass over x: a variadic reduction
  whose combiner rescales the running sum when the running max grows."""
  def combine(a, b):
    (m1, s1), (m2, s2) = a, b
    big, small = jnp.maximum(m1, m2), jnp.minimum(m1, m2)
    # One exp per combine; two empty partial results (max -inf) combine to an empty one.
    scaled = jnp.exp(jnp.where(big > -jnp.inf, small - big, 0.0))
    return big, jnp.where(m1 >= m2, s1 + s2 * scaled, s2 + s1 * scaled)
  x = x.astype(jnp.float32)
  return jax.lax.reduce((x, jnp.ones_like(x)), (-jnp.inf, jnp.float32(0)), combine,
                        (x.ndim - 1,))


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def logsumexp_and_max(logits, impl: str = "xla"):
  """Float32 logsumexp and max over the last axis, reading the logits once (jax's
  logsumexp reads them twice: a max, then a sum of exponentials); differentiable in the
  logsumexp, the max is a statistic. impl "pallas": fused_softmax's kernel."""
  if impl not in ("pallas", "xla"):
    raise ValueError(f"logsumexp_and_max: impl {impl!r} unknown; use 'pallas' or 'xla'")
  if impl == "pallas":
    fn = lambda x: fused_softmax.max_sumexp(x, kernels.interpret())
    m, s = kernels.over_rows(fn, logits)
  else:
    m, s = _online_max_sumexp(logits)
  return m + jnp.log(s), m


def _lse_fwd(logits, impl):
  lse, m = logsumexp_and_max(logits, impl)
  return (lse, m), (logits, lse)


def _lse_bwd(impl, res, g):
  logits, lse = res
  g_lse, _ = g
  p = jnp.exp(logits.astype(jnp.float32) - lse[..., None])   # softmax, one fused pass
  return ((p * g_lse[..., None]).astype(logits.dtype),)


logsumexp_and_max.defvjp(_lse_fwd, _lse_bwd)


def _head_loss(h_BxCxD, w_DxV, targets_BxC, impl="xla"):
  # Logits are stored in the compute dtype (bf16 under mixed precision, as in PyTorch's
  # autocast); the softmax statistics are taken in float32.
  logits_BxCxV = jnp.einsum("bcd,dv->bcv", h_BxCxD, w_DxV)
  lse_BxC, max_BxC = logsumexp_and_max(logits_BxCxV, impl)
  # The target's logit from its own column of the head, not from a further pass over the
  # [B,C,V] logits; rounded to the logits' dtype so that nll >= 0 holds.
  w_BxCxD = lookup(w_DxV.T, targets_BxC)
  target_logit_BxC = jnp.einsum("bcd,bcd->bc", h_BxCxD.astype(jnp.float32),
                                w_BxCxD.astype(jnp.float32))
  target_logit_BxC = target_logit_BxC.astype(logits_BxCxV.dtype).astype(jnp.float32)
  # Correct: the target's own logit (a gather, no pass over the logits) is the maximum.
  # Unlike argmax, a target tied for the maximum counts as correct.
  picked_BxC = jnp.take_along_axis(jax.lax.stop_gradient(logits_BxCxV),
                                   targets_BxC[..., None], axis=-1)[..., 0]
  correct_BxC = (picked_BxC.astype(jnp.float32) >= max_BxC).astype(jnp.float32)
  return lse_BxC - target_logit_BxC, correct_BxC


def fused_head_loss(h_BxTxD, w_DxV, targets_BxT, chunk: int, impl: str = "xla"):
  """Per-position NLL and correctness; with chunk > 0 over rematerialised T-chunks
  (an unrolled loop: XLA schedules it better than a scan)."""
  B, T, D = h_BxTxD.shape
  if not chunk or chunk >= T:
    return _head_loss(h_BxTxD, w_DxV, targets_BxT, impl)
  if T % chunk:
    raise ValueError(f"loss_chunk={chunk} must divide the sequence length {T}")
  piece = jax.checkpoint(functools.partial(_head_loss, impl=impl))
  parts = [piece(h_BxTxD[:, i:i + chunk], w_DxV, targets_BxT[:, i:i + chunk])
           for i in range(0, T, chunk)]
  return (jnp.concatenate([p[0] for p in parts], axis=1),
          jnp.concatenate([p[1] for p in parts], axis=1))

"""Flash attention with dropout on the probabilities, as Pallas (Triton) kernels for GPUs.

    out = attention(q, k, v, seeds, rate=0.2)        # q [B, T, N, H], k/v [B, S, K, H], N % K == 0
    out = attention(q, k, v, seeds, 0.2, causal=False, interpret=True)   # any backend (tests)
    keep = keep_mask(seeds, N, T, S, 0.2)            # the kernels' mask [B, N, T, S] (tests)

seeds [B, 1] uint32 is drawn each step from the model's dropout stream, one per example, so a
batch split over devices keeps independent masks. jax's cuDNN attention fixes its dropout seed
at compile time; XLA writes the [B, N, T, S] probabilities and a mask of the same size to
memory, forward and backward. Here each program holds a [BLOCK, H] block of queries (or keys,
backward) and walks the other side in blocks with the online softmax; the keep bit of entry
(b, n, t, s) is a counter hash of (seeds[b], n, t, s), recomputed by the backward kernels
rather than stored. Logits, softmax and accumulators are float32; the probabilities meet V in
the input dtype, as jax.nn.dot_product_attention's XLA computation does.

The backward pass is two kernels: dK and dV per key block (looping over queries), dQ per query
block (looping over keys). For grouped K/V heads, dK and dV are computed per query head and
summed over each group. T and S must be multiples of BLOCK, H a power of two from 16 to 128.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

BLOCK = 64
_MASKED = -1e30     # a finite "minus infinity": a fully masked block stays NaN-free


def fits(head_dim: int, q_len: int, kv_len: int) -> bool:
  return (head_dim in (16, 32, 64, 128) and q_len % BLOCK == 0 and kv_len % BLOCK == 0
          and q_len * kv_len <= 2**32)    # each (t, s) of a head its own 32-bit counter


def _mix(x):
  """A 32-bit integer hash with full avalanche (Wellons' lowbias32)."""
  x = x ^ (x >> 16)
  x = x * np.uint32(0x7FEB352D)
  x = x ^ (x >> 15)
  x = x * np.uint32(0x846CA68B)
  return x ^ (x >> 16)


def _key(seed, n):
  """The hash key of head n's mask; seed is [1] or a scalar uint32 (once per program)."""
  return _mix(seed.astype(jnp.uint32) ^ _mix(jnp.asarray(n).astype(jnp.uint32)
                                             + np.uint32(0x9E3779B9)))


def _keep(key, rows, cols, kv_len, rate):
  """Keep bits [len(rows), len(cols)]: the counter t * S + s (below 2**32: fits()) hashed
  under the head's key."""
  u32 = lambda x: jnp.asarray(x).astype(jnp.uint32)
  index = u32(rows)[:, None] * kv_len + u32(cols)[None, :]
  threshold = np.uint32(min(int(rate * 2.0**32), 2**32 - 1))
  return _mix(index ^ key) >= threshold


def keep_mask(seeds, num_heads, q_len, kv_len, rate):
  """The kernels' keep bits [B, N, T, S] in plain jnp (for tests and reference)."""
  rows, cols = jnp.arange(q_len), jnp.arange(kv_len)
  per_head = lambda seed, n: _keep(_key(seed, n), rows, cols, kv_len, rate)
  return jax.vmap(lambda s: jax.vmap(lambda n: per_head(s, n))(jnp.arange(num_heads)))(
      seeds[:, 0])


def _logits(q, k, rows, cols, scale, causal):
  s = plgpu.dot(q, k.T) * scale
  if causal:
    s = jnp.where(rows[:, None] >= cols[None, :], s, _MASKED)
  return s


def _fwd_kernel(seed_ref, q_ref, k_ref, v_ref, o_ref, lse_ref, *, scale, causal, rate, q_len,
                kv_len):
  i, n = pl.program_id(0), pl.program_id(2)
  key = _key(seed_ref[...], n)
  q = q_ref[...]
  rows = i * BLOCK + jnp.arange(BLOCK)
  H = q.shape[-1]

  def body(j, carry):
    acc, m, l = carry
    cols = j * BLOCK + jnp.arange(BLOCK)
    k = k_ref[pl.ds(j * BLOCK, BLOCK), :]
    v = v_ref[pl.ds(j * BLOCK, BLOCK), :]
    s = _logits(q, k, rows, cols, scale, causal)
    m_new = jnp.maximum(m, s.max(axis=1))
    p = jnp.exp(s - m_new[:, None])
    alpha = jnp.exp(m - m_new)
    l = l * alpha + p.sum(axis=1)       # the softmax's denominator counts dropped entries
    if rate > 0:
      p = jnp.where(_keep(key, rows, cols, kv_len, rate), p, 0.0)
    acc = acc * alpha[:, None] + plgpu.dot(p.astype(v.dtype), v)
    return acc, m_new, l

  stop = (i + 1) if causal else kv_len // BLOCK    # causal: blocks at or before the diagonal
  acc, m, l = jax.lax.fori_loop(
      0, stop, body, (jnp.zeros((BLOCK, H), jnp.float32),
                      jnp.full((BLOCK,), _MASKED, jnp.float32), jnp.zeros((BLOCK,), jnp.float32)))
  o_ref[...] = (acc / (l[:, None] * (1.0 - rate))).astype(o_ref.dtype)
  lse_ref[...] = m + jnp.log(l)


def _dkv_kernel(seed_ref, q_ref, k_ref, v_ref, do_ref, lse_ref, d_ref, dk_ref, dv_ref, *, scale,
                causal, rate, q_len, kv_len):
  j, n = pl.program_id(0), pl.program_id(2)
  key = _key(seed_ref[...], n)
  k, v = k_ref[...], v_ref[...]
  cols = j * BLOCK + jnp.arange(BLOCK)
  H = k.shape[-1]

  def body(i, carry):
    dk, dv = carry
    rows = i * BLOCK + jnp.arange(BLOCK)
    q = q_ref[pl.ds(i * BLOCK, BLOCK), :]
    do = do_ref[pl.ds(i * BLOCK, BLOCK), :]
    lse = lse_ref[pl.ds(i * BLOCK, BLOCK)]
    d = d_ref[pl.ds(i * BLOCK, BLOCK)]
    p = jnp.exp(_logits(q, k, rows, cols, scale, causal) - lse[:, None])
    dp = plgpu.dot(do, v.T)
    if rate > 0:
      keep = _keep(key, rows, cols, kv_len, rate)
      z = jnp.where(keep, 1.0 / (1.0 - rate), 0.0)
      dv = dv + plgpu.dot((p * z).astype(do.dtype).T, do)
      dp = dp * z
    else:
      dv = dv + plgpu.dot(p.astype(do.dtype).T, do)
    ds = p * (dp - d[:, None]) * scale
    dk = dk + plgpu.dot(ds.astype(q.dtype).T, q)
    return dk, dv

  start = j if causal else 0      # causal: the query blocks at or after the key block
  zeros = jnp.zeros((BLOCK, H), jnp.float32)
  dk, dv = jax.lax.fori_loop(start, q_len // BLOCK, body, (zeros, zeros))
  dk_ref[...] = dk.astype(dk_ref.dtype)
  dv_ref[...] = dv.astype(dv_ref.dtype)


def _dq_kernel(seed_ref, q_ref, k_ref, v_ref, do_ref, lse_ref, d_ref, dq_ref, *, scale, causal,
               rate, q_len, kv_len):
  i, n = pl.program_id(0), pl.program_id(2)
  key = _key(seed_ref[...], n)
  q, do = q_ref[...], do_ref[...]
  lse, d = lse_ref[...], d_ref[...]
  rows = i * BLOCK + jnp.arange(BLOCK)

  def body(j, dq):
    cols = j * BLOCK + jnp.arange(BLOCK)
    k = k_ref[pl.ds(j * BLOCK, BLOCK), :]
    v = v_ref[pl.ds(j * BLOCK, BLOCK), :]
    p = jnp.exp(_logits(q, k, rows, cols, scale, causal) - lse[:, None])
    dp = plgpu.dot(do, v.T)
    if rate > 0:
      dp = jnp.where(_keep(key, rows, cols, kv_len, rate), dp / (1.0 - rate), 0.0)
    ds = p * (dp - d[:, None]) * scale
    return dq + plgpu.dot(ds.astype(k.dtype), k)

  stop = (i + 1) if causal else kv_len // BLOCK
  dq = jax.lax.fori_loop(0, stop, body, jnp.zeros(q.shape, jnp.float32))
  dq_ref[...] = dq.astype(dq_ref.dtype)


def _specs(q, k):
  """BlockSpecs over grid (block, b, n): one block of rows, all rows, per-row statistics."""
  H, group = q.shape[-1], q.shape[2] // k.shape[2]
  block = lambda: pl.BlockSpec((None, BLOCK, None, H), lambda x, b, n: (b, x, n, 0))
  block_kv = lambda: pl.BlockSpec((None, BLOCK, None, H), lambda x, b, n: (b, x, n // group, 0))
  whole_q = lambda: pl.BlockSpec((None, q.shape[1], None, H), lambda x, b, n: (b, 0, n, 0))
  whole_kv = lambda: pl.BlockSpec((None, k.shape[1], None, H),
                                  lambda x, b, n: (b, 0, n // group, 0))
  stat = lambda: pl.BlockSpec((None, None, BLOCK), lambda x, b, n: (b, n, x))
  whole_stat = lambda: pl.BlockSpec((None, None, q.shape[1]), lambda x, b, n: (b, n, 0))
  seed = pl.BlockSpec((None, 1), lambda x, b, n: (b, 0))
  return block, block_kv, whole_q, whole_kv, stat, whole_stat, seed


def _call(kernel, grid, in_specs, out_specs, out_shape, interpret, args, matmuls):
  """matmuls: how many [B, N, T, S, H] products to count for the kernel, as
  train_lib/flops.py counts cuDNN's attention (causal in full, 2 FLOPs each; forward QK^T
  and PV, the backward pass 2x the forward, recomputation not counted)."""
  q, k = args[1], args[2]
  B, T, N, H = q.shape
  cost = pl.CostEstimate(flops=2 * matmuls * B * N * T * k.shape[1] * H,
                         transcendentals=B * N * T * k.shape[1],
                         bytes_accessed=sum(x.size * x.dtype.itemsize for x in args))
  return pl.pallas_call(kernel, grid=grid, in_specs=in_specs, out_specs=out_specs,
                        out_shape=out_shape, interpret=interpret, cost_estimate=cost,
                        name=f"flash_attention{kernel.func.__name__}",
                        compiler_params=plgpu.CompilerParams(num_warps=4, num_stages=2))(*args)


def _forward(q, k, v, seeds, rate, causal, interpret):
  B, T, N, H = q.shape
  S = k.shape[1]
  block, _, _, whole_kv, stat, _, seed = _specs(q, k)
  kernel = functools.partial(_fwd_kernel, scale=H ** -0.5, causal=causal, rate=rate,
                             q_len=T, kv_len=S)
  out, lse = _call(kernel, (T // BLOCK, B, N), [seed, block(), whole_kv(), whole_kv()],
                   [block(), stat()], [jax.ShapeDtypeStruct(q.shape, q.dtype),
                                      jax.ShapeDtypeStruct((B, N, T), jnp.float32)],
                   interpret, (seeds, q, k, v), matmuls=2)
  return out, (q, k, v, seeds, out, lse)


def _backward(rate, causal, interpret, res, do):
  q, k, v, seeds, out, lse = res
  B, T, N, H = q.shape
  S, K = k.shape[1], k.shape[2]
  block, block_kv, whole_q, whole_kv, stat, whole_stat, seed = _specs(q, k)
  d = jnp.einsum("btnh,btnh->bnt", do.astype(jnp.float32), out.astype(jnp.float32))
  common = dict(scale=H ** -0.5, causal=causal, rate=rate, q_len=T, kv_len=S)
  per_head = jax.ShapeDtypeStruct((B, S, N, H), k.dtype)
  dk, dv = _call(functools.partial(_dkv_kernel, **common), (S // BLOCK, B, N),
                 [seed, whole_q(), block_kv(), block_kv(), whole_q(), whole_stat(),
                  whole_stat()], [block(), block()], [per_head, per_head], interpret,
                 (seeds, q, k, v, do, lse, d), matmuls=2)   # dV and dK
  dq = _call(functools.partial(_dq_kernel, **common), (T // BLOCK, B, N),
             [seed, block(), whole_kv(), whole_kv(), block(), stat(), stat()], block(),
             jax.ShapeDtypeStruct(q.shape, q.dtype), interpret, (seeds, q, k, v, do, lse, d),
             matmuls=2)   # dP and dQ: the backward pass counts 2x the forward
  if K != N:     # grouped K/V: each kv head's gradient is its query heads' sum
    dk = dk.astype(jnp.float32).reshape(B, S, K, N // K, H).sum(3).astype(k.dtype)
    dv = dv.astype(jnp.float32).reshape(B, S, K, N // K, H).sum(3).astype(v.dtype)
  return dq, dk, dv, np.zeros(seeds.shape, jax.dtypes.float0)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5, 6))
def attention(q, k, v, seeds, rate: float = 0.0, causal: bool = True,
              interpret: bool = False):
  """softmax(q k^T / sqrt(H)) with inverted dropout at `rate` on the probabilities, times v:
  [B, T, N, H]."""
  return _forward(q, k, v, seeds, rate, causal, interpret)[0]


attention.defvjp(_forward, _backward)

"""Multi-head attention with grouped key/value heads, positional schemes and a KV cache.

    attn = Attention(num_heads=12, num_kv_heads=4, head_dim=64, position="rope")
    y_BxTxD = attn(x_BxTxD, positions_BxT)                       # causal, training
    y_BxTxD = attn(x_BxTxD, positions_BxT, mask_BxT=mask)        # padding keys hidden
    Attention(..., causal=False)                                 # bidirectional (encoders)
    Attention(..., dropout=0.1, deterministic=False)             # attention-probability dropout
    y_BxTxD, vars = attn.apply(v, x, pos, decode=True, mutable=["cache"])  # one step of decoding

The kernel is jax.nn.dot_product_attention: cuDNN flash attention on GPU when the
shapes and dtypes allow ("auto" or "cudnn"), XLA elsewhere ("xla"). Dropout on the attention
probabilities (training only) cannot use jax's cuDNN attention, which takes its dropout seed
as a compile-time constant and would drop the same entries every step: "auto" then runs
models/layers/flash_attention.py's flash attention, with the dropout in its Pallas kernels,
on a GPU where its shapes fit, else computes the probabilities explicitly in XLA. "pallas"
asks for those kernels with or without dropout (in Pallas' interpreter off the GPU).
"""

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from models.layers import flash_attention, kernels
from models.layers.fp8 import FP8_EINSUM
from models.layers.named import named

IMPLEMENTATIONS = ("auto", "cudnn", "xla", "pallas")


def _check_known(requested: str):
  if requested not in IMPLEMENTATIONS:
    raise ValueError(f"attention_impl {requested!r} unknown; use one of {IMPLEMENTATIONS}")


def choose_implementation(requested: str, dtype, head_dim: int, has_bias: bool) -> str:
  """"auto" -> cuDNN flash attention where it applies (a GPU, 16-bit inputs, head_dim a
  multiple of 8 up to 128, no additive bias or mask), else XLA. jax's own default (None) is
  XLA. Odd lengths go to cuDNN padded by one position (attend_even)."""
  _check_known(requested)
  if requested != "auto":
    return requested
  cudnn_ok = (kernels.gpu_16bit(dtype) and head_dim % 8 == 0 and head_dim <= 128 and
              not has_bias)
  return "cudnn" if cudnn_ok else "xla"


def attend_even(q_BxTxNxH, k_BxSxKxH, v_BxSxKxH, causal: bool, kv_lengths_B, implementation):
  """jax.nn.dot_product_attention on lengths padded to even ones, the padding hidden by the
  query and key lengths and the padded query rows dropped. jax 0.11.2 refuses odd lengths
  when training through cuDNN ("Unsupported sequence length Q 197, KV 197" for ViT-B/16: its
  check takes the empty array it passes for "no bias" for a bias), so odd lengths run as
  the next even ones."""
  B, T = q_BxTxNxH.shape[:2]
  S = k_BxSxKxH.shape[1]
  pad = lambda x: jnp.pad(x, ((0, 0), (0, x.shape[1] % 2), (0, 0), (0, 0)))
  kv_lengths_B = (jnp.full((B,), S, jnp.int32) if kv_lengths_B is None
                  else jnp.asarray(kv_lengths_B, jnp.int32))
  out_BxTxNxH = jax.nn.dot_product_attention(
      pad(q_BxTxNxH), pad(k_BxSxKxH), pad(v_BxSxKxH), is_causal=causal,
      query_seq_lengths=jnp.full((B,), T, jnp.int32), key_value_seq_lengths=kv_lengths_B,
      implementation=implementation)
  return out_BxTxNxH[:, :T]


def rope(x_BxTxNxH, positions_BxT, base: float = 10000.0):
  """Rotary position embedding (Su et al., 2021), rotate-half form."""
  h = x_BxTxNxH.shape[-1]
  inv_freq_F = 1.0 / (base ** (jnp.arange(0, h, 2, dtype=jnp.float32) / h))
  angles_BxTxF = positions_BxT[..., None].astype(jnp.float32) * inv_freq_F
  sin, cos = jnp.sin(angles_BxTxF)[:, :, None, :], jnp.cos(angles_BxTxF)[:, :, None, :]
  x1, x2 = jnp.split(x_BxTxNxH.astype(jnp.float32), 2, axis=-1)
  out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return out.astype(x_BxTxNxH.dtype)


def alibi_slopes(num_heads: int):
  """Head slopes of ALiBi (Press et al., 2021): a geometric sequence from 2^(-8/N)."""
  return np.array([2.0 ** (-8.0 * (i + 1) / num_heads) for i in range(num_heads)], np.float32)


def alibi_bias(num_heads, q_positions_BxT, k_positions_BxS):
  rel_BxTxS = (k_positions_BxS[:, None, :] - q_positions_BxT[:, :, None]).astype(jnp.float32)
  return jnp.asarray(alibi_slopes(num_heads))[None, :, None, None] * rel_BxTxS[:, None]


class Projection(nn.Module):
  """x @ kernel as an einsum, the kernel with its full shape and logical axis names (flax's
  DenseGeneral draws and names a flattened 2-D kernel); bias over the output axes."""
  equation: str
  kernel_shape: tuple
  names: tuple
  kernel_init: Callable
  use_bias: bool
  dtype: Any
  fp8: bool = False

  @nn.compact
  def __call__(self, x):
    kernel = self.param("kernel", named(self.kernel_init, *self.names), self.kernel_shape)
    einsum = FP8_EINSUM(name="fp8") if self.fp8 else jnp.einsum
    y = einsum(self.equation, x.astype(self.dtype), kernel.astype(self.dtype))
    if self.use_bias:
      inputs, out = self.equation.split("->")
      k = inputs.split(",")[1]
      shape = tuple(self.kernel_shape[k.index(c)] for c in out if c in k)
      y = y + self.param("bias", nn.initializers.zeros, shape).astype(self.dtype)
    return y


class Attention(nn.Module):
  num_heads: int
  num_kv_heads: int
  head_dim: int
  position: str = "rope"           # rope | alibi | anything else: no change here
  rope_base: float = 10000.0
  implementation: str = "auto"     # auto | cudnn | xla | pallas
  use_bias: bool = False
  max_len: int = 1024              # KV-cache length for decoding
  causal: bool = True              # False: every position attends to every (unmasked) one
  dropout: float = 0.0             # on the attention probabilities, when not deterministic
  deterministic: bool = True
  dtype: Any = jnp.float32
  kernel_init: Callable = nn.initializers.normal(0.02)
  out_init: Callable = nn.initializers.normal(0.02)
  fp8: bool = False                # fp8 projections with delayed scaling (models/layers/fp8.py)

  @nn.compact
  def __call__(self, x_BxTxD, positions_BxT, *, decode: bool = False, kv_lengths_B=None,
               mask_BxT=None):
    if self.num_heads % self.num_kv_heads:
      raise ValueError(f"num_heads={self.num_heads} must be a multiple of "
                       f"num_kv_heads={self.num_kv_heads}")
    D = x_BxTxD.shape[-1]
    dense = lambda heads, axis, name: Projection(
        "btd,dnh->btnh", (D, heads, self.head_dim), ("embed", axis, "head_dim"),
        self.kernel_init, self.use_bias, self.dtype, self.fp8, name=name)
    q_BxTxNxH = dense(self.num_heads, "heads", "query")(x_BxTxD)
    k_BxTxKxH = dense(self.num_kv_heads, "kv_heads", "key")(x_BxTxD)
    v_BxTxKxH = dense(self.num_kv_heads, "kv_heads", "value")(x_BxTxD)
    if self.position == "rope":
      q_BxTxNxH = rope(q_BxTxNxH, positions_BxT, self.rope_base)
      k_BxTxKxH = rope(k_BxTxKxH, positions_BxT, self.rope_base)

    if decode:
      out_BxTxNxH = self._attend_cached(q_BxTxNxH, k_BxTxKxH, v_BxTxKxH, positions_BxT)
    else:
      bias = None
      if self.position == "alibi":
        bias = alibi_bias(self.num_heads, positions_BxT, positions_BxT).astype(self.dtype)
      mask = None
      if mask_BxT is not None:  # [B, 1, 1, S]: no query attends to a padding key
        mask = (mask_BxT > 0)[:, None, None, :]
      rate = self.dropout if self.dropout > 0 and not self.deterministic else 0.0
      if rate and self.implementation == "cudnn":
        raise ValueError("attention_impl='cudnn' has no attention dropout in jax (its seed is "
                         "fixed at compile time); use attention_impl='auto', 'pallas' or "
                         "'xla', or attention_dropout=0")
      flash = self._flash(q_BxTxNxH, k_BxTxKxH, rate,
                          bias is not None or mask is not None or kv_lengths_B is not None)
      if flash:
        B = q_BxTxNxH.shape[0]
        seeds_Bx1 = (jax.random.bits(self.make_rng("dropout"), (B, 1), jnp.uint32) if rate
                     else jnp.zeros((B, 1), jnp.uint32))
        attend = lambda q, k, v, seeds: flash_attention.attention(
            q, k, v, seeds, rate, self.causal, kernels.interpret())
        out_BxTxNxH = kernels.over_rows(attend, q_BxTxNxH, k_BxTxKxH, v_BxTxKxH, seeds_Bx1)
      elif rate:
        out_BxTxNxH = self._attend_dropout(q_BxTxNxH, k_BxTxKxH, v_BxTxKxH, bias, mask,
                                           kv_lengths_B)
      else:
        impl = choose_implementation(self.implementation, q_BxTxNxH.dtype, self.head_dim,
                                     bias is not None or mask is not None)
        odd = (q_BxTxNxH.shape[1] | k_BxTxKxH.shape[1]) % 2
        if impl == "cudnn" and odd and bias is None and mask is None:
          out_BxTxNxH = attend_even(q_BxTxNxH, k_BxTxKxH, v_BxTxKxH, self.causal,
                                    kv_lengths_B, impl)
        else:
          out_BxTxNxH = jax.nn.dot_product_attention(
              q_BxTxNxH, k_BxTxKxH, v_BxTxKxH, bias=bias, mask=mask, is_causal=self.causal,
              key_value_seq_lengths=kv_lengths_B, implementation=impl)
    return Projection("btnh,nhd->btd", (self.num_heads, self.head_dim, D),
                      ("heads", "head_dim", "embed"), self.out_init, self.use_bias, self.dtype,
                      self.fp8, name="out")(out_BxTxNxH)

  def _flash(self, q_BxTxNxH, k_BxSxKxH, rate, masked) -> bool:
    """Whether the Pallas flash attention runs: asked for ("pallas"), or "auto" with dropout
    on a GPU in 16-bit where its shapes fit (3.1x XLA's dropout path, fwd + bwd, at
    shakespeare_char's shapes on an H200: bench/RESULTS.md run 19)."""
    _check_known(self.implementation)
    T, S = q_BxTxNxH.shape[1], k_BxSxKxH.shape[1]
    fits = (flash_attention.fits(self.head_dim, T, S) and (T == S or not self.causal)
            and not masked and not kernels.is_split(("length",)))
    if self.implementation == "pallas" and not fits:
      raise ValueError(
          f"attention_impl='pallas' needs head_dim in (16, 32, 64, 128) (got {self.head_dim}), "
          f"query and key lengths that are multiples of {flash_attention.BLOCK} (got "
          f"{q_BxTxNxH.shape[1]}, {k_BxSxKxH.shape[1]}), no ALiBi bias, padding mask or "
          "kv_lengths, and a mesh that does not split the length; use attention_impl='auto' "
          "or 'xla'")
    return self.implementation == "pallas" or (   # heads split: the kernels would gather them
        self.implementation == "auto" and rate > 0 and fits and kernels.gpu_16bit(q_BxTxNxH.dtype)
        and not kernels.is_split(("heads", "kv_heads")))

  def _attend_dropout(self, q_BxTxNxH, k_BxSxKxH, v_BxSxKxH, bias, mask, kv_lengths_B):
    """jax.nn.dot_product_attention's XLA computation (float32 logits and softmax, probabilities
    in the input dtype) with inverted dropout on the probabilities; GQA without repeating K/V."""
    B, T, N, H = q_BxTxNxH.shape
    S, K = k_BxSxKxH.shape[1], k_BxSxKxH.shape[2]
    q_BxTxKxGxH = q_BxTxNxH.reshape(B, T, K, N // K, H)
    logits = jnp.einsum("btkgh,bskh->bkgts", q_BxTxKxGxH, k_BxSxKxH,
                        preferred_element_type=jnp.float32) * (H ** -0.5)
    logits_BxNxTxS = logits.reshape(B, N, T, S)
    if bias is not None:
      logits_BxNxTxS = logits_BxNxTxS + bias.astype(jnp.float32)
    keep = jnp.ones((1, 1, T, S), bool)
    if self.causal:
      keep = keep & jnp.tril(jnp.ones((T, S), bool))[None, None]
    if mask is not None:
      keep = keep & mask
    if kv_lengths_B is not None:
      keep = keep & (jnp.arange(S)[None, None, None, :] < kv_lengths_B[:, None, None, None])
    logits_BxNxTxS = jnp.where(keep, logits_BxNxTxS, -0.7 * jnp.finfo(jnp.float32).max)
    probs_BxNxTxS = jax.nn.softmax(logits_BxNxTxS, axis=-1)
    keep_BxNxTxS = jax.random.bernoulli(self.make_rng("dropout"), 1.0 - self.dropout,
                                        probs_BxNxTxS.shape)
    probs_BxNxTxS = jnp.where(keep_BxNxTxS, probs_BxNxTxS / (1.0 - self.dropout), 0.0)
    probs_BxNxTxS = probs_BxNxTxS.astype(v_BxSxKxH.dtype)
    return jnp.einsum("bkgts,bskh->btkgh", probs_BxNxTxS.reshape(B, K, N // K, T, S),
                      v_BxSxKxH).reshape(B, T, N, H)

  def _attend_cached(self, q_BxTxNxH, k_BxTxKxH, v_BxTxKxH, positions_BxT):
    """Writes this call's keys and values at `index` and attends over the cache."""
    B, T = q_BxTxNxH.shape[:2]
    shape = (B, self.max_len, self.num_kv_heads, self.head_dim)
    cached_k = self.variable("cache", "cached_key", jnp.zeros, shape, k_BxTxKxH.dtype)
    cached_v = self.variable("cache", "cached_value", jnp.zeros, shape, v_BxTxKxH.dtype)
    index = self.variable("cache", "index", lambda: jnp.zeros((), jnp.int32))
    i = index.value
    k_BxSxKxH = jax.lax.dynamic_update_slice(cached_k.value, k_BxTxKxH, (0, i, 0, 0))
    v_BxSxKxH = jax.lax.dynamic_update_slice(cached_v.value, v_BxTxKxH, (0, i, 0, 0))
    if not self.is_initializing():
      cached_k.value, cached_v.value, index.value = k_BxSxKxH, v_BxSxKxH, i + T
    k_pos_BxS = jnp.broadcast_to(jnp.arange(self.max_len)[None], (B, self.max_len))
    mask_BxTxS = (k_pos_BxS[:, None, :] <= positions_BxT[:, :, None])
    bias = None
    if self.position == "alibi":
      bias = alibi_bias(self.num_heads, positions_BxT, k_pos_BxS).astype(q_BxTxNxH.dtype)
    return jax.nn.dot_product_attention(q_BxTxNxH, k_BxSxKxH, v_BxSxKxH, bias=bias,
                                        mask=mask_BxTxS[:, None], implementation="xla")

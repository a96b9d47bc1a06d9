"""A selective state-space language model in Mamba's shape (Gu and Dao, 2023).

    model = SSM(vocab_size=256, num_layers=11, d_model=384)
    logits_BxTxV = model.apply(v, tokens_BxT)                  # causal; float32 logits
    logits, vars = model.apply(v, tokens, decode=True, mutable=["cache"])  # state carried on
    out_BxTxD, _ = MambaBlock(...).apply(vb, x_BxTxD)          # one residual block

Each block is x + Mixer(RMSNorm(x)); the mixer projects to x and a gate z (d_inner each),
runs x through a short causal depthwise conv and SiLU, makes an input-dependent step
delta (low-rank projection + softplus) and B, C from it, and scans
h_t = exp(delta_t A) h_{t-1} + delta_t B_t x_t,  y_t = C_t h_t + D x_t
in parallel over time (jax.lax.associative_scan, float32), gated by SiLU(z).

Memory: the scan materialises B*T*d_inner*d_state float32 states per layer (and as much
again for exp(delta A) and the scan's levels): 64*256*768*16 = 201M floats, 805 MB, per
array in the Shakespeare config. selective_ssm is under jax.checkpoint, so the backward
pass keeps only [B, T, d_inner]-sized inputs per layer and recomputes one layer's states
at a time: that config's training step (adamw, bfloat16) peaked at 7.2 GiB on an H200
(XLA's CPU estimate without the checkpoint: 71 GiB). decode=True keeps a conv window
[B, d_conv - 1, d_inner] and the state [B, d_inner, d_state] per layer in the "cache"
collection (--mode=sample's path).

Parameter layout follows the reference (mamba_simple.py) up to transposes; the parity
fixture (tools/parity/ssm.py) is a plain sequential numpy scan of one block.
"""

import math
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from models import register
from models.layers.head_loss import lookup
from models.layers.named import named
from models.layers.norm import make_norm

ACTIVATION = ("batch", "length", "act_embed")


def s4d_real_init(key, shape, dtype=jnp.float32):
  """A_log [d_inner, d_state] with A = -exp(A_log) = -(1, 2, ..., d_state) in every row."""
  del key
  return jnp.broadcast_to(jnp.log(jnp.arange(1, shape[1] + 1, dtype=dtype)), shape)


def symmetric_uniform(scale: float):
  return lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype,
                                                                  -scale, scale)


def dt_bias_init(dt_min: float, dt_max: float):
  """softplus(bias) log-uniform in [dt_min, dt_max] (Mamba's inverse-softplus init)."""
  def init(key, shape, dtype=jnp.float32):
    u = jax.random.uniform(key, shape, dtype)
    dt = jnp.maximum(jnp.exp(u * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)),
                     1e-4)
    return dt + jnp.log(-jnp.expm1(-dt))
  return init


def selective_scan(dA_BxTxExN, dBx_BxTxExN, h0_BxExN=None):
  """h_t = dA_t * h_{t-1} + dBx_t for every t at once (float32), from h_{-1} = h0 (zeros
  if None). Pairs (a, b) meaning h -> a h + b compose associatively, so the T steps take
  log2(T) rounds of jax.lax.associative_scan instead of a loop."""
  if h0_BxExN is not None:   # fold the start into step 0: h_0 = dA_0 h0 + dBx_0
    dBx_BxTxExN = dBx_BxTxExN.at[:, 0].add(dA_BxTxExN[:, 0] * h0_BxExN)

  def combine(left, right):
    a_l, b_l = left
    a_r, b_r = right
    return a_l * a_r, a_r * b_l + b_r
  _, h_BxTxExN = jax.lax.associative_scan(combine, (dA_BxTxExN, dBx_BxTxExN), axis=1)
  return h_BxTxExN


@jax.checkpoint
def selective_ssm(dt_BxTxE, u_BxTxE, B_BxTxN, C_BxTxN, A_log_ExN, D_E, h0_BxExN=None):
  """y_t = C_t h_t + D u_t with h_t = exp(delta_t A) h_{t-1} + delta_t B_t u_t, delta =
  softplus(dt), A = -exp(A_log): (y [B, T, E], h_{T-1} [B, E, N]), all in float32
  (exp(delta A) and products over hundreds of steps). jax.checkpoint keeps only the
  [B, T, E]-sized inputs for the backward pass and recomputes the [B, T, E, N] states
  there, one layer at a time, as Mamba's fused kernel does."""
  f32 = lambda a: a.astype(jnp.float32)
  delta_BxTxE, u_BxTxE = jax.nn.softplus(f32(dt_BxTxE)), f32(u_BxTxE)
  A_ExN = -jnp.exp(f32(A_log_ExN))
  dA_BxTxExN = jnp.exp(delta_BxTxE[..., None] * A_ExN)
  dBx_BxTxExN = (delta_BxTxE * u_BxTxE)[..., None] * f32(B_BxTxN)[:, :, None, :]
  h_BxTxExN = selective_scan(dA_BxTxExN, dBx_BxTxExN, h0_BxExN)
  y_BxTxE = jnp.einsum("bten,btn->bte", h_BxTxExN, f32(C_BxTxN)) + u_BxTxE * f32(D_E)
  return y_BxTxE, h_BxTxExN[:, -1]


class Mixer(nn.Module):
  """Mamba's mixer: [B, T, D] -> [B, T, D]. decode=True starts from the state in the "cache"
  collection (conv: the last d_conv - 1 conv inputs [B, K-1, E]; ssm: h [B, E, N], both
  float32) and stores the state after this call's last step, so a sequence fed in pieces
  gives what it gives in one pass."""
  d_inner: int
  d_state: int = 16
  d_conv: int = 4
  dt_rank: int = 0               # 0 = ceil(d_model / 16)
  dt_min: float = 0.001
  dt_max: float = 0.1
  out_std: float = 0.02
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x_BxTxD, decode: bool = False):
    E, N, K, (B, _, D) = self.d_inner, self.d_state, self.d_conv, x_BxTxD.shape
    R = self.dt_rank or math.ceil(D / 16)
    init = nn.initializers.normal(0.02)
    xz_BxTx2E = nn.Dense(2 * E, use_bias=False, dtype=self.dtype, name="in_proj",
                         kernel_init=named(init, "embed", "mlp"))(x_BxTxD)
    x_BxTxE, z_BxTxE = jnp.split(xz_BxTx2E, 2, axis=-1)
    if decode:
      conv_cache = self.variable("cache", "conv", jnp.zeros, (B, K - 1, E), jnp.float32)
      ssm_cache = self.variable("cache", "ssm", jnp.zeros, (B, E, N), jnp.float32)
      past_BxKxE, h0_BxExN = conv_cache.value.astype(x_BxTxE.dtype), ssm_cache.value
    else:
      past_BxKxE, h0_BxExN = jnp.zeros((B, K - 1, E), x_BxTxE.dtype), None
    # Causal depthwise conv: each output sees its own and the K - 1 earlier inputs (zeros
    # before the start, the cache's when decoding).
    xp_BxSxE = jnp.concatenate([past_BxKxE, x_BxTxE], axis=1)
    x_BxTxE = nn.Conv(E, (K,), padding="VALID", feature_group_count=E, dtype=self.dtype,
                      name="conv1d",
                      kernel_init=named(nn.initializers.lecun_normal(), None, None, "mlp"),
                      bias_init=named(nn.initializers.zeros, "mlp"))(xp_BxSxE)
    x_BxTxE = nn.silu(x_BxTxE)

    dbc_BxTxF = nn.Dense(R + 2 * N, use_bias=False, dtype=self.dtype, name="x_proj",
                         kernel_init=named(nn.initializers.lecun_normal(), "mlp", None))(x_BxTxE)
    dt_BxTxR, B_BxTxN, C_BxTxN = jnp.split(dbc_BxTxF, [R, R + N], axis=-1)
    dt_BxTxE = nn.Dense(E, dtype=self.dtype, name="dt_proj",
                        kernel_init=named(symmetric_uniform(R ** -0.5), None, "mlp"),
                        bias_init=named(dt_bias_init(self.dt_min, self.dt_max), "mlp"))(dt_BxTxR)
    A_log_ExN = self.param("A_log", named(s4d_real_init, "mlp", None), (E, N))
    D_E = self.param("D", named(nn.initializers.ones, "mlp"), (E,))

    y_BxTxE, h_BxExN = selective_ssm(dt_BxTxE, x_BxTxE, B_BxTxN, C_BxTxN, A_log_ExN, D_E,
                                     h0_BxExN)
    if decode and not self.is_initializing():
      conv_cache.value = xp_BxSxE[:, xp_BxSxE.shape[1] - (K - 1):].astype(jnp.float32)
      ssm_cache.value = h_BxExN
    y_BxTxE = y_BxTxE.astype(self.dtype) * nn.silu(z_BxTxE)
    return nn.Dense(D, use_bias=False, dtype=self.dtype, name="out_proj",
                    kernel_init=named(nn.initializers.normal(self.out_std), "mlp", "embed"))(
                        y_BxTxE)


class MambaBlock(nn.Module):
  """x + Mixer(RMSNorm(x)); (x, None) -> (x, None) so that nn.scan can stack it."""
  d_inner: int
  d_state: int
  d_conv: int
  dt_rank: int
  out_std: float
  dtype: Any
  decode: bool = False

  @nn.compact
  def __call__(self, x_BxTxD, _=None):
    h = make_norm("rmsnorm", dtype=self.dtype, name="norm")(x_BxTxD)
    h = Mixer(self.d_inner, self.d_state, self.d_conv, self.dt_rank, out_std=self.out_std,
              dtype=self.dtype, name="mixer")(h, decode=self.decode)
    return nn.with_logical_constraint(x_BxTxD + h, ACTIVATION), None


@register("ssm")
class SSM(nn.Module):
  vocab_size: int = 256
  num_layers: int = 11
  d_model: int = 384
  expand: int = 2                  # d_inner = expand * d_model
  d_state: int = 16
  d_conv: int = 4
  dt_rank: int = 0                 # 0 = ceil(d_model / 16)
  tie_embeddings: bool = True
  scan_layers: bool = True
  remat: bool = False              # recompute each block in the backward pass (memory)
  dtype: Any = jnp.float32
  num_classes: Optional[int] = None  # unused; accepted so image-style callers fail clearly

  @nn.compact
  def __call__(self, tokens_BxT, *, train: bool = False, decode: bool = False):
    """Logits [B, T, V] in float32. Nothing is random, so `train` changes nothing;
    decode=True carries every block's state on in "cache" (--mode=sample's path)."""
    del train
    embed = nn.Embed(self.vocab_size, self.d_model, dtype=self.dtype, name="embed",
                     embedding_init=named(nn.initializers.normal(0.02), "vocab", "embed"))
    x_BxTxD = lookup(embed.embedding.astype(self.dtype), tokens_BxT)
    x_BxTxD = nn.with_logical_constraint(x_BxTxD, ACTIVATION)
    block_args = dict(d_inner=self.expand * self.d_model, d_state=self.d_state,
                      d_conv=self.d_conv, dt_rank=self.dt_rank,
                      out_std=0.02 / math.sqrt(self.num_layers), dtype=self.dtype,
                      decode=decode)
    block = nn.remat(MambaBlock, prevent_cse=not self.scan_layers) if self.remat else MambaBlock
    if self.scan_layers:
      x_BxTxD, _ = nn.scan(block, variable_axes={"params": 0, "cache": 0},
                           split_rngs={"params": True}, length=self.num_layers,
                           metadata_params={nn.PARTITION_NAME: "layers"})(
                               **block_args, name="layers")(x_BxTxD, None)
    else:
      for i in range(self.num_layers):
        x_BxTxD, _ = block(**block_args, name=f"layer_{i}")(x_BxTxD)
    x_BxTxD = make_norm("rmsnorm", dtype=self.dtype, name="final_norm")(x_BxTxD)
    if self.tie_embeddings:
      w_DxV = embed.embedding.T
    else:
      w_DxV = self.param("head", named(nn.initializers.normal(0.02), "embed", "vocab"),
                         (self.d_model, self.vocab_size))
    return jnp.einsum("btd,dv->btv", x_BxTxD, w_DxV.astype(self.dtype)).astype(jnp.float32)

  def flops_per_token(self, num_params: int, seq_len: int) -> float:
    """Training FLOPs per token: 6N for the matmuls plus the scan's elementwise work,
    about 30 per state element (forward and backward: exp(delta A), delta B x, the
    associative combines, the contraction with C); the backward pass's recomputation of
    the states (jax.checkpoint) is not counted, as rematerialisation is not in MFU."""
    del seq_len
    return 6 * num_params + 30 * self.num_layers * self.expand * self.d_model * self.d_state

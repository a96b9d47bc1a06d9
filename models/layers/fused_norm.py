"""LayerNorm (no bias) as Pallas kernels for GPUs, with the residual add before it fused in:
one read of each input and one write of each output, forward and backward.

    y = layer_norm(x, scale)                        # x [..., D], scale [D] float32
    s, y = add_layer_norm(x, delta, scale)          # s = x + delta, y = layer_norm(s)
    y = layer_norm(x, scale, interpret=True)        # the same kernels on any backend (tests)

XLA splits a residual add and LayerNorm into a statistics reduction, a normalisation pass
and, backward, row reductions, a column reduction for the scale's gradient, an elementwise
pass and the residual gradient's add: each a further read of the [tokens, D] activations
(8.7 ms of GPT-2's 96 ms step at micro-batch 48 on an H100). Here each kernel takes ROWS
rows per program; rows are padded to a power of two in registers (Triton's requirement)
and masked in memory; the scale's gradient leaves the backward kernel as one partial sum
per program. Statistics are float32; the sum s is rounded to x's dtype before it is
normalised, as the unfused add would be.
"""

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

ROWS = 8


def _index(n, d, program):
  rows = program * ROWS + jnp.arange(ROWS)
  cols = jnp.arange(pl.next_power_of_2(d))
  rmask, cmask = rows < n, cols < d
  return rows, cols, rmask, cmask, rmask[:, None] & cmask[None, :]


def _load(ref, rows, cols, mask):
  return plgpu.load(ref.at[rows[:, None], cols[None, :]], mask=mask,
                    other=0.0).astype(jnp.float32)


def _store(ref, rows, cols, mask, value):
  plgpu.store(ref.at[rows[:, None], cols[None, :]], value.astype(ref.dtype), mask=mask)


def _fwd_kernel(*refs, n, d, eps, add):
  if add:
    x_ref, delta_ref, scale_ref, s_ref, y_ref, mean_ref, rstd_ref = refs
  else:
    x_ref, scale_ref, y_ref, mean_ref, rstd_ref = refs
  rows, cols, rmask, cmask, mask = _index(n, d, pl.program_id(0))
  x = _load(x_ref, rows, cols, mask)
  if add:
    x = (x + _load(delta_ref, rows, cols, mask)).astype(s_ref.dtype)
    _store(s_ref, rows, cols, mask, x)
    x = x.astype(jnp.float32)
  mean = x.sum(axis=1) / d
  xc = jnp.where(mask, x - mean[:, None], 0.0)
  rstd = jax.lax.rsqrt((xc * xc).sum(axis=1) / d + eps)
  scale = plgpu.load(scale_ref.at[cols], mask=cmask, other=0.0).astype(jnp.float32)
  _store(y_ref, rows, cols, mask, xc * rstd[:, None] * scale[None, :])
  plgpu.store(mean_ref.at[rows], mean, mask=rmask)
  plgpu.store(rstd_ref.at[rows], rstd, mask=rmask)


def _bwd_kernel(*refs, n, d, add):
  if add:
    x_ref, scale_ref, g_ref, gs_ref, mean_ref, rstd_ref, dx_ref, dscale_ref = refs
  else:
    x_ref, scale_ref, g_ref, mean_ref, rstd_ref, dx_ref, dscale_ref = refs
  i = pl.program_id(0)
  rows, cols, rmask, cmask, mask = _index(n, d, i)
  x, g = _load(x_ref, rows, cols, mask), _load(g_ref, rows, cols, mask)
  mean = plgpu.load(mean_ref.at[rows], mask=rmask, other=0.0)
  rstd = plgpu.load(rstd_ref.at[rows], mask=rmask, other=0.0)
  scale = plgpu.load(scale_ref.at[cols], mask=cmask, other=0.0).astype(jnp.float32)
  xhat = jnp.where(mask, (x - mean[:, None]) * rstd[:, None], 0.0)
  gs = g * scale[None, :]
  c1 = (xhat * gs).sum(axis=1) / d
  c2 = gs.sum(axis=1) / d
  dx = (gs - xhat * c1[:, None] - c2[:, None]) * rstd[:, None]
  if add:   # the gradient arriving along the residual stream joins here
    dx = dx + _load(gs_ref, rows, cols, mask)
  _store(dx_ref, rows, cols, mask, dx)
  plgpu.store(dscale_ref.at[i, cols], (g * xhat).sum(axis=0), mask=cmask)


def _rows(x):
  return x.reshape(-1, x.shape[-1])


def _call(kernel, args, out_shape, n, interpret):
  return pl.pallas_call(kernel, out_shape=out_shape, grid=(pl.cdiv(n, ROWS),),
                        compiler_params=plgpu.CompilerParams(num_warps=4),
                        interpret=interpret)(*args)


def _forward(x, delta, scale, eps, interpret):
  n, d = _rows(x).shape
  add = delta is not None
  rows = jax.ShapeDtypeStruct((n, d), x.dtype)
  stat = jax.ShapeDtypeStruct((n,), jnp.float32)
  kernel = functools.partial(_fwd_kernel, n=n, d=d, eps=eps, add=add)
  args = (_rows(x), _rows(delta), scale) if add else (_rows(x), scale)
  outs = _call(kernel, args, (rows,) * (1 + add) + (stat, stat), n, interpret)
  *arrays, mean, rstd = outs
  arrays = [a.reshape(x.shape) for a in arrays]
  return arrays, (arrays[0] if add else x, scale, mean, rstd)


def _backward(res, g, g_residual, interpret):
  x, scale, mean, rstd = res
  n, d = _rows(x).shape
  add = g_residual is not None
  kernel = functools.partial(_bwd_kernel, n=n, d=d, add=add)
  out_shape = (jax.ShapeDtypeStruct((n, d), x.dtype),
               jax.ShapeDtypeStruct((pl.cdiv(n, ROWS), d), jnp.float32))
  args = (_rows(x), scale, _rows(g)) + ((_rows(g_residual),) if add else ()) + (mean, rstd)
  dx, dscale = _call(kernel, args, out_shape, n, interpret)
  return dx.reshape(x.shape), dscale.sum(axis=0).astype(scale.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def layer_norm(x, scale, eps: float = 1e-5, interpret: bool = False):
  """(x - mean) / sqrt(var + eps) * scale over the last axis."""
  return _forward(x, None, scale, eps, interpret)[0][0]


def _ln_fwd(x, scale, eps, interpret):
  (y,), res = _forward(x, None, scale, eps, interpret)
  return y, res


def _ln_bwd(eps, interpret, res, g):
  return _backward(res, g, None, interpret)


layer_norm.defvjp(_ln_fwd, _ln_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def add_layer_norm(x, delta, scale, eps: float = 1e-5, interpret: bool = False):
  """(s, layer_norm(s)) with s = x + delta."""
  return tuple(_forward(x, delta, scale, eps, interpret)[0])


def _add_fwd(x, delta, scale, eps, interpret):
  (s, y), res = _forward(x, delta, scale, eps, interpret)
  return (s, y), res


def _add_bwd(eps, interpret, res, g):
  g_s, g_y = g
  ds, dscale = _backward(res, g_y, g_s, interpret)
  return ds, ds, dscale


add_layer_norm.defvjp(_add_fwd, _add_bwd)

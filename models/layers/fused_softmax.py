"""Softmax statistics of logits as a Pallas (Triton) kernel: the row maximum and
sum(exp(x - max)) in one read of the logits.

    m, s = max_sumexp(logits_NxV)            # float32 [N], [N]
    m, s = max_sumexp(logits_NxV, True)      # Pallas' interpreter, any backend (tests)

XLA's variadic reduction does the same in one pass, but its combiner evaluates an exp for
every pair it merges; here each program walks ROWS rows in blocks of COLS columns keeping
a running max and a rescaled running sum (one exp per logit, one per row and block).
"""

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

ROWS, COLS, WARPS = 1, 8192, 8   # tuned on an H100 (bench/RESULTS.md run 7)


def _kernel(x_ref, m_ref, s_ref, *, n, v, rows_per, cols_per):
  rows = pl.program_id(0) * rows_per + jnp.arange(rows_per)
  rmask = rows < n

  def body(j, carry):
    m, s = carry
    cols = j * cols_per + jnp.arange(cols_per)
    mask = rmask[:, None] & (cols < v)[None, :]
    x = plgpu.load(x_ref.at[rows[:, None], cols[None, :]], mask=mask,
                   other=-jnp.inf).astype(jnp.float32)
    m_new = jnp.maximum(m, x.max(axis=1))
    shift = jnp.where(m_new > -jnp.inf, m_new, 0.0)   # all -inf so far: nothing to scale
    s = s * jnp.exp(m - shift) + jnp.exp(x - shift[:, None]).sum(axis=1)
    return m_new, s

  init = (jnp.full((rows_per,), -jnp.inf, jnp.float32), jnp.zeros((rows_per,), jnp.float32))
  m, s = jax.lax.fori_loop(0, pl.cdiv(v, cols_per), body, init)
  plgpu.store(m_ref.at[rows], m, mask=rmask)
  plgpu.store(s_ref.at[rows], s, mask=rmask)


def max_sumexp(x, interpret: bool = False, rows: int = ROWS, cols: int = COLS,
               warps: int = WARPS):
  """(max, sum(exp(x - max))) over the last axis of x [..., V], both float32."""
  x2 = x.reshape(-1, x.shape[-1])
  n, v = x2.shape
  cols = min(cols, pl.next_power_of_2(v))
  stat = jax.ShapeDtypeStruct((n,), jnp.float32)
  kernel = functools.partial(_kernel, n=n, v=v, rows_per=rows, cols_per=cols)
  m, s = pl.pallas_call(kernel, out_shape=(stat, stat), grid=(pl.cdiv(n, rows),),
                        compiler_params=plgpu.CompilerParams(num_warps=warps),
                        interpret=interpret)(x2)
  return m.reshape(x.shape[:-1]), s.reshape(x.shape[:-1])

"""The Pallas kernels against the XLA graphs they replace, at GPT-2's shapes.

    python bench/fused_ops.py --rows=65536 [--sweep]

Times the softmax statistics over [rows, vocab] bf16 logits (fused_softmax against the
one-pass XLA reduction it replaces, and jax's two-pass logsumexp) and the residual add +
LayerNorm, forward and backward (fused_norm against flax's LayerNorm after an add). Each
time is the median over 5 windows of --reps calls launched back to back with one
synchronisation per window; "ratio" is XLA's time over the kernel's, from the same run.
--sweep also times the statistics kernel's tilings (a tuning aid).
"""

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from models.layers import fused_norm, fused_softmax  # noqa: E402
from models.layers.head_loss import _online_max_sumexp  # noqa: E402


def time_ms(fn, *args, reps=10):
  fn = jax.jit(fn)
  jax.block_until_ready(fn(*args))
  windows = []
  for _ in range(5):
    t = time.perf_counter()
    jax.block_until_ready([fn(*args) for _ in range(reps)])
    windows.append((time.perf_counter() - t) / reps * 1e3)
  return statistics.median(windows)


def row(name, xla_ms, ours_ms, gigabytes):
  print(f"{name:<36}{xla_ms:>9.3f}{ours_ms:>11.3f}{xla_ms / ours_ms:>7.2f}"
        f"{gigabytes / ours_ms * 1e3:>12.0f}")


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--rows", type=int, default=65536, help="tokens per micro-batch")
  parser.add_argument("--d", type=int, default=768)
  parser.add_argument("--vocab", type=int, default=50304)
  parser.add_argument("--sweep", action="store_true", help="also time the kernels' tilings")
  args = parser.parse_args()
  dt = jnp.bfloat16
  print(f"{jax.devices()[0].device_kind}, jax {jax.__version__}, rows {args.rows}")
  print(f"{'op':<36}{'XLA ms':>9}{'Pallas ms':>11}{'ratio':>7}{'Pallas GB/s':>12}")

  logits = jax.random.normal(jax.random.PRNGKey(0), (args.rows, args.vocab), dt) * 3
  gb = logits.size * logits.dtype.itemsize / 1e9
  row("softmax statistics (one read)", time_ms(_online_max_sumexp, logits),
      time_ms(fused_softmax.max_sumexp, logits), gb)
  lse = lambda l: jax.nn.logsumexp(l.astype(jnp.float32), -1)
  print(f"{'  jax.nn.logsumexp (two reads)':<36}{time_ms(lse, logits):>9.3f}")

  k = jax.random.split(jax.random.PRNGKey(1), 4)
  x, delta, g = (jax.random.normal(key, (args.rows, args.d), dt) for key in k[:3])
  scale = jnp.ones((args.d,), jnp.float32)
  ln = nn.LayerNorm(epsilon=1e-5, use_bias=False, dtype=dt)
  plain = lambda x, d, s: (x + d, ln.apply({"params": {"scale": s}}, x + d))
  ours = lambda x, d, s: fused_norm.add_layer_norm(x, d, s)
  fwd_bwd = lambda f: lambda x, d, s: jax.vjp(f, x, d, s)[1]((g, g))
  row("add + LayerNorm, forward", time_ms(plain, x, delta, scale),
      time_ms(ours, x, delta, scale), 4 * x.size * 2 / 1e9)
  row("add + LayerNorm, forward + backward", time_ms(fwd_bwd(plain), x, delta, scale),
      time_ms(fwd_bwd(ours), x, delta, scale), 8 * x.size * 2 / 1e9)   # 4 + 4 (2 fused in)

  if args.sweep:
    print("max_sumexp tilings (rows, cols, warps): ms")
    for rows, cols, warps in ((8, 2048, 8), (4, 2048, 4), (2, 4096, 4), (1, 8192, 8),
                              (1, 4096, 4), (1, 8192, 4), (1, 16384, 8), (2, 8192, 8),
                              (1, 2048, 4), (2, 2048, 4)):
      ms = time_ms(lambda l: fused_softmax.max_sumexp(l, rows=rows, cols=cols, warps=warps),
                   logits)
      print(f"  {rows} {cols} {warps}: {ms:.3f}")


if __name__ == "__main__":
  main()

"""tokamax's kernels against the ones GPT-2 124M's step uses now, at its micro-batch shapes.

    python bench/tokamax_ops.py [--batch=64 --seq=1024]     # one GPU; tokamax installed

Issue 19 item 4: adopt a tokamax kernel where it is as fast or faster. Each row times
forward + backward (jax.vjp, then the cotangents), bf16, the median over 5 windows of
--reps calls with one synchronisation each (bench/fused_ops.py's time_ms); "vs ours" is
our time over tokamax's, from the same run (> 1: tokamax is faster).
- attention, causal, 12 heads of 64: jax.nn.dot_product_attention(implementation="cudnn")
  (models/layers/attention.py's GPU path) against tokamax.dot_product_attention's
  implementations (mosaic = Pallas Mosaic GPU, triton, cudnn, xla).
- residual add + LayerNorm without bias, width 768: models/layers/fused_norm.py's Pallas
  kernel against the add followed by tokamax.layer_norm (triton, xla).
- head + cross-entropy, vocabulary 50304: models/layers/head_loss.py's fused_head_loss
  (bf16 logits, Pallas softmax statistics) against tokamax.linear_softmax_cross_entropy_loss
  (xla, chunked_xla: its GPU implementations), summed over tokens.
A tokamax implementation that fails prints its error in the row and the rest go on.
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from bench.fused_ops import time_ms  # noqa: E402
from models.layers import fused_norm, kernels  # noqa: E402
from models.layers.head_loss import fused_head_loss  # noqa: E402


def fwd_bwd(fn):
  """fn's forward and backward: the vjp with cotangents of ones."""
  def run(*args):
    out, vjp = jax.vjp(fn, *args)
    return vjp(jax.tree.map(jnp.ones_like, out))
  return run


def compare(name, ours, theirs: dict, args, reps):
  base = time_ms(fwd_bwd(ours), *args, reps=reps)
  print(f"{name:<44}{'ours':<12}{base:>9.3f}", flush=True)
  rows = [(name, "ours", base, 1.0)]
  for impl, fn in theirs.items():
    try:
      ms = time_ms(fwd_bwd(fn), *args, reps=reps)
      print(f"{'':<44}{impl:<12}{ms:>9.3f}{base / ms:>9.2f}x", flush=True)
      rows.append((name, impl, ms, base / ms))
    except Exception as e:  # an implementation this GPU or shape does not support
      print(f"{'':<44}{impl:<12}  failed: {type(e).__name__}: {str(e).splitlines()[0][:120]}")
  return rows


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--batch", type=int, default=64, help="micro-batch sequences")
  parser.add_argument("--seq", type=int, default=1024)
  parser.add_argument("--heads", type=int, default=12)
  parser.add_argument("--d", type=int, default=768)
  parser.add_argument("--vocab", type=int, default=50304)
  parser.add_argument("--reps", type=int, default=10)
  args = parser.parse_args()
  try:
    import tokamax
  except ImportError as e:
    raise SystemExit(f"bench/tokamax_ops.py needs tokamax ({e}); pip install tokamax")
  B, T, N, D, V = args.batch, args.seq, args.heads, args.d, args.vocab
  H, dt = D // N, jnp.bfloat16
  print(f"{jax.devices()[0].device_kind}, jax {jax.__version__}, tokamax "
        f"{tokamax.__version__}; B={B} T={T} heads={N}x{H} D={D} V={V}, bf16, fwd + bwd")
  print(f"{'op':<44}{'impl':<12}{'ms':>9}{'vs ours':>9}")
  keys = jax.random.split(jax.random.PRNGKey(0), 8)

  q, k, v = (jax.random.normal(key, (B, T, N, H), dt) for key in keys[:3])
  impl = "cudnn" if jax.default_backend() == "gpu" else "xla"   # xla: a CPU trial run
  ours = lambda q, k, v: jax.nn.dot_product_attention(q, k, v, is_causal=True,
                                                      implementation=impl)
  theirs = {impl: (lambda q, k, v, impl=impl: tokamax.dot_product_attention(
      q, k, v, is_causal=True, implementation=impl)) for impl in ("mosaic", "triton", "cudnn",
                                                                  "xla")}
  compare("attention (causal)", ours, theirs, (q, k, v), args.reps)

  x, delta = (jax.random.normal(key, (B * T, D), dt) for key in keys[3:5])
  scale = jnp.ones((D,), jnp.float32)
  ours = lambda x, d, s: fused_norm.add_layer_norm(x, d, s, interpret=kernels.interpret())
  theirs = {impl: (lambda x, d, s, impl=impl: (x + d, tokamax.layer_norm(
      x + d, s.astype(dt), None, epsilon=1e-5, implementation=impl))) for impl in ("triton",
                                                                                 "xla")}
  compare("residual add + LayerNorm", ours, theirs, (x, delta, scale), args.reps)

  h = jax.random.normal(keys[5], (B, T, D), dt)
  w = (jax.random.normal(keys[6], (D, V), jnp.float32) * 0.02).astype(dt)
  y = jax.random.randint(keys[7], (B, T), 0, V)
  ours = lambda h, w: fused_head_loss(h, w, y, chunk=0, impl="pallas")[0].sum()
  theirs = {impl: (lambda h, w, impl=impl: tokamax.linear_softmax_cross_entropy_loss(
      h.reshape(B * T, D), y.reshape(-1), w, reduction="sum", implementation=impl))
      for impl in ("xla", "chunked_xla")}
  compare("head + cross-entropy", ours, theirs, (h, w), args.reps)


if __name__ == "__main__":
  main()

"""The Pallas flash attention with dropout (models/layers/flash_attention.py) against the XLA
attention it replaces, forward + backward, on the GPU: agreement and time.

    python bench/flash_attention.py                        # char-LM and GPT-2 shapes
    python bench/flash_attention.py --shapes=64x256x6x64   # B x T x heads x head_dim

For each shape (bf16, causal), the same seeds and rate for both: the error of the kernels'
output and gradients against XLA given the kernels' own keep mask (the Attention layer's
dropout path, models/layers/attention.py, with that mask in place of its random draw), then
the time of one forward + backward of the kernels, of that XLA attention with dropout, and
of cuDNN without dropout (what the step ran when it had no attention dropout). Times are the
median of 5 windows of --reps calls with one synchronisation each; ratios are from the same
run.
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from bench import table  # noqa: E402
from bench.fused_ops import time_ms  # noqa: E402
from models.layers import flash_attention as fa  # noqa: E402


def xla_attention(q, k, v, keep, rate):
  """The XLA dropout path's computation with a given keep mask [B, N, T, S]."""
  B, T, N, H = q.shape
  s = jnp.einsum("btnh,bsnh->bnts", q, k, preferred_element_type=jnp.float32) * H ** -0.5
  s = jnp.where(jnp.tril(jnp.ones((T, T), bool)), s, -0.7 * jnp.finfo(jnp.float32).max)
  p = jnp.where(keep, jax.nn.softmax(s, -1) / (1 - rate), 0.0)
  return jnp.einsum("bnts,bsnh->btnh", p.astype(v.dtype), v)


def fwd_bwd(f):
  """jit(grad of sum(f(q, k, v) * w)) over q, k, v."""
  return jax.jit(jax.grad(lambda q, k, v, w: (f(q, k, v).astype(jnp.float32) * w).sum(),
                          (0, 1, 2)))


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--shapes", default="64x256x6x64,8x1024x12x64")
  parser.add_argument("--rate", type=float, default=0.2)
  parser.add_argument("--reps", type=int, default=20)
  parser.add_argument("--json", default="")
  args = parser.parse_args()
  rows = []
  interpret = jax.default_backend() != "gpu"     # a trial run on the CPU (no cuDNN row)
  print(f"{jax.devices()[0].device_kind}, jax {jax.__version__}, rate {args.rate}", flush=True)
  for shape in args.shapes.split(","):
    B, T, N, H = map(int, shape.split("x"))
    r = np.random.default_rng(0)
    q, k, v, w = (jnp.asarray(r.normal(size=(B, T, N, H)), jnp.bfloat16) for _ in range(4))
    w = w.astype(jnp.float32)
    seeds = jnp.asarray(r.integers(0, 2**32, (B, 1), dtype=np.uint32))
    keep = fa.keep_mask(seeds, N, T, T, args.rate)
    flash = lambda q, k, v: fa.attention(q, k, v, seeds, args.rate, True, interpret)
    plain = lambda q, k, v: xla_attention(q, k, v, keep, args.rate)
    cudnn = lambda q, k, v: jax.nn.dot_product_attention(
        q, k, v, is_causal=True, implementation="xla" if interpret else "cudnn")
    f32 = lambda x: np.asarray(x, np.float32)
    out_err = float(np.abs(f32(jax.jit(flash)(q, k, v)) - f32(jax.jit(plain)(q, k, v))).max())
    grads = [fwd_bwd(f)(q, k, v, w) for f in (flash, plain)]
    grad_err = max(float(np.abs(f32(a) - f32(b)).max() / (np.abs(f32(b)).max() + 1e-9))
                   for a, b in zip(*grads))
    ms = {name: time_ms(fwd_bwd(f), q, k, v, w, reps=args.reps)
          for name, f in (("pallas", flash), ("xla", plain), ("cudnn", cudnn))}
    rows.append({"shape": shape, "out_max_abs_err": out_err, "grad_max_rel_err": grad_err,
                 "pallas_ms": ms["pallas"], "xla_dropout_ms": ms["xla"],
                 "cudnn_no_dropout_ms": ms["cudnn"], "xla_over_pallas": ms["xla"] / ms["pallas"],
                 "cudnn_over_pallas": ms["cudnn"] / ms["pallas"]})
    print(rows[-1], flush=True)
  table.print_table([("B x T x N x H", 0, lambda r: r["shape"]),
                     ("out err", 9, lambda r: f"{r['out_max_abs_err']:.2e}"),
                     ("grad rel err", 12, lambda r: f"{r['grad_max_rel_err']:.2e}"),
                     ("Pallas ms", 9, lambda r: f"{r['pallas_ms']:.3f}"),
                     ("XLA ms", 9, lambda r: f"{r['xla_dropout_ms']:.3f}"),
                     ("cuDNN ms, no dropout", 9, lambda r: f"{r['cudnn_no_dropout_ms']:.3f}"),
                     ("XLA / Pallas", 9, lambda r: f"{r['xla_over_pallas']:.2f}"),
                     ("cuDNN / Pallas", 9, lambda r: f"{r['cudnn_over_pallas']:.2f}")], rows)
  if args.json:
    table.write_json(args.json, None, jax.devices()[0].device_kind, rows, rate=args.rate)


if __name__ == "__main__":
  main()

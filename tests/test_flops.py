"""train_lib/flops.py against hand counts derived here from the layer shapes: control flow
(scan, fori/while, cond, shard_map, Pallas), convolutions, and the training FLOPs per item
of the MLP, ResNet-18/50 and the Transformer, whichever attention / norm / loss kernels
are traced (the GPU's cuDNN and Pallas choices are forced on the CPU)."""

import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental import pallas as pl
from jax.sharding import PartitionSpec as P

from configs import digits_mlp, fashion_mnist_resnet, shakespeare_char
from helpers import read_metrics
from train_lib import flops, setup

S = jax.ShapeDtypeStruct
F32 = jnp.float32


def matmul(m, k, n):
  return 2 * m * k * n


# ------------------------------------------------------------------ control flow


def test_scan_counts_its_body_length_times():
  w = S((16, 16), F32)
  body = lambda w: lambda c, _: (c @ w, None)
  fn = lambda x, w: jax.lax.scan(body(w), x, None, length=5)[0]
  assert flops.forward_flops(fn, S((4, 16), F32), w) == 5 * matmul(4, 16, 16)


def test_fori_loop_with_literal_bounds_counts_each_trip():
  fn = lambda x, w: jax.lax.fori_loop(jnp.int32(2), jnp.int32(9), lambda i, c: c @ w, x)
  jaxpr = jax.make_jaxpr(fn)(S((4, 16), F32), S((16, 16), F32))
  assert [e.primitive.name for e in jaxpr.eqns] == ["while"]   # not turned into a scan
  notes = []
  assert flops.count(jaxpr, notes) == 7 * matmul(4, 16, 16) and notes == []


def test_while_of_unknown_trip_count_counts_once_and_says_so():
  fn = lambda x, w, n: jax.lax.fori_loop(0, n, lambda i, c: c @ w, x)
  notes = []
  got = flops.forward_flops(fn, S((4, 16), F32), S((16, 16), F32), S((), jnp.int32),
                            notes=notes)
  assert got == matmul(4, 16, 16)
  assert len(notes) == 1 and "counted once" in notes[0]


def test_cond_counts_its_larger_branch():
  big, small = (lambda x, w: x @ w @ w @ w), (lambda x, w: x @ w)
  for branches in ((big, small), (small, big)):
    fn = lambda x, w, p, b=branches: jax.lax.cond(p, *b, x, w)
    assert flops.forward_flops(fn, S((4, 16), F32), S((16, 16), F32), S((), bool)) == \
        3 * matmul(4, 16, 16)


def test_jit_remat_and_custom_vjp_are_entered():
  @jax.custom_vjp
  def f(x, w):
    return x @ w
  f.defvjp(lambda x, w: (f(x, w), (x, w)), lambda r, g: (g @ r[1].T, r[0].T @ g))
  fn = jax.jit(jax.checkpoint(lambda x, w: f(x, w) @ w))
  assert flops.forward_flops(fn, S((4, 16), F32), S((16, 16), F32)) == 2 * matmul(4, 16, 16)


def test_shard_map_counts_every_device_s_shard():
  mesh = jax.sharding.Mesh(np.array(jax.devices()[:4]), ("data",))
  fn = lambda x, w: jax.shard_map(lambda x, w: x @ w, mesh=mesh, in_specs=(P("data"), P()),
                                  out_specs=P("data"))(x, w)
  assert flops.forward_flops(fn, S((32, 16), F32), S((16, 8), F32)) == matmul(32, 16, 8)


def _blocked_matmul(x, w, cost_estimate=None):
  """x [M, K] @ w [K, N], one program per block of 8 rows."""
  def kernel(x_ref, w_ref, o_ref):
    o_ref[...] = x_ref[...] @ w_ref[...]
  m, k = x.shape
  return pl.pallas_call(
      kernel, out_shape=S((m, w.shape[1]), x.dtype), grid=(m // 8,),
      in_specs=[pl.BlockSpec((8, k), lambda i: (i, 0)), pl.BlockSpec(w.shape, lambda i: (0, 0))],
      out_specs=pl.BlockSpec((8, w.shape[1]), lambda i: (i, 0)), interpret=True,
      cost_estimate=cost_estimate)(x, w)


def test_pallas_call_counts_kernel_times_grid_or_its_cost_estimate():
  x, w = S((32, 16), F32), S((16, 8), F32)
  assert flops.forward_flops(_blocked_matmul, x, w) == 4 * matmul(8, 16, 8)
  estimate = pl.CostEstimate(flops=12345, transcendentals=0, bytes_accessed=0)
  assert flops.forward_flops(functools.partial(_blocked_matmul, cost_estimate=estimate),
                             x, w) == 12345


def test_ragged_dot_multiplies_each_row_by_its_group_only():
  fn = lambda a, b, g: jax.lax.ragged_dot(a, b, g)
  got = flops.forward_flops(fn, S((12, 16), F32), S((3, 16, 8), F32), S((3,), jnp.int32))
  assert got == matmul(12, 16, 8)


# ------------------------------------------------------------------ convolutions


def _conv_flops(module, shape):
  params = jax.eval_shape(module.init, jax.random.PRNGKey(0), S(shape, F32))
  return flops.forward_flops(module.apply, params, S(shape, F32))


def test_conv_strided_grouped_dilated_and_transposed():
  # out 4x4 (stride 2, pad 1 of 8x8), 3x3 window, 6 in-features -> 10 out
  assert _conv_flops(nn.Conv(10, (3, 3), 2, padding=1, use_bias=False), (2, 8, 8, 6)) == \
      2 * 2 * 4 * 4 * 9 * 6 * 10
  # 3 groups: each output feature sums over 6 / 3 in-features
  assert _conv_flops(nn.Conv(9, (3, 3), feature_group_count=3, use_bias=False),
                     (1, 8, 8, 6)) == 2 * 8 * 8 * 9 * 2 * 9
  # atrous (rhs dilation 2): still 9 real taps per output
  assert _conv_flops(nn.Conv(4, (3, 3), kernel_dilation=2, use_bias=False),
                     (1, 8, 8, 3)) == 2 * 8 * 8 * 9 * 3 * 4
  # transposed, stride 2: every input pixel meets the 4x4 kernel once (out = 14x14 = 2 x
  # 7x7; the 3 of every 4 taps that land on lhs-dilation holes are not multiply-adds)
  assert _conv_flops(nn.ConvTranspose(3, (4, 4), (2, 2), use_bias=False), (1, 7, 7, 5)) == \
      2 * 7 * 7 * 16 * 5 * 3


# ------------------------------------------------------------------ shipped models


def _build(config, **data):
  config.data.update(data)
  return setup.build(config, jax.devices()[:1])


def test_mlp_per_example(tfds_dir):
  config = digits_mlp.get_config()
  s = _build(config, tfds_dir=tfds_dir)
  image = s.dummy_batch["image"].shape[1:]
  widths = (math.prod(image), *config.model.hidden, s.data.num_classes)
  forward = sum(matmul(1, a, b) for a, b in zip(widths, widths[1:]))
  assert flops.train_flops_per_item(s) == 3 * forward


def resnet_macs(model, hw, channels, classes):
  """Multiply-adds of one example through models/resnet.py's layout, conv by conv."""
  conv = lambda out_hw, k, cin, cout: out_hw * out_hw * k * k * cin * cout
  after = lambda hw, k, stride: (hw + 2 * (k // 2) - k) // stride + 1   # torchvision padding
  macs, c = conv(hw, 3, channels, model.width), model.width            # 3x3 stem
  for i, blocks in enumerate(model.stage_sizes):
    f = model.width * 2**i
    for j in range(blocks):
      stride = 2 if i > 0 and j == 0 else 1
      out_hw = after(hw, 3, stride)
      if model.block == "basic":
        macs += conv(out_hw, 3, c, f) + conv(out_hw, 3, f, f)
        out_c = f
      else:   # 1x1 down, 3x3 strided, 1x1 up to 4f
        macs += conv(hw, 1, c, f) + conv(out_hw, 3, f, f) + conv(out_hw, 1, f, 4 * f)
        out_c = 4 * f
      if c != out_c or stride != 1:                                      # projection
        macs += conv(after(hw, 1, stride), 1, c, out_c)
      c, hw = out_c, out_hw
  return macs + c * classes                                              # head


@pytest.mark.parametrize("arg", ["depth=18", "depth=50"])
def test_resnet_per_example(arg):
  # Fashion-MNIST's shape (28x28x1, 10 classes) from the synthetic source: the same model,
  # without preparing the dataset.
  config = fashion_mnist_resnet.get_config(arg)
  s = _build(config, name="synthetic", synthetic_shape=(28, 28, 1), synthetic_classes=10)
  assert s.dummy_batch["image"].shape[1:] == (28, 28, 1)
  per_example = flops.train_flops_per_item(s, rows=2)
  assert per_example == 3 * 2 * resnet_macs(config.model, 28, 1, 10)
  if arg == "depth=18":   # ~0.91 GFLOPs forward, ~2.7 GFLOPs forward + backward
    assert 2.6e9 < per_example < 2.9e9


def transformer_forward_per_token(m, seq_len, v):
  """Matmul FLOPs per token of models/transformer.py (tied embeddings, vocabulary v <= 2048 so
  both row lookups are one-hot matmuls) with the lm task's fused head + loss."""
  d, f, t = m.d_model, m.mlp_dim or 4 * m.d_model, seq_len
  kv = (m.num_kv_heads or m.num_heads) * (d // m.num_heads)
  layer = (matmul(1, d, d) + 2 * matmul(1, d, kv)   # q, k, v projections
           + matmul(1, d, d)                        # out projection
           + 2 * matmul(1, d, f)                    # MLP up and down (gelu: not gated)
           + 2 * matmul(1, d, t))                   # scores q.k and values p.v, causal in full
  return (matmul(1, v, d)                           # token embedding (one-hot @ table)
          + m.num_layers * layer
          + matmul(1, d, v)                         # LM head
          + matmul(1, v, d) + 2 * d)                # the target's logit: its head column, h.w


@pytest.mark.parametrize("model", [dict(scan_layers=True), dict(scan_layers=False),
                                   dict(remat="full", loss_chunk=16)])
def test_transformer_per_token(model, tfds_dir):
  config = shakespeare_char.get_config("runlocal")
  config.model.update(model)
  s = _build(config, tfds_dir=tfds_dir)
  want = 3 * transformer_forward_per_token(config.model, config.data.seq_len, s.model.vocab_size)
  assert flops.train_flops_per_item(s, rows=2) == want


@pytest.mark.parametrize("attention", ["cudnn", "pallas"])
def test_transformer_gpu_kernels_count_the_same(attention, tfds_dir, monkeypatch):
  """What "auto" picks on a GPU in bfloat16, forced: cuDNN flash attention (its version
  check faked, so that jax traces the cuDNN primitive on the CPU) or the Pallas flash
  attention (attention_impl=pallas); the Pallas LayerNorm and softmax-statistics kernels
  (Pallas' interpreter off the GPU)."""
  from jax._src.cudnn import fused_attention_stablehlo
  monkeypatch.setattr(fused_attention_stablehlo, "check_cudnn_version", lambda: 91000)
  config = shakespeare_char.get_config("runlocal")
  config.dtype = "bfloat16"
  config.model.update(attention_impl=attention, norm_impl="pallas", loss_impl="pallas",
                      num_kv_heads=2)
  s = _build(config, tfds_dir=tfds_dir)
  text = str(jax.make_jaxpr(lambda v, x: s.model.apply(v, x))(
      {"params": s.abstract_state.params}, S((2, config.data.seq_len), jnp.int32)))
  assert ("dot_product_attention_fwd" in text) == (attention == "cudnn")
  assert "pallas_call" in text and (attention == "cudnn") == ("flash_attention" not in text)
  want = 3 * transformer_forward_per_token(config.model, config.data.seq_len, s.model.vocab_size)
  assert flops.train_flops_per_item(s, rows=2) == want


def test_mfu_of_a_convolutional_run_is_its_counted_flops_over_the_peak(tmp_path, tfds_dir):
  """MFU was 0.0% for every convolutional model: it now comes from the counted FLOPs."""
  from configs import default
  from train_lib import modes
  config = default.get_config("runlocal")
  config.data.tfds_dir = tfds_dir
  config.train.num_steps, config.train.log_every, config.train.eval_every = 4, 2, 0
  config.train.peak_tflops, config.optim.warmup_steps = 1.0, 0
  modes.run("train", config, str(tmp_path))
  lines = [r for r in read_metrics(str(tmp_path)) if "mfu" in r]
  assert lines, read_metrics(str(tmp_path))
  per_example = flops.train_flops_per_item(_build(config), rows=config.data.batch_size)
  assert per_example > 1e5   # the convolutions counted
  for r in lines:
    assert r["mfu"] == pytest.approx(r["examples_per_sec"] * per_example / 1e12, rel=1e-6)

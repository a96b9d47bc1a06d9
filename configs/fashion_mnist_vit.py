"""A small Vision Transformer (4x4 patches: 49 tokens and a class token, width 192, depth 6,
3 heads, MLP 768) on Fashion-MNIST, AdamW with warmup and cosine decay, crop/flip
augmentation and label smoothing: how far a ViT gets without convolutions' prior on 60,000
small images. 2,684,554 parameters (pool=avg: 2,684,170; runlocal: 19,658).

    python main.py --config=configs/fashion_mnist_vit.py --workdir=runs/fmnist_vit
    python main.py --config=configs/fashion_mnist_vit.py:pool=avg --workdir=runs/fmnist_vit_avg
    python main.py --config=configs/fashion_mnist_vit.py --workdir=runs/v --mode=sanity
    python main.py --config=configs/fashion_mnist_vit.py:runlocal --workdir=/tmp/v  # CPU, a minute

`pool=avg` classifies the mean of the patch tokens instead of a class token. Weights of the
same shape load with --config.init_from=timm_vit:PATH or hf_vit:PATH (with
--config.model.norm_epsilon=1e-12), a head of another size with --config.init_skip='("head",)'
(train_lib/weights/timm_vit.py, hf_vit.py); tools/export.py writes them back.
Measured (seed 0, one H200, jax 0.11.2, 2026-12-04): test accuracy 0.9076 after 14,070 steps
(30 epochs), held-out loss 0.700 (with label smoothing), 87 steps/s = 11,140 examples/s
(bench/families.py; bench/RESULTS.md run 12).
"""

from configs import base


def get_config(arg=None):
  arg = base.parse_arg(arg, runlocal=False, pool="token")
  config = base.get_config()
  config.data.name = "fashion_mnist"
  config.data.batch_size = 128
  config.data.eval_batch_size = 1000
  config.data.random_crop = 2
  config.data.random_flip = True

  config.model.name = "vit"
  config.model.patch = 4
  config.model.width = 192
  config.model.depth = 6
  config.model.num_heads = 3
  config.model.mlp_dim = 768
  config.model.pool = arg.pool
  config.model.dropout = 0.0
  config.model.attention_dropout = 0.0
  config.model.norm_epsilon = 1e-6
  config.model.attention_impl = "auto"

  config.optim.name = "adamw"
  config.optim.learning_rate = 1e-3
  config.optim.warmup_steps = 1000
  config.optim.weight_decay = 0.05
  config.optim.clip_norm = 1.0

  config.task.label_smoothing = 0.1
  config.train.num_steps = 14070      # 30 epochs
  config.train.log_every = 200
  config.train.eval_every = 2000
  config.train.checkpoint_every = 2000
  if arg.runlocal:
    config.data.batch_size = 32
    config.data.eval_batch_size = 500
    config.model.width = 32
    config.model.depth = 2
    config.model.num_heads = 2
    config.model.mlp_dim = 64
    config.train.num_steps = 20
    config.train.log_every = 10
    config.train.eval_every = 20
    config.train.checkpoint_every = 10
    config.optim.warmup_steps = 5
  return config

"""ResNet-18 (or 34/50/101/152) shape, 3x3 stem, on Fashion-MNIST, SGD with momentum.

    python main.py --config=configs/fashion_mnist_resnet.py --workdir=runs/fmnist_resnet
    python main.py --config=configs/fashion_mnist_resnet.py:runlocal --workdir=/tmp/r
    python main.py --config=configs/fashion_mnist_resnet.py:depth=50 --workdir=runs/fmnist_r50
    python main.py --config=configs/fashion_mnist_resnet.py:depth=50,runlocal --workdir=/tmp/r50
    python main.py --config=configs/fashion_mnist_resnet.py:depth=50 --workdir=runs/ft \
        --config.model.stem=imagenet --config.init_skip="('stem','head')" \
        --config.init_from=torchvision_resnet:resnet50.safetensors   # fine-tune torchvision's

`depth` and `width` are arguments: `:depth=34,width=32`. Depths 18 and 34 use basic
blocks, 50, 101 and 152 bottleneck blocks (torchvision's layouts; 10 is a one-block-a-stage
toy). `:runlocal` keeps the depth's block kind and shrinks the net to one block a stage of
width 8, 20 steps: seconds of training on a CPU (the first compile takes longer).
Fine-tuning from torchvision (train_lib/weights/torchvision_resnet.py) needs its 7x7 stem;
its 1000-class head and RGB stem conv do not fit 10 grey classes, so they stay fresh.
Parameters (10 classes, 1 input channel): 11,172,810 at depth 18, 21,280,970 at 34,
23,519,690 at 50; :runlocal 77,858 and, at depth=50, 129,858.
Measured (seed 0, one H100, jax 0.11.2, 2026-11-22): test accuracy 0.950, loss 0.615
(with label smoothing 0.1), 152 steps/s.
Measured (depth=50, one H200, jax 0.11.2, 2026-12-04): 44.1 steps/s = 5,649 examples/s at
batch 128 (a 60 s run, stopped at step 176; bench/RESULTS.md run 12); accuracy not measured.
"""

from configs import base

_STAGES = {10: (1, 1, 1, 1), 18: (2, 2, 2, 2), 34: (3, 4, 6, 3),
           50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3)}


def get_config(arg=None):
  arg = base.parse_arg(arg, runlocal=False, depth=18, width=64)
  if arg.depth not in _STAGES:
    raise ValueError(f"depth={arg.depth} not supported; use one of {sorted(_STAGES)}")
  config = base.get_config()
  config.data.name = "fashion_mnist"
  config.data.batch_size = 128
  config.data.eval_batch_size = 1000
  config.data.random_crop = 2
  config.data.random_flip = True

  config.model.name = "resnet"
  config.model.stage_sizes = _STAGES[arg.depth]
  config.model.width = arg.width
  config.model.block = "bottleneck" if arg.depth >= 50 else "basic"
  config.model.stem = "small"     # 3x3 conv; imagenet: torchvision's 7x7/2 + max-pool

  config.optim.name = "sgd"
  config.optim.learning_rate = 0.1
  config.optim.momentum = 0.9
  config.optim.nesterov = True
  config.optim.warmup_steps = 500
  config.optim.weight_decay = 5e-4

  config.task.label_smoothing = 0.1
  config.train.num_steps = 9380       # 20 epochs
  config.train.log_every = 200
  config.train.eval_every = 2000
  config.train.checkpoint_every = 2000
  if arg.runlocal:
    config.data.batch_size = 32
    config.data.eval_batch_size = 500
    config.model.stage_sizes = (1, 1, 1, 1)
    config.model.width = 8
    config.train.num_steps = 20
    config.train.log_every = 10
    config.train.eval_every = 20
    config.train.checkpoint_every = 10
    config.optim.warmup_steps = 5
  return config

"""ResNet-50 (torchvision's layout, 7x7 stem) on a JPEG records folder at 224x224: decode,
random-resized crop and flip in grain worker processes (input_pipeline/jpeg.py).

    python tools/jpeg_records.py --out=/data/fmnist256 --fashion_mnist       # 70,000 JPEGs
    python main.py --config=configs/jpeg_resnet50.py --workdir=runs/r50 \
        --config.data.source_dir=/data/fmnist256
    python tools/jpeg_records.py --out=/data/imagenet --folder=/data/raw/imagenet  # train/, val/
    python main.py --config=configs/jpeg_resnet50.py --workdir=runs/in1k \
        --config.data.source_dir=/data/imagenet --config.data.eval_split=val
    python main.py --config=configs/jpeg_resnet50.py:runlocal --workdir=/tmp/r50 \
        --config.data.source_dir=/tmp/jr   # tools/jpeg_records.py --size=64 --limit=512

The classes come from the folder's records.json. bf16, SGD with Nesterov momentum at
0.1 x batch / 256, label smoothing 0.1, weight decay 5e-5 (Goyal et al.'s recipe, short).
data.worker_processes (default 12 here) prepares batches in processes; the progress line
shows "data wait" when the step waits on them for more than 5% of the time.
`:runlocal` is a one-block-a-stage net of width 8 at 32x32, 10 steps, threads: seconds on
a CPU.
"""

from configs import base


def get_config(arg=None):
  arg = base.parse_arg(arg, runlocal=False)
  config = base.get_config()
  config.data.name = "jpeg"
  config.data.eval_split = "test"
  config.data.batch_size = 256
  config.data.eval_batch_size = 500
  config.data.image_size = 224
  config.data.random_flip = True
  config.data.worker_processes = 12
  config.data.prefetch = 2

  config.model.name = "resnet"
  config.model.stage_sizes = (3, 4, 6, 3)
  config.model.block = "bottleneck"
  config.model.stem = "imagenet"
  config.dtype = "bfloat16"

  config.optim.name = "sgd"
  config.optim.learning_rate = 0.1 * config.data.batch_size / 256
  config.optim.momentum = 0.9
  config.optim.nesterov = True
  config.optim.warmup_steps = 500
  config.optim.weight_decay = 5e-5
  config.task.label_smoothing = 0.1

  config.train.num_steps = 5000
  config.train.log_every = 100
  config.train.eval_every = 2500
  config.train.checkpoint_every = 2500
  if arg.runlocal:
    config.dtype = "float32"
    config.data.batch_size = 16
    config.data.eval_batch_size = 64
    config.data.image_size = 32
    config.data.worker_processes = 0
    config.data.worker_threads = 2
    config.model.stage_sizes = (1, 1, 1, 1)
    config.model.width = 8
    config.train.num_steps = 10
    config.train.log_every = 5
    config.train.eval_every = 10
    config.train.checkpoint_every = 10
    config.optim.warmup_steps = 2
  return config

"""A 1.3B-parameter GPT (GPT-3 XL's shape: 24 layers, width 2048, 16 heads of 128) at
context 1024, trained with FSDP: parameters and optimizer state sharded over all devices.

    python main.py --config=configs/gpt_1b3.py:synthetic --workdir=runs/gpt_1b3
    python main.py --config=configs/gpt_1b3.py:runlocal --workdir=/tmp/g   # CPU, seconds
    python main.py --config=configs/gpt_1b3.py --workdir=/tmp/g --mode=shardings
    python bench/scaling.py --config=configs/gpt_1b3.py:synthetic --mesh=fsdp

Measured: see bench/RESULTS.md (two H200s).
"""

from configs import base, gpt2_124m


def get_config(arg=None):
  arg = base.parse_arg(arg, runlocal=False, synthetic=False)
  config = gpt2_124m.get_config(f"synthetic={arg.synthetic}")
  config.model.num_layers = 24
  config.model.d_model = 2048
  config.model.num_heads = 16
  config.data.batch_size = 256
  config.optim.grad_accum_steps = 16    # micro-batches of 16 sequences
  config.optim.learning_rate = 2e-4
  config.mesh.data = 1
  config.mesh.fsdp = -1                 # every device holds 1/N of the state
  if arg.runlocal:
    runlocal = gpt2_124m.get_config("runlocal")
    config.data.update(runlocal.data)
    config.model.update(runlocal.model)
    config.optim.update(runlocal.optim)
    config.train.update(runlocal.train)
    config.dtype = "float32"
  return config

"""Masked byte language model (BERT-style) on the embedded Shakespeare corpus: a
bidirectional Transformer encoder predicts 15% of the bytes, hidden as BERT hides them
(80% [MASK], 10% a random byte, 10% kept).

    python main.py --config=configs/shakespeare_mlm.py --workdir=runs/mlm
    python main.py --config=configs/shakespeare_mlm.py:runlocal --workdir=/tmp/m  # CPU, seconds

The result is the held-out masked-token loss (nats per hidden byte) and accuracy.
Measured (seed 0, one H200, jax 0.11.2, 2026-12-03; bench/frameworks.py): held-out
masked-byte loss 0.714 nats, accuracy 0.781, 120 steps/s (1.98M tokens/s), 78 s in all.
"""

from configs import base


def get_config(arg=None):
  arg = base.parse_arg(arg, runlocal=False)
  config = base.get_config()
  config.task.name = "mlm"
  config.task.mask_rate = 0.15
  config.task.mask_token = -1          # -1: the first id after the data's (256 for bytes)
  config.data.name = "shakespeare"
  config.data.eval_split = "validation"
  config.data.seq_len = 256
  config.data.batch_size = 64
  config.data.eval_batch_size = 64

  config.model = base.transformer_model()
  config.model.causal = False
  config.model.vocab_size = 257        # 256 bytes + the mask token
  config.model.num_layers = 6
  config.model.num_heads = 6
  config.model.d_model = 384
  config.model.max_len = 256
  config.model.dropout = 0.1

  config.optim.learning_rate = 1e-3
  config.optim.end_learning_rate_factor = 0.1
  config.optim.warmup_steps = 200
  config.optim.b2 = 0.99
  config.optim.weight_decay = 0.1
  config.optim.clip_norm = 1.0
  config.dtype = "bfloat16"

  config.train.num_steps = 5000
  # Only the ~15% masked tokens carry a target, and a character's context says little
  # beyond its frequency early on: the real-vs-shuffled gap opens slowly (6% by step ~200).
  config.sanity.label_signal_steps = 400
  config.train.log_every = 100
  config.train.eval_every = 500
  config.train.checkpoint_every = 1000
  if arg.runlocal:
    config.dtype = "float32"
    config.data.seq_len = 64
    config.data.batch_size = 16
    config.data.eval_batch_size = 16
    config.data.eval_limit = 32
    config.model.num_layers = 2
    config.model.num_heads = 4
    config.model.d_model = 64
    config.model.max_len = 64
    config.model.dropout = 0.0
    config.optim.warmup_steps = 5
    config.train.num_steps = 60
    config.train.log_every = 20
    config.train.eval_every = 30
    config.train.checkpoint_every = 30
  return config

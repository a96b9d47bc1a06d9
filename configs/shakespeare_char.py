"""Character-level Transformer on the embedded Shakespeare corpus (nanoGPT's baseline shape:
6 layers, 6 heads, width 384, context 256, dropout 0.2).

    python main.py --config=configs/shakespeare_char.py --workdir=runs/shakespeare
    python main.py --config=configs/shakespeare_char.py --workdir=runs/shakespeare --mode=sample
    python main.py --config=configs/shakespeare_char.py:runlocal --workdir=/tmp/s  # seconds, CPU

Dropout 0.2 applies to the embeddings, both residual branches and the attention
probabilities, as in nanoGPT's recipe; with attention dropout, training attends in XLA
(jax's cuDNN attention has no per-step dropout seed) and evaluation in cuDNN. Measured
before attention dropout was added (seed 0, one H100, 5,000 steps): held-out loss 1.161
(1.68 bits per byte), ~90 steps/s; curve in bench/results/shakespeare_char_loss_h100.png.
With it (bench/RESULTS.md run 18, one H100, seeds 0 and 1): 1.1715 held out, 0.0025 below
nanoGPT's recipe on the same bytes, at 68 steps/s.
"""

from configs import base


def get_config(arg=None):
  arg = base.parse_arg(arg, runlocal=False)
  config = base.get_config()
  config.task.name = "lm"
  config.data.name = "shakespeare"
  config.data.eval_split = "validation"
  config.data.seq_len = 256
  config.data.batch_size = 64
  config.data.eval_batch_size = 64

  config.model = base.transformer_model()
  config.model.vocab_size = 0          # the data's: 256 bytes, or data.tokenizer's, padded to 64
  config.model.num_layers = 6
  config.model.num_heads = 6
  config.model.d_model = 384
  config.model.max_len = 256
  config.model.position = "learned"
  config.model.norm = "layernorm"
  config.model.activation = "gelu"
  config.model.dropout = 0.2
  config.model.attention_dropout = 0.2
  config.model.loss_chunk = 0

  config.optim.name = "adamw"
  config.optim.learning_rate = 1e-3
  config.optim.end_learning_rate_factor = 0.1
  config.optim.warmup_steps = 100
  config.optim.b2 = 0.99
  config.optim.weight_decay = 0.1
  config.optim.clip_norm = 1.0
  config.dtype = "bfloat16"

  config.train.num_steps = 5000
  config.train.log_every = 100
  config.train.eval_every = 250
  config.train.checkpoint_every = 1000
  config.data.eval_limit = 0
  config.sample.max_new_tokens = 250   # prompt + new tokens must fit in max_len
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
    config.model.attention_dropout = 0.0
    config.optim.warmup_steps = 5
    config.train.num_steps = 60
    config.train.log_every = 20
    config.train.eval_every = 30
    config.train.checkpoint_every = 30
    config.sample.max_new_tokens = 40
  return config

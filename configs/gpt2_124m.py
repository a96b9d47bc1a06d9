"""GPT-2 small (124M): 12 layers, 12 heads, width 768, context 1024, vocabulary 50304.

    python main.py --config=configs/gpt2_124m.py --workdir=runs/gpt2          # Shakespeare bytes
    python main.py --config=configs/gpt2_124m.py:synthetic --workdir=/tmp/g   # random tokens
    python main.py --config=configs/gpt2_124m.py:runlocal --workdir=/tmp/g    # seconds, CPU
    python bench/train_step.py --config=configs/gpt2_124m.py:synthetic        # speed

Global batch 512 x 1024 tokens (GPT-3 Small's 0.5M) as 8 micro-batches of 64. bfloat16
compute, float32 parameters; cuDNN attention; Pallas LayerNorm with the residual add fused
in; unscanned layers; bf16 logits with float32 softmax statistics taken in one pass.
Speed on one H100: bench/RESULTS.md.
Without a GPT-2 tokenizer offline, text runs use bytes (ids < 256 of the 50304).
Measured: see bench/RESULTS.md.
"""

from configs import base


def get_config(arg=None):
  arg = base.parse_arg(arg, runlocal=False, synthetic=False)
  config = base.get_config()
  config.task.name = "lm"
  config.data.name = "synthetic_tokens" if arg.synthetic else "shakespeare"
  config.data.eval_split = "validation"
  config.data.seq_len = 1024
  config.data.batch_size = 512
  config.data.eval_batch_size = 64
  if arg.synthetic:   # token ids drawn below the model's vocabulary; text is bytes
    config.data.vocab_size = 50304
  else:               # synthetic tokens evaluate one batch; text evaluates up to the limit
    config.data.eval_limit = 512

  config.model = base.transformer_model()
  config.model.vocab_size = 50304
  config.model.num_layers = 12
  config.model.num_heads = 12
  config.model.d_model = 768
  config.model.max_len = 1024
  config.model.position = "learned"
  config.model.norm = "layernorm"
  config.model.activation = "gelu"
  config.model.dropout = 0.0
  config.model.remat = "none"
  config.model.scan_layers = False    # unrolled layers: 30% faster than nn.scan on an H100
  config.model.loss_chunk = 0         # bf16 logits at micro-batch 32 fit; chunking is 10% slower

  config.optim.name = "adamw"
  config.optim.grad_accum_steps = 8    # 8 micro-batches of 64 (the fastest size on an H100)
  config.optim.learning_rate = 6e-4
  config.optim.end_learning_rate_factor = 0.1
  config.optim.warmup_steps = 2000
  config.optim.b2 = 0.95
  config.optim.weight_decay = 0.1
  config.optim.clip_norm = 1.0
  config.dtype = "bfloat16"

  config.train.num_steps = 600_000
  config.train.log_every = 10
  config.train.eval_every = 1000
  config.train.checkpoint_every = 1000
  if arg.runlocal:
    config.dtype = "float32"
    if arg.synthetic:
      config.data.vocab_size = 512
    else:
      config.data.eval_limit = 8
    config.data.seq_len = 64
    config.data.batch_size = 8
    config.data.eval_batch_size = 8
    config.model.vocab_size = 512
    config.model.num_layers = 2
    config.model.num_heads = 2
    config.model.d_model = 64
    config.model.max_len = 64
    config.model.loss_chunk = 32
    config.optim.grad_accum_steps = 2
    config.optim.warmup_steps = 5
    config.train.num_steps = 20
    config.train.log_every = 10
    config.train.eval_every = 20
    config.train.checkpoint_every = 20
  return config

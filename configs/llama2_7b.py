"""Llama-2 7B's shape (Touvron et al., 2023): 32 layers, width 4096, 32 heads of 128, SwiGLU
MLP of 11008, RMSNorm, rotary positions, untied 32000-token embeddings, no biases, context
4096. Parameters and optimizer state sharded over every device (FSDP); `tensor=N` adds
tensor parallelism over heads, MLP units and vocabulary; `gqa` uses 8 key/value heads
(grouped-query attention, as Llama-2 70B) instead of 32.

    python main.py --config=configs/llama2_7b.py --workdir=/tmp/l --mode=compile \\
        --config.compile.topology=v5p:4x4x4          # does it fit? (no TPU needed)
    python main.py --config=configs/llama2_7b.py:gqa,tensor=4 --workdir=/tmp/l --mode=compile \\
        --config.compile.topology=v5e:16x16
    python main.py --config=configs/llama2_7b.py:runlocal --workdir=/tmp/l   # CPU, seconds

Trains on random tokens below the vocabulary (no Llama tokenizer offline): this config is
for sizing, compiling and throughput. `runlocal` trains on the embedded Shakespeare bytes
instead, so that `--mode=sanity` has a signal to find. Global batch 256 x 4096 tokens (1M), bf16 compute,
float32 parameters and AdamW moments, every layer rematerialised, scanned layers.
"""

from configs import base


def get_config(arg=None):
  arg = base.parse_arg(arg, runlocal=False, gqa=False, tensor=1)
  config = base.get_config()
  config.task.name = "lm"
  if arg.runlocal:   # bytes of real text: sanity's label-signal check needs learnable targets
    config.data.name = "shakespeare"
    config.data.eval_split = "validation"
    config.data.eval_limit = 8
  else:
    config.data.name = "synthetic_tokens"
    config.data.vocab_size = 32000
  config.data.seq_len = 4096
  config.data.batch_size = 256
  config.data.eval_batch_size = 256

  config.model = base.transformer_model()
  config.model.vocab_size = 32000
  config.model.num_layers = 32
  config.model.d_model = 4096
  config.model.num_heads = 32
  config.model.num_kv_heads = 8 if arg.gqa else 0
  config.model.mlp_dim = 11008
  config.model.max_len = 4096
  config.model.position = "rope"
  config.model.norm = "rmsnorm"
  config.model.activation = "swiglu"
  config.model.tie_embeddings = False
  config.model.use_bias = False
  config.model.scaled_residual_init = False
  config.model.scan_layers = True
  config.model.remat = "full"
  config.model.loss_chunk = 1024

  config.optim.name = "adamw"
  config.optim.learning_rate = 3e-4
  config.optim.end_learning_rate_factor = 0.1
  config.optim.warmup_steps = 2000
  config.optim.b2 = 0.95
  config.optim.weight_decay = 0.1
  config.optim.clip_norm = 1.0
  config.dtype = "bfloat16"

  config.mesh.data = 1
  config.mesh.fsdp = -1
  config.mesh.tensor = arg.tensor

  config.train.num_steps = 500_000
  config.train.log_every = 10
  config.train.eval_every = 1000
  config.train.checkpoint_every = 1000
  if arg.runlocal:   # the same architecture, small enough for a CPU
    config.dtype = "float32"
    config.data.seq_len = 64
    config.data.batch_size = 8
    config.data.eval_batch_size = 8
    config.model.vocab_size = 512
    config.model.num_layers = 2
    config.model.d_model = 64
    config.model.num_heads = 4
    config.model.num_kv_heads = 2 if arg.gqa else 0
    config.model.mlp_dim = 172
    config.model.max_len = 64
    config.model.loss_chunk = 32
    config.model.remat = "none"
    config.optim.warmup_steps = 5
    config.train.num_steps = 20
    config.train.eval_every = 20
    config.train.checkpoint_every = 20
  return config

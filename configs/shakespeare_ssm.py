"""Character-level selective state-space model (Mamba's block, models/ssm.py) on the embedded
Shakespeare corpus, at the parameter count of configs/shakespeare_char.py's Transformer
(10,818,432) for a families ablation: 11 blocks of width 384 (d_inner 768, d_state 16,
dt_rank 24, tied embeddings) hold 10,705,152 parameters (-1.0%). Data, context, optimizer
and schedule are shakespeare_char's, so the family is the one change: attention against
a selective scan.

    python main.py --config=configs/shakespeare_ssm.py --workdir=runs/shakespeare_ssm
    python main.py --config=configs/shakespeare_ssm.py --workdir=runs/shakespeare_ssm --mode=sample
    python main.py --config=configs/shakespeare_ssm.py --workdir=runs/m --mode=sanity
    python main.py --config=configs/shakespeare_ssm.py:runlocal --workdir=/tmp/m  # seconds, CPU

No dropout (the SSM has none; shakespeare_char uses 0.2), so it may overfit sooner.
--mode=sample decodes with the recurrent state, so it has no length limit. The scan holds
B*T*d_inner*d_state = 201M float32 states per layer; recomputed in the backward pass, a
step peaked at 7.2 GiB and took ~156 ms on one H200 (a bare train step, not main.py):
XLA's associative scan over [B, T, d_inner, d_state] costs ~11 ms per layer, fused Mamba
kernels would not.
Measured (seed 0, one H200, jax 0.11.2, 2026-12-04; the families ablation, 750 steps, same
data and schedule): held-out loss 1.209 nats/byte (1.744 bits/byte), -0.390 vs the
Transformer's 1.599 at 750 steps; 6.3 steps/s, 102,442 tokens/s (0.05x the Transformer's
120.6 in the same session; bench/RESULTS.md run 12). A full 5,000-step run: not yet measured.
"""

import ml_collections

from configs import base, shakespeare_char


def get_config(arg=None):
  config = shakespeare_char.get_config(arg)   # data, optimizer, schedule, steps: the same
  arg = base.parse_arg(arg, runlocal=False)
  config.model = ml_collections.ConfigDict()
  config.model.name = "ssm"
  config.model.vocab_size = 0          # the data's: 256 bytes, or data.tokenizer's, padded to 64
  config.model.num_layers = 2 if arg.runlocal else 11
  config.model.d_model = 64 if arg.runlocal else 384
  config.model.expand = 2
  config.model.d_state = 8 if arg.runlocal else 16
  config.model.d_conv = 4
  config.model.dt_rank = 0          # ceil(d_model / 16)
  config.model.tie_embeddings = True
  config.model.scan_layers = True
  config.model.remat = False
  if arg.runlocal:
    config.optim.learning_rate = 1e-2   # a tiny model: memorises sanity's batch in ~30 steps
  return config

"""Character-level GRU on the embedded Shakespeare corpus: configs/shakespeare_lstm.py with
GRU cells, 2 layers of width 928, embedding 928: 10,820,736 parameters, the count of
configs/shakespeare_char.py's Transformer (10,818,432) within 0.02%.

    python main.py --config=configs/shakespeare_gru.py --workdir=runs/shakespeare_gru
    python main.py --config=configs/shakespeare_gru.py:runlocal --workdir=/tmp/g  # seconds, CPU

Measures held-out loss and bits per byte against shakespeare_char and shakespeare_lstm.
Measured (seed 0, one H200, jax 0.11.2, 2026-12-04; the families ablation, 750 steps, same
data and schedule): held-out loss 1.332 nats/byte (1.921 bits/byte), -0.268 vs the
Transformer's 1.599 at 750 steps; 33.5 steps/s, 548,570 tokens/s (0.28x the Transformer's
120.6 in the same session; bench/RESULTS.md run 12). A full 5,000-step run: not yet measured.
"""

from configs import base
from configs import shakespeare_lstm


def get_config(arg=None):
  config = shakespeare_lstm.get_config(arg)
  arg = base.parse_arg(arg, runlocal=False)
  config.model.cell = "gru"
  config.model.hidden = 64 if arg.runlocal else 928
  return config

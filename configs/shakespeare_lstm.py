"""Character-level LSTM on the embedded Shakespeare corpus, at the parameter count of
configs/shakespeare_char.py's Transformer (10,818,432) for a families ablation: 2 layers of
width 808, embedding 808: 10,872,704 parameters (+0.5%). Everything but the model is
shakespeare_char's (data, optimizer, schedule, steps, dtype), taken from it, so the family
is the one change.

    python main.py --config=configs/shakespeare_lstm.py --workdir=runs/shakespeare_lstm
    python main.py --config=configs/shakespeare_lstm.py --workdir=runs/l --mode=sample
    python main.py --config=configs/shakespeare_lstm.py:runlocal --workdir=/tmp/l  # seconds, CPU

Measured (seed 0, one H200, jax 0.11.2, 2026-12-04; the families ablation, 750 steps, same
data and schedule): held-out loss 1.426 nats/byte (2.058 bits/byte), -0.173 vs the
Transformer's 1.599 at 750 steps; 30.5 steps/s, 499,962 tokens/s (0.25x the Transformer's
120.6 in the same session; bench/RESULTS.md run 12). A full 5,000-step run: not yet measured.
"""

import ml_collections

from configs import base, shakespeare_char


def get_config(arg=None):
  config = shakespeare_char.get_config(arg)
  arg = base.parse_arg(arg, runlocal=False)
  config.model = ml_collections.ConfigDict()
  config.model.name = "rnn"
  config.model.cell = "lstm"         # lstm | gru
  config.model.vocab_size = 0          # the data's: 256 bytes, or data.tokenizer's, padded to 64
  config.model.num_layers = 2
  config.model.hidden = 808
  config.model.dropout = 0.2
  if arg.runlocal:
    config.model.hidden = 64
    config.model.dropout = 0.0
    config.optim.learning_rate = 1e-2   # a tiny model: memorises sanity's batch in ~160 steps
  return config

"""Character-level GRU on the embedded Shakespeare corpus: configs/shakespeare_lstm.py with
GRU cells, 2 layers of width 928, embedding 928: 10,820,736 parameters, the count of
configs/shakespeare_char.py's Transformer (10,818,432) within 0.02%.

    python main.py --config=configs/shakespeare_gru.py --workdir=runs/shakespeare_gru
    python main.py --config=configs/shakespeare_gru.py:runlocal --workdir=/tmp/g  # seconds, CPU

Measures held-out loss and bits per byte against shakespeare_char and shakespeare_lstm.
Measured: (GPU numbers to come)
"""

from configs import base
from configs import shakespeare_lstm


def get_config(arg=None):
  config = shakespeare_lstm.get_config(arg)
  arg = base.parse_arg(arg, runlocal=False)
  config.model.cell = "gru"
  config.model.hidden = 64 if arg.runlocal else 928
  return config

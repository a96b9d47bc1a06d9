"""Fixtures for models/rnn.py: torch.nn.LSTM and torch.nn.GRU (2 layers, batch_first,
torch's own random init from a fixed seed) on a random input with nonzero initial states.

    python tools/make_fixtures.py rnn    # -> tests/fixtures/rnn/{lstm,gru}.npz

Each .npz holds, in float32, the weights under torch's names (weight_ih_l0, ...), the
input x [B, T, D], the initial states h0 (and c0) [L, B, H], the outputs y [B, T, H] and
the final states h_n (and c_n); read by tests/test_parity_rnn.py.
"""

import os

import numpy as np
import torch

B, T, D, H, L = 3, 7, 5, 6, 2


def build(out_dir: str):
  """Weights and inputs drawn in float32 and saved as they are; the reference forward runs
  in float64 on those same values, so the fixture's error is that of its float32 storage."""
  torch.manual_seed(0)
  for name, cls in (("lstm", torch.nn.LSTM), ("gru", torch.nn.GRU)):
    rnn = cls(D, H, num_layers=L, batch_first=True)
    x, h0, c0 = torch.randn(B, T, D), torch.randn(L, B, H), torch.randn(L, B, H)
    arrays = {k: v.detach().numpy().copy() for k, v in rnn.state_dict().items()}
    arrays.update(x=x.numpy(), h0=h0.numpy())
    rnn = rnn.double()
    with torch.no_grad():
      if name == "lstm":
        y, (h_n, c_n) = rnn(x.double(), (h0.double(), c0.double()))
        arrays.update(c0=c0.numpy(), c_n=c_n.numpy())
      else:
        y, h_n = rnn(x.double(), h0.double())
    arrays.update(y=y.numpy(), h_n=h_n.numpy())
    np.savez(os.path.join(out_dir, f"{name}.npz"),
             **{k: v.astype(np.float32) for k, v in arrays.items()})

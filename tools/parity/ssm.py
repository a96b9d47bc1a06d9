"""Parity fixture for models/ssm.py: one Mamba block, x + Mixer(RMSNorm(x)), in plain numpy
with the selective scan as a python loop over time steps (no associative scan, no JAX).

    python tools/make_fixtures.py ssm     # writes tests/fixtures/ssm/block.npz

Weights are random from a fixed numpy seed, in the reference's layout (mamba_simple.py:
torch Linear weights [out, in], conv1d.weight [d_inner, 1, d_conv]); float64 throughout,
so the fixture is the exact answer up to float64 rounding.
"""

import os

import numpy as np

D_MODEL, D_INNER, D_STATE, D_CONV, DT_RANK = 16, 32, 8, 4, 2
BATCH, LENGTH, EPS = 2, 12, 1e-6


def weights(rng) -> dict:
  E, N, R = D_INNER, D_STATE, DT_RANK
  normal = lambda *shape, std=0.3: rng.normal(0.0, std, shape)
  return {
      "norm.weight": 1.0 + normal(D_MODEL, std=0.1),
      "in_proj.weight": normal(2 * E, D_MODEL),
      "conv1d.weight": normal(E, 1, D_CONV, std=0.5),
      "conv1d.bias": normal(E, std=0.1),
      "x_proj.weight": normal(R + 2 * N, E),
      "dt_proj.weight": normal(E, R, std=0.5),
      # delta ~ softplus(-1 +- 1), larger than Mamba's init, so that the state decays
      # visibly within the fixture's 12 steps.
      "dt_proj.bias": normal(E, std=1.0) - 1.0,
      # S4D-real plus noise, so that a transposed A_log would not pass.
      "A_log": np.log(np.arange(1, N + 1))[None, :] + normal(E, N, std=0.2),
      "D": 1.0 + normal(E, std=0.3),
      "out_proj.weight": normal(D_MODEL, E),
  }


def silu(x):
  return x / (1.0 + np.exp(-x))


def softplus(x):
  return np.log1p(np.exp(x))


def block(w: dict, x_BxTxD):
  B, T, _ = x_BxTxD.shape
  E, N, R, K = D_INNER, D_STATE, DT_RANK, D_CONV
  h = x_BxTxD / np.sqrt(np.mean(x_BxTxD ** 2, axis=-1, keepdims=True) + EPS) * w["norm.weight"]
  xz = h @ w["in_proj.weight"].T
  x, z = xz[..., :E], xz[..., E:]
  conv = np.zeros_like(x)                      # causal depthwise conv: taps on x[t-K+1..t]
  for t in range(T):
    for k in range(K):
      s = t - (K - 1) + k
      if s >= 0:
        conv[:, t] += w["conv1d.weight"][:, 0, k] * x[:, s]
  x = silu(conv + w["conv1d.bias"])
  dbc = x @ w["x_proj.weight"].T
  dt, Bm, Cm = dbc[..., :R], dbc[..., R:R + N], dbc[..., R + N:]
  delta = softplus(dt @ w["dt_proj.weight"].T + w["dt_proj.bias"])      # [B, T, E]
  A = -np.exp(w["A_log"])                                                # [E, N]
  y = np.zeros((B, T, E))
  for b in range(B):
    state = np.zeros((E, N))
    for t in range(T):
      state = np.exp(delta[b, t][:, None] * A) * state + \
          (delta[b, t] * x[b, t])[:, None] * Bm[b, t][None, :]
      y[b, t] = state @ Cm[b, t] + w["D"] * x[b, t]
  y = y * silu(z)
  return x_BxTxD + y @ w["out_proj.weight"].T


def build(out_dir: str):
  rng = np.random.default_rng(0)
  w = weights(rng)
  x_BxTxD = rng.normal(0.0, 1.0, (BATCH, LENGTH, D_MODEL))
  out_BxTxD = block(w, x_BxTxD)
  np.savez(os.path.join(out_dir, "block.npz"), x=x_BxTxD, out=out_BxTxD,
           config=np.array([D_MODEL, D_INNER, D_STATE, D_CONV, DT_RANK]),
           **{f"w.{k}": v for k, v in w.items()})

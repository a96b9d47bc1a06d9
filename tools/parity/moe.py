"""Mixture-of-experts parity fixtures: Hugging Face Mixtral's sparse MoE block
(transformers' MixtralSparseMoeBlock) on random weights, its input, output and router logits.

    python tools/make_fixtures.py moe      # writes tests/fixtures/moe/

A tiny MixtralConfig: width 16, 4 experts of 32 SwiGLU units, 2 experts per token, no
router jitter. The block's parameters are drawn from a fixed seed (router ~ N(0, 0.3) so that
tokens spread over the experts with clear margins between their choices; experts ~ N(0, 0.3)).
Files:
  weights.npz  HF's layouts: gate [E, D] (router, y = x gate^T), gate_up_proj [E, 2F, D]
               (the first F rows are w1, the gate; the last F are w3, the up projection),
               down_proj [E, D, F] (w2)
  io.npz       x [2, 12, 16] float32, y (the block's output, eval mode), router_logits
               [24, 4], top_k_index and top_k_weights [24, 2] (the router's choices), and
               load_balancing_loss (transformers' load_balancing_loss_func of this one layer)
"""

import os

import numpy as np


def build(out_dir: str):
  import torch
  from transformers import MixtralConfig
  from transformers.models.mixtral import modeling_mixtral

  torch.manual_seed(0)
  config = MixtralConfig(hidden_size=16, intermediate_size=32, num_local_experts=4,
                         num_experts_per_tok=2, router_jitter_noise=0.0)
  block = modeling_mixtral.MixtralSparseMoeBlock(config).eval()
  with torch.no_grad():
    block.gate.weight.normal_(0.0, 0.3)
    block.experts.gate_up_proj.normal_(0.0, 0.3)
    block.experts.down_proj.normal_(0.0, 0.3)
    x = torch.randn(2, 12, 16, generator=torch.Generator().manual_seed(1))
    y = block(x.clone())
    router_logits, top_k_weights, top_k_index = block.gate(x.reshape(-1, 16))
    lb = modeling_mixtral.load_balancing_loss_func((router_logits,), 4, 2)
  np.savez(os.path.join(out_dir, "weights.npz"),
           gate=block.gate.weight.detach().numpy().astype(np.float32),
           gate_up_proj=block.experts.gate_up_proj.detach().numpy().astype(np.float32),
           down_proj=block.experts.down_proj.detach().numpy().astype(np.float32))
  np.savez(os.path.join(out_dir, "io.npz"), x=x.numpy().astype(np.float32),
           y=y.numpy().astype(np.float32),
           router_logits=router_logits.numpy().astype(np.float32),
           top_k_index=top_k_index.numpy().astype(np.int32),
           top_k_weights=top_k_weights.numpy().astype(np.float32),
           load_balancing_loss=np.float32(lb.item()))

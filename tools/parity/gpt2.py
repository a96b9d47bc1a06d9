"""GPT-2 parity fixtures: a tiny Hugging Face GPT2LMHeadModel, its weights and its logits.

    python tools/make_fixtures.py gpt2     # writes tests/fixtures/gpt2/

2 layers, width 64, 4 heads, 64 positions, vocabulary 256, GPT-2's own config otherwise
(gelu_new, LayerNorm eps 1e-5, tied head). Random init from a fixed seed with a standard
deviation of 0.2 (GPT-2's is 0.02), so the logits are far from uniform (a run that ignored
the weights would show it in its first loss), then every LayerNorm and bias moved off its
init value (1 and 0), so that a swapped scale, bias or q|k|v slice changes the logits. Files:
  model.safetensors   as save_pretrained writes it ("transformer." names, no lm_head: tied)
  io.npz              tokens [2, 64] int32 and HF's logits [2, 64, 256] float32 (eval mode)
"""

import os
import tempfile

import numpy as np


def build(out_dir: str):
  import torch
  import transformers

  torch.manual_seed(0)
  config = transformers.GPT2Config(n_layer=2, n_embd=64, n_head=4, n_positions=64,
                                   vocab_size=256, bos_token_id=255, eos_token_id=255,
                                   initializer_range=0.2)
  model = transformers.GPT2LMHeadModel(config).eval()
  with torch.no_grad():
    for name, p in model.named_parameters():
      if name.endswith("bias") or ".ln_" in name:
        p.add_(0.1 * torch.randn_like(p))
  with tempfile.TemporaryDirectory() as tmp:
    model.save_pretrained(tmp, safe_serialization=True)
    with open(os.path.join(tmp, "model.safetensors"), "rb") as f:
      blob = f.read()
  with open(os.path.join(out_dir, "model.safetensors"), "wb") as f:
    f.write(blob)
  tokens = torch.randint(0, 256, (2, 64), generator=torch.Generator().manual_seed(1))
  with torch.no_grad():
    logits = model(tokens).logits
  np.savez(os.path.join(out_dir, "io.npz"), tokens=tokens.numpy().astype(np.int32),
           logits=logits.numpy().astype(np.float32))

"""PyTorch peer for bench/train_step.py: GPT-2 124M trained the way nanoGPT trains it, timed
on the same GPU in the same call, so the two give a same-run ratio.

    python bench/torch_gpt2.py --micro_batch=64 --accum=1,8 --json=/tmp/torch.json

Needs PyTorch with CUDA (not in requirements.txt: only this script uses it). The model is
written here from the GPT-2 paper's shape, as nanoGPT builds it: learned positions, pre-norm
LayerNorm without bias, one fused q/k/v projection, causal scaled_dot_product_attention
(PyTorch picks its kernel), tied embeddings, vocabulary 50304, no dropout. The MLP's GELU
is the tanh form, as in Whetstone's config (nanoGPT uses the exact one). The step: bf16
autocast over float32 parameters, `torch.compile` of the model, fused AdamW (lr 6e-4,
betas 0.9/0.95, weight decay 0.1 on matrices), gradient clipping at 1.0, --accum
micro-batches per optimizer step. Timing follows train_step.py: a warm-up
(the compile is its first step), then windows of --window steps with one synchronisation
each, median window / window size; MFU with the same 6N + 12 L D T FLOPs per token against
a bf16 8192^3 matmul peak measured here.
"""

import argparse
import json
import math
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench import table  # noqa: E402


class Block(nn.Module):
  """dropout > 0 (bench/torch_char.py): on the attention probabilities and both residual
  branches while training; gelu: "tanh" or "none" (exact, nanoGPT's)."""

  def __init__(self, d, heads, dropout=0.0, gelu="tanh"):
    super().__init__()
    self.heads, self.dropout, self.gelu = heads, dropout, gelu
    self.drop = nn.Dropout(dropout) if dropout else nn.Identity()
    self.ln1 = nn.LayerNorm(d, bias=False)
    self.qkv = nn.Linear(d, 3 * d, bias=False)
    self.proj = nn.Linear(d, d, bias=False)
    self.ln2 = nn.LayerNorm(d, bias=False)
    self.up = nn.Linear(d, 4 * d, bias=False)
    self.down = nn.Linear(4 * d, d, bias=False)

  def forward(self, x):
    B, T, D = x.shape
    q, k, v = self.qkv(self.ln1(x)).split(D, dim=2)
    q, k, v = (t.view(B, T, self.heads, D // self.heads).transpose(1, 2) for t in (q, k, v))
    y = F.scaled_dot_product_attention(q, k, v, is_causal=True,
                                       dropout_p=self.dropout if self.training else 0.0)
    x = x + self.drop(self.proj(y.transpose(1, 2).reshape(B, T, D)))
    return x + self.drop(self.down(F.gelu(self.up(self.ln2(x)), approximate=self.gelu)))


class GPT(nn.Module):

  def __init__(self, vocab=50304, layers=12, heads=12, d=768, max_len=1024, dropout=0.0,
               gelu="tanh"):
    super().__init__()
    self.tok = nn.Embedding(vocab, d)
    self.pos = nn.Embedding(max_len, d)
    self.drop = nn.Dropout(dropout) if dropout else nn.Identity()
    self.blocks = nn.ModuleList(Block(d, heads, dropout, gelu) for _ in range(layers))
    self.ln_f = nn.LayerNorm(d, bias=False)
    self.head = nn.Linear(d, vocab, bias=False)
    self.head.weight = self.tok.weight                       # tied
    for name, p in self.named_parameters():
      if p.dim() == 2:
        std = 0.02 / math.sqrt(2 * layers) if name.endswith(("proj.weight", "down.weight")) \
            else 0.02
        nn.init.normal_(p, 0.0, std)

  def forward(self, idx, targets, reduction="mean"):
    x = self.drop(self.tok(idx) + self.pos(torch.arange(idx.shape[1], device=idx.device)))
    for block in self.blocks:
      x = block(x)
    logits = self.head(self.ln_f(x))
    return F.cross_entropy(logits.view(-1, logits.shape[-1]).float(), targets.reshape(-1),
                           reduction=reduction)


def matmul_peak_tflops(n=8192, reps=20):
  a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
  b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
  a @ b
  best = 0.0
  for _ in range(3):
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(reps):
      a @ b
    torch.cuda.synchronize()
    best = max(best, 2 * n**3 * reps / (time.perf_counter() - t) / 1e12)
  return best


def bench(micro_batch, accum, seq_len, steps, warmup, window, compile_model):
  torch.manual_seed(0)
  model = GPT(max_len=seq_len).cuda()
  n_params = sum(p.numel() for p in model.parameters())
  decay = [p for p in model.parameters() if p.dim() >= 2]
  no_decay = [p for p in model.parameters() if p.dim() < 2]
  opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1},
                           {"params": no_decay, "weight_decay": 0.0}],
                          lr=6e-4, betas=(0.9, 0.95), fused=True)
  fwd = torch.compile(model) if compile_model else model
  x = torch.randint(0, 50304, (accum, micro_batch, seq_len), device="cuda")
  y = torch.randint(0, 50304, (accum, micro_batch, seq_len), device="cuda")

  def train_step():
    for i in range(accum):
      with torch.autocast("cuda", dtype=torch.bfloat16):
        loss = fwd(x[i], y[i]) / accum
      loss.backward()
      total = loss.detach() if i == 0 else total + loss.detach()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)
    return total                                             # mean over the micro-batches

  t = time.perf_counter()
  train_step()
  torch.cuda.synchronize()
  first_s = time.perf_counter() - t
  for _ in range(warmup):
    train_step()
  torch.cuda.synchronize()
  windows = []
  for _ in range(max(steps // window, 1)):
    t = time.perf_counter()
    for _ in range(window):
      loss = train_step()
    torch.cuda.synchronize()
    windows.append((time.perf_counter() - t) / window)
  step_s = statistics.median(windows)
  layers, d = len(model.blocks), model.tok.weight.shape[1]
  flops = 6 * (n_params - model.pos.weight.numel()) + 12 * layers * d * seq_len
  return {"step_ms": step_s * 1e3, "tokens_per_sec": micro_batch * accum * seq_len / step_s,
          "flops_per_token": flops, "first_step_s": first_s, "loss": float(loss),
          "memory_gb": torch.cuda.max_memory_allocated() / 2**30, "params": n_params}


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--micro_batch", default="64")
  parser.add_argument("--accum", default="1")
  parser.add_argument("--seq_len", type=int, default=1024)
  parser.add_argument("--steps", type=int, default=30)
  parser.add_argument("--warmup", type=int, default=5)
  parser.add_argument("--window", type=int, default=5)
  parser.add_argument("--no_compile", action="store_true")
  parser.add_argument("--json", default="")
  args = parser.parse_args()
  if not torch.cuda.is_available():
    raise SystemExit("bench/torch_gpt2.py needs a CUDA GPU and PyTorch built with CUDA")
  torch.backends.cuda.matmul.allow_tf32 = True
  peak = matmul_peak_tflops()
  rows = []
  for mb in map(int, args.micro_batch.split(",")):
    for accum in map(int, args.accum.split(",")):
      try:
        r = bench(mb, accum, args.seq_len, args.steps, args.warmup, args.window,
                  not args.no_compile)
        r["mfu"] = r["tokens_per_sec"] * r["flops_per_token"] / (peak * 1e12)
      except Exception as e:  # e.g. out of memory: report and go on
        r = {"error": table.error(e)}
      torch.cuda.empty_cache()
      torch.cuda.reset_peak_memory_stats()
      r.update(micro_batch=mb, accum=accum)
      rows.append(r)
      print(json.dumps(r), flush=True)
  name = torch.cuda.get_device_name()
  print(f"\nPyTorch {torch.__version__} GPT-2 124M (compile={not args.no_compile}) on {name}; "
        f"bf16 matmul peak measured {peak:.0f} TFLOP/s")
  table.print_table([
      ("mb", 4, lambda r: r["micro_batch"]), ("accum", 6, lambda r: r["accum"]),
      ("step ms", 9, lambda r: f"{r['step_ms']:.1f}"),
      ("tokens/s", 11, lambda r: f"{r['tokens_per_sec']:,.0f}"),
      ("MFU", 7, lambda r: f"{r['mfu']:.1%}"),
      ("1st step s", 11, lambda r: f"{r['first_step_s']:.1f}"),
      ("mem GB", 8, table.memory_gb)], rows, 2)
  table.write_json(args.json, peak, name, rows, torch=torch.__version__)


if __name__ == "__main__":
  main()

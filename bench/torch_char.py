"""Character-LM peer: nanoGPT's `train_shakespeare_char` recipe in PyTorch against
configs/shakespeare_char.py, on the same bytes, the same GPU, in the same call.

    python bench/torch_char.py --seeds=0,1 --json=/tmp/char.json   # one GPU, ~8 minutes
    python bench/torch_char.py --seeds=0 --steps=200 --skip_whetstone   # the peer alone

Needs PyTorch with CUDA (not in requirements.txt: only the bench scripts use it). The data is
Whetstone's: the embedded Shakespeare corpus as bytes (vocabulary 256) with Whetstone's own
train / validation split (input_pipeline/text.py), so both models see the same held-out text.

The peer is nanoGPT's recipe unchanged: bench/torch_gpt2.py's GPT (nanoGPT's model.py) with
config/train_shakespeare_char.py's settings: 6 layers, 6 heads, width 384, context 256, batch 64,
dropout 0.2 (embeddings, attention probabilities, both residual branches), no biases, tied
embeddings, exact GELU, N(0, 0.02) init with the residual projections at 0.02 / sqrt(2L);
AdamW (lr 1e-3, betas 0.9 / 0.99, weight decay 0.1 on matrices, fused), 100 linear warmup
steps then cosine to 1e-4 at 5,000 steps, clipping at 1.0, bf16 autocast, torch.compile;
random training windows; every 250 steps nanoGPT's estimate_loss (200 batches of each split).
Its checkpoint writes (only when the validation loss improves) are left out.

Both are scored the same way after the last step, outside the timed part: the held-out
loss (nats per byte) over every held-out byte once, in consecutive windows of 256 (what
Whetstone's eval reports). Whetstone runs as `main.py --config=configs/shakespeare_char.py
--config.seed=S` with its own evals (every 250 steps, the whole split) and checkpoints
(every 1,000 steps). Wall time: for the peer from the model's construction to the last
step; for Whetstone the process's whole life (imports, data, compile, evals, checkpoints).
"""

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench.torch_gpt2 import GPT  # noqa: E402


def nanogpt_char():
  """nanoGPT's train_shakespeare_char model on bytes: bench/torch_gpt2.py's GPT at 6 x 384,
  context 256, dropout 0.2, exact GELU."""
  return GPT(vocab=256, layers=6, heads=6, d=384, max_len=256, dropout=0.2, gelu="none")


def splits():
  """Whetstone's train and validation bytes of the embedded corpus."""
  import jax
  jax.config.update("jax_platforms", "cpu")   # the data code imports jax: keep it off the GPU
  from configs import shakespeare_char
  from input_pipeline import text
  return text.load_corpus(shakespeare_char.get_config().data)


def held_out_loss(model, tokens, T=256, batch=64):
  """Mean loss over every held-out byte after the first, in consecutive windows of T:
  what Whetstone's eval reports (input_pipeline/text.py, eval_batch)."""
  model.eval()
  n, total, count = len(tokens), 0.0, 0
  starts = np.arange(0, n - 1, T)
  with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
    for i in range(0, len(starts), batch):
      s = starts[i:i + batch]
      idx = s[:, None] + np.arange(T + 1)
      valid = idx < n
      win = torch.from_numpy(np.where(valid, tokens[np.minimum(idx, n - 1)], 0).astype(np.int64))
      mask = torch.from_numpy(valid[:, 1:].astype(np.float32)).cuda()
      win = win.cuda()
      loss = model(win[:, :-1], win[:, 1:], reduction="none").view(mask.shape)
      total += float((loss * mask).sum())
      count += int(mask.sum())
  model.train()
  return total / count


def peer(seed, steps, train, val, eval_every=250, eval_iters=200):
  torch.manual_seed(seed)
  T, B = 256, 64
  train_t = torch.from_numpy(train.astype(np.int64))
  val_t = torch.from_numpy(val.astype(np.int64))

  def get_batch(data):
    ix = torch.randint(len(data) - T, (B,))
    x = torch.stack([data[i:i + T] for i in ix])
    y = torch.stack([data[i + 1:i + 1 + T] for i in ix])
    return x.pin_memory().cuda(non_blocking=True), y.pin_memory().cuda(non_blocking=True)

  start = time.perf_counter()
  model = nanogpt_char().cuda()
  decay = [p for p in model.parameters() if p.dim() >= 2]
  no_decay = [p for p in model.parameters() if p.dim() < 2]
  opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1},
                           {"params": no_decay, "weight_decay": 0.0}],
                          lr=1e-3, betas=(0.9, 0.99), fused=True)
  fwd = torch.compile(model)

  def lr_at(it, lr=1e-3, min_lr=1e-4, warmup=100, decay_iters=5000):
    if it < warmup:
      return lr * (it + 1) / (warmup + 1)
    if it > decay_iters:
      return min_lr
    ratio = (it - warmup) / (decay_iters - warmup)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (lr - min_lr)

  def estimate():   # nanoGPT's estimate_loss: eval_iters random batches of each split
    model.eval()
    out = {}
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
      for name, data in (("train", train_t), ("val", val_t)):
        out[name] = float(torch.stack([fwd(*get_batch(data))
                                       for _ in range(eval_iters)]).mean())
    model.train()
    return out

  curve = []
  x, y = get_batch(train_t)
  for it in range(steps + 1):
    for group in opt.param_groups:
      group["lr"] = lr_at(it)
    if eval_every and it % eval_every == 0:
      curve.append({"step": it, **estimate()})
    if it == steps:
      break
    with torch.autocast("cuda", dtype=torch.bfloat16):
      loss = fwd(x, y)
    x, y = get_batch(train_t)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)
  torch.cuda.synchronize()
  wall = time.perf_counter() - start
  row = {"system": "nanoGPT recipe (PyTorch)", "seed": seed, "steps": steps,
         "held_out_loss": held_out_loss(model, val), "wall_s": wall, "curve": curve}
  del model, fwd, opt
  torch.cuda.empty_cache()   # the next Whetstone process preallocates most of the GPU
  return row


def whetstone(seed, steps, workdir):
  start = time.perf_counter()
  out = subprocess.run(
      [sys.executable, os.path.join(ROOT, "main.py"), "--config=configs/shakespeare_char.py",
       f"--workdir={workdir}", f"--config.seed={seed}", f"--config.train.num_steps={steps}"],
      cwd=ROOT, capture_output=True, text=True)
  wall = time.perf_counter() - start
  if out.returncode:
    raise SystemExit(f"main.py exited {out.returncode}: {out.stderr[-2000:]}")
  result = json.loads(out.stdout.strip().splitlines()[-1])
  return {"system": "Whetstone", "seed": seed, "steps": steps,
          "held_out_loss": result["loss"], "wall_s": wall,
          "bits_per_byte": result.get("bits_per_byte")}


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--seeds", default="0,1")
  parser.add_argument("--steps", type=int, default=5000)
  parser.add_argument("--skip_whetstone", action="store_true")
  parser.add_argument("--json", default="")
  args = parser.parse_args()
  if not torch.cuda.is_available():
    raise SystemExit("bench/torch_char.py needs a CUDA GPU and PyTorch built with CUDA")
  torch.backends.cuda.matmul.allow_tf32 = True
  torch.backends.cudnn.allow_tf32 = True
  train, val = splits()
  from train_lib import writers
  name, rows = torch.cuda.get_device_name(), []

  def keep(row):   # the JSON after every row: a run cut short keeps what it measured
    rows.append(row)
    print(json.dumps({k: v for k, v in row.items() if k != "curve"}), flush=True)
    if args.json:
      writers.write_json(args.json, {"device": name, "torch": torch.__version__,
                                     "steps": args.steps, "rows": rows}, indent=1)

  with tempfile.TemporaryDirectory() as tmp:
    for seed in map(int, args.seeds.split(",")):
      if not args.skip_whetstone:
        keep(whetstone(seed, args.steps, os.path.join(tmp, f"w{seed}")))
      keep(peer(seed, args.steps, train, val))
  print(f"\n{args.steps} steps, {name}, PyTorch {torch.__version__}; held-out loss in nats "
        f"per byte over all {len(val):,} held-out bytes")
  table, means = [], {}
  for r in rows:
    table.append([r["system"], r["seed"], f"{r['held_out_loss']:.4f}",
                  f"{r['held_out_loss'] / math.log(2):.4f}", f"{r['wall_s']:.0f}"])
    means.setdefault(r["system"], []).append(r)
  for system, rs in means.items():
    table.append([f"{system}, mean", "", f"{np.mean([r['held_out_loss'] for r in rs]):.4f}",
                  f"{np.mean([r['held_out_loss'] for r in rs]) / math.log(2):.4f}",
                  f"{np.mean([r['wall_s'] for r in rs]):.0f}"])
  print(writers.table(["system", "seed", "held-out loss", "bits/byte", "wall s"], table,
                      markdown=True))
  if len(means) == 2:
    w, p = means["Whetstone"], means["nanoGPT recipe (PyTorch)"]
    dl = np.mean([r["held_out_loss"] for r in w]) - np.mean([r["held_out_loss"] for r in p])
    ratio = np.mean([r["wall_s"] for r in w]) / np.mean([r["wall_s"] for r in p])
    print(f"\nWhetstone - peer: {dl:+.4f} nats per byte; wall time ratio {ratio:.2f}x "
          "(goal: <= 0 and <= 0.6x)")


if __name__ == "__main__":
  main()

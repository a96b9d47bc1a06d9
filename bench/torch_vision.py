"""Vision peer: Whetstone's train step against torchvision / timm with torch.compile, the
same models at 224x224, the same batch and optimizer, on the same GPU in the same call.

    python bench/torch_vision.py --models=resnet18,resnet50,vit_b16 --batch=256 --json=/tmp/v.json

Needs PyTorch with CUDA, torchvision and timm (not in requirements.txt: only bench scripts
use them). Each model is timed as bench/train_step.py times Whetstone: one device-resident
batch of random 224x224x3 images and 1,000 classes, a warm-up (the compile), then windows
of --window steps with one synchronisation each; images/s = batch / (median window / window).
- Whetstone: configs/fashion_mnist_resnet.py:depth=18|50 with torchvision's 7x7 stem, and
  configs/fashion_mnist_vit.py at ViT-B/16's shape (patch 16, width 768, depth 12, 12 heads,
  MLP 3072), bf16, in a child process (its GPU memory is freed before PyTorch runs).
- PyTorch: torchvision.models.resnet18 / resnet50 and timm's vit_base_patch16_224,
  channels_last, bf16 autocast, torch.compile; ResNets: SGD with Nesterov momentum 0.9 and
  weight decay 5e-4, label smoothing 0.1 (the Whetstone config's); ViT: fused AdamW, weight
  decay 0.05, clipping at 1.0.
Goals (issue 19): ResNets at least 1.1x the peer's images/s, ViT-B/16 at least 1.0x.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench import table  # noqa: E402

GOALS = {"resnet18": 1.1, "resnet50": 1.1, "vit_b16": 1.0}


def whetstone_config(name: str, batch: int):
  import importlib
  if name.startswith("resnet"):
    config = importlib.import_module("configs.fashion_mnist_resnet").get_config(
        f"depth={name[len('resnet'):]}")
    config.model.stem = "imagenet"
  elif name == "vit_b16":
    config = importlib.import_module("configs.fashion_mnist_vit").get_config()
    config.model.update(patch=16, width=768, depth=12, num_heads=12, mlp_dim=3072)
  else:
    raise SystemExit(f"unknown model {name!r}; use {sorted(GOALS)}")
  config.data.update(name="synthetic", synthetic_shape=(224, 224, 3), synthetic_classes=1000,
                     batch_size=batch, cache_mb=0)
  config.dtype = "bfloat16"
  return config


def whetstone_child(name, batch, steps, warmup, window, out):
  """In a child process: bench/train_step.py's measurement of one model."""
  from bench import train_step
  r = train_step.bench_one(whetstone_config(name, batch), steps, warmup, window=window)
  with open(out, "w") as f:
    json.dump({"images_per_sec": r["tokens_per_sec"], "step_ms": r["step_ms"],
               "compile_s": r["compile_s"], "params": r["params"], "loss": r["loss"]}, f)


def whetstone(name, args):
  with tempfile.NamedTemporaryFile(suffix=".json") as out:
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), f"--child={name}",
                           f"--batch={args.batch}", f"--steps={args.steps}",
                           f"--warmup={args.warmup}", f"--window={args.window}",
                           f"--child_out={out.name}"], cwd=ROOT, capture_output=True, text=True)
    if proc.returncode:
      sys.stderr.write(proc.stderr[-4000:])   # the traceback, for the log
      return {"error": table.child_error(proc.stderr)}
    return json.load(open(out.name))


def peer(name, args):
  import torch
  import torch.nn.functional as F
  torch.manual_seed(0)
  if name.startswith("resnet"):
    import torchvision
    model = getattr(torchvision.models, name)(num_classes=1000)
  else:
    import timm
    model = timm.create_model("vit_base_patch16_224", num_classes=1000)
  model = model.cuda().to(memory_format=torch.channels_last)
  decay = [p for p in model.parameters() if p.dim() >= 2]
  rest = [p for p in model.parameters() if p.dim() < 2]
  if name.startswith("resnet"):
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True,
                          weight_decay=5e-4)
    smoothing, clip = 0.1, None
  else:
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.05},
                             {"params": rest, "weight_decay": 0.0}], lr=1e-3, fused=True)
    smoothing, clip = 0.0, 1.0
  fwd = torch.compile(model)
  x = torch.randn(args.batch, 3, 224, 224, device="cuda").to(memory_format=torch.channels_last)
  y = torch.randint(0, 1000, (args.batch,), device="cuda")

  def step():
    with torch.autocast("cuda", dtype=torch.bfloat16):
      loss = F.cross_entropy(fwd(x), y, label_smoothing=smoothing)
    loss.backward()
    if clip:
      torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
    opt.step()
    opt.zero_grad(set_to_none=True)
    return loss

  t = time.perf_counter()
  for _ in range(args.warmup):
    loss = step()
  torch.cuda.synchronize()
  compile_s = time.perf_counter() - t
  windows = []
  for _ in range(max(args.steps // args.window, 1)):
    t = time.perf_counter()
    for _ in range(args.window):
      loss = step()
    torch.cuda.synchronize()
    windows.append((time.perf_counter() - t) / args.window)
  step_s = statistics.median(windows)
  row = {"images_per_sec": args.batch / step_s, "step_ms": step_s * 1e3,
         "compile_s": compile_s, "params": sum(p.numel() for p in model.parameters()),
         "loss": float(loss)}
  del model, fwd, opt
  torch.cuda.empty_cache()
  return row


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--models", default="resnet18,resnet50,vit_b16")
  parser.add_argument("--batch", type=int, default=256)
  parser.add_argument("--steps", type=int, default=30)
  parser.add_argument("--warmup", type=int, default=5)
  parser.add_argument("--window", type=int, default=5)
  parser.add_argument("--json", default="")
  parser.add_argument("--child", default="", help=argparse.SUPPRESS)
  parser.add_argument("--child_out", default="", help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.child:
    return whetstone_child(args.child, args.batch, args.steps, args.warmup, args.window,
                           args.child_out)
  import torch
  if not torch.cuda.is_available():
    raise SystemExit("bench/torch_vision.py needs a CUDA GPU and PyTorch built with CUDA")
  torch.backends.cudnn.benchmark = True
  from train_lib import writers
  device, rows = torch.cuda.get_device_name(), []
  for name in args.models.split(","):
    if name not in GOALS:
      raise SystemExit(f"unknown model {name!r}; use {sorted(GOALS)}")
    row = {"model": name, "batch": args.batch, "whetstone": whetstone(name, args)}
    try:
      row["peer"] = peer(name, args)
    except Exception as e:   # e.g. out of memory: report and go on
      row["peer"] = {"error": f"{type(e).__name__}: {str(e)[:300]}"}
    rows.append(row)
    print(json.dumps(row), flush=True)
    if args.json:   # after every row: a call cut short keeps what it measured
      writers.write_json(args.json, {"device": device, "torch": torch.__version__,
                                     "rows": rows}, indent=1)
  fmt = lambda r: f"{r['images_per_sec']:,.0f}" if "images_per_sec" in r else r["error"]
  cells = []
  for r in rows:
    w, p = r["whetstone"], r["peer"]
    ratio = (w["images_per_sec"] / p["images_per_sec"]
             if "images_per_sec" in w and "images_per_sec" in p else None)
    cells.append([r["model"], r["batch"], fmt(w), fmt(p),
                  f"{ratio:.2f}x" if ratio else "-", f">= {GOALS[r['model']]:.1f}x",
                  "yes" if ratio and ratio >= GOALS[r["model"]] else "no"])
  print(f"\n{device}, PyTorch {torch.__version__}; images/s at 224x224, bf16, one step per "
        "batch (median of windows)")
  print(writers.table(["model", "batch", "Whetstone images/s", "PyTorch images/s", "ratio",
                       "goal", "met"], cells, markdown=True))


if __name__ == "__main__":
  main()

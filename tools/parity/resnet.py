"""ResNet parity fixtures: torchvision's resnet50 and resnet18 (10 classes, eval mode) on
weights drawn from a seed with numpy alone, so no 100 MB state_dict is stored.

    python tools/make_fixtures.py resnet     # -> tests/fixtures/resnet/
    from tools.parity import resnet          # in a test, without torch:
    tensors = resnet.state_dict("resnet50", num_classes=10, seed=0)   # name -> array

build() loads state_dict(...) into torchvision (strict: the names and shapes are
torchvision's) and writes per model NAME.npz: the seed, torchvision's names and shapes,
images_BxHxWxC (the inputs as our model takes them) and logits_BxC. The test draws the
same weights again. Only build() needs torch, so it imports it there.
`width` other than 64 (narrower tensors) and `stage_sizes` (fewer blocks) give toys with
torchvision's names for fast tests, e.g. a file for :depth=50,runlocal's shrunk model;
torchvision itself has no such model.
"""

import os

import numpy as np

ARCHS = {  # name -> (block, stage sizes), as torchvision.models.resnet
    "resnet18": ("basic", (2, 2, 2, 2)),
    "resnet34": ("basic", (3, 4, 6, 3)),
    "resnet50": ("bottleneck", (3, 4, 6, 3)),
    "resnet101": ("bottleneck", (3, 4, 23, 3)),
    "resnet152": ("bottleneck", (3, 8, 36, 3)),
}


def shapes(arch: str, num_classes: int, width: int = 64, stage_sizes=None) -> dict:
  """name -> shape of torchvision's state_dict, in its order."""
  block, default_sizes = ARCHS[arch]
  stage_sizes = stage_sizes or default_sizes
  expansion, convs = (1, (3, 3)) if block == "basic" else (4, (1, 3, 1))
  out = {}

  def bn(prefix, c):
    out.update({f"{prefix}.weight": (c,), f"{prefix}.bias": (c,),
                f"{prefix}.running_mean": (c,), f"{prefix}.running_var": (c,),
                f"{prefix}.num_batches_tracked": ()})

  out["conv1.weight"] = (width, 3, 7, 7)
  bn("bn1", width)
  c_in = width
  for i, num_blocks in enumerate(stage_sizes):
    planes = width * 2**i
    for j in range(num_blocks):
      prefix = f"layer{i + 1}.{j}"
      c = c_in
      for k, size in enumerate(convs):
        c_out = planes * expansion if k == len(convs) - 1 else planes
        out[f"{prefix}.conv{k + 1}.weight"] = (c_out, c, size, size)
        bn(f"{prefix}.bn{k + 1}", c_out)
        c = c_out
      if j == 0 and (i > 0 or c_in != planes * expansion):
        out[f"{prefix}.downsample.0.weight"] = (planes * expansion, c_in, 1, 1)
        bn(f"{prefix}.downsample.1", planes * expansion)
      c_in = planes * expansion
  out["fc.weight"] = (num_classes, c_in)
  out["fc.bias"] = (num_classes,)
  return out


def state_dict(arch: str, num_classes: int, seed: int, width: int = 64,
               stage_sizes=None) -> dict:
  """Seeded values for every tensor of shapes(...): He-normal convs, BN with running
  statistics that differ from (0, 1), and a small last-BN scale in each block, so that
  eval-mode activations stay O(1) through 50 layers (std ~2.5; ~8 at 152)."""
  rng = np.random.default_rng(seed)
  last_bn = ("bn2" if ARCHS[arch][0] == "basic" else "bn3")
  out = {}
  for name, shape in shapes(arch, num_classes, width, stage_sizes).items():
    layer, kind = name.rsplit(".", 1)
    if kind == "num_batches_tracked":
      value = np.array(rng.integers(0, 10_000), np.int64)
    elif layer == "fc":
      value = rng.normal(0, 1 / np.sqrt(shape[-1]), shape) if kind == "weight" else \
          rng.normal(0, 0.1, shape)
    elif len(shape) == 4:   # a conv: He-normal over fan-in
      value = rng.normal(0, np.sqrt(2 / np.prod(shape[1:])), shape)
    elif kind == "weight":  # BN scale; the residual branch's last one small
      value = rng.uniform(0.1, 0.3, shape) if layer.endswith(last_bn) else \
          rng.uniform(0.5, 1.5, shape)
    elif kind == "bias":
      value = rng.normal(0, 0.1, shape)
    elif kind == "running_mean":
      value = rng.normal(0, 0.2, shape)
    else:                   # running_var: positive, not 1
      value = rng.uniform(0.5, 2.0, shape)
    out[name] = value if kind == "num_batches_tracked" else value.astype(np.float32)
  return out


SEED, IMAGE, BATCH, CLASSES = 0, 64, 3, 10


def build(out_dir: str):
  import torch
  import torchvision

  images_BxHxWxC = np.random.default_rng(SEED).normal(size=(BATCH, IMAGE, IMAGE, 3))
  images_BxHxWxC = images_BxHxWxC.astype(np.float32)
  for arch in ("resnet50", "resnet18"):
    model = getattr(torchvision.models, arch)(num_classes=CLASSES).eval()
    tensors = state_dict(arch, CLASSES, SEED)
    model.load_state_dict({k: torch.from_numpy(v) for k, v in tensors.items()}, strict=True)
    with torch.no_grad():
      logits_BxC = model(torch.from_numpy(images_BxHxWxC).permute(0, 3, 1, 2)).numpy()
    names = list(model.state_dict())
    shapes_Nx4 = np.full((len(names), 4), -1, np.int64)   # -1 pads each shape to rank 4
    for i, name in enumerate(names):
      shape = tuple(model.state_dict()[name].shape)
      shapes_Nx4[i, :len(shape)] = shape
    num_params_1000 = sum(p.numel() for p in getattr(torchvision.models, arch)().parameters())
    np.savez(os.path.join(out_dir, f"{arch}.npz"), seed=SEED, names=np.array(names),
             shapes_Nx4=shapes_Nx4, images_BxHxWxC=images_BxHxWxC,
             logits_BxC=logits_BxC.astype(np.float32), num_params_1000=num_params_1000)

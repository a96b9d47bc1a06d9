"""ViT parity fixtures: tiny timm VisionTransformers (class token and mean pooling) and a
Hugging Face ViTForImageClassification, randomly initialised, eval mode.

    python tools/make_fixtures.py vit     # -> tests/fixtures/vit/

Every parameter is redrawn from a fixed seed (biases, norm scales and the class token
too, which the libraries start at 0, 1 or ~0), so a wrong layout of any of them changes
the logits. Writes per model NAME: NAME.safetensors (the state_dict; for Hugging Face the file
save_pretrained writes, with the hub's names), NAME.npz (images_BxHxWxC, the inputs as our
model takes them, and logits_BxC) and NAME.json (how the library builds the model: timm's
VisionTransformer keyword arguments, Hugging Face's config.json), which the exporters'
timm_kwargs and hf_config must reproduce.
"""

import json
import os
import shutil
import tempfile

import numpy as np
import torch

IMAGE, CHANNELS, PATCH, WIDTH, DEPTH, HEADS, CLASSES = 28, 1, 4, 48, 2, 3, 10


def _redraw(model, generator):
  with torch.no_grad():
    for name, p in model.named_parameters():
      noise = torch.randn(p.shape, generator=generator)
      if "norm" in name and name.endswith("weight"):
        p.copy_(1 + 0.2 * noise)
      elif p.ndim >= 2 and "pos" not in name and "cls" not in name:
        p.copy_(noise / np.sqrt(p[0].numel()))          # ~unit-variance activations
      else:                                              # biases, positions, class token
        p.copy_(0.2 * noise if p.ndim == 1 else 0.5 * noise)
  return model.eval()


def _write(out_dir, name, model, images_BxHxWxC, forward, kwargs=None):
  from safetensors.torch import save_file
  with torch.no_grad():
    logits = forward(model, torch.from_numpy(images_BxHxWxC).permute(0, 3, 1, 2))
  path = os.path.join(out_dir, f"{name}.safetensors")
  if hasattr(model, "save_pretrained"):   # the hub's names, which transformers 5 renames
    with tempfile.TemporaryDirectory() as tmp:
      model.save_pretrained(tmp)
      shutil.copy(os.path.join(tmp, "model.safetensors"), path)
      shutil.copy(os.path.join(tmp, "config.json"), os.path.join(out_dir, f"{name}.json"))
  else:
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, path)
    with open(os.path.join(out_dir, f"{name}.json"), "w") as f:
      json.dump(kwargs, f, indent=1, sort_keys=True)
  np.savez(os.path.join(out_dir, f"{name}.npz"), images_BxHxWxC=images_BxHxWxC,
           logits_BxC=logits.numpy().astype(np.float32))


def build(out_dir: str):
  import timm.models.vision_transformer as timm_vit
  import transformers

  generator = torch.Generator().manual_seed(0)
  images = torch.randn((4, IMAGE, IMAGE, CHANNELS), generator=generator).numpy()
  tiny = dict(img_size=IMAGE, patch_size=PATCH, in_chans=CHANNELS, num_classes=CLASSES,
              embed_dim=WIDTH, depth=DEPTH, num_heads=HEADS, mlp_ratio=4.0)
  torch.manual_seed(0)
  for name, pool in (("timm_token", dict(global_pool="token", class_token=True)),  # default
                     ("timm_avg", dict(global_pool="avg", class_token=False))):
    kwargs = {**tiny, **pool}
    model = _redraw(timm_vit.VisionTransformer(**kwargs), generator)
    _write(out_dir, name, model, images, lambda m, x: m(x), kwargs)

  config = transformers.ViTConfig(
      image_size=IMAGE, patch_size=PATCH, num_channels=CHANNELS, hidden_size=WIDTH,
      num_hidden_layers=DEPTH, num_attention_heads=HEADS, intermediate_size=4 * WIDTH,
      num_labels=CLASSES, hidden_act="gelu", qkv_bias=True)     # layer_norm_eps 1e-12
  model = _redraw(transformers.ViTForImageClassification(config), generator)
  _write(out_dir, "hf", model, images, lambda m, x: m(pixel_values=x).logits)

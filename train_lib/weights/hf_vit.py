"""Hugging Face ViTForImageClassification (the hub's model.safetensors) <-> models/vit.py.

    --config.model.name=vit --config.model.norm_epsilon=1e-12 \
        --config.init_from=hf_vit:vit-base-patch16-224/model.safetensors
    python tools/export.py --workdir=runs/vit --format=hf_vit --out=out/model.safetensors
    # writes out/config.json beside it too (hf_config, the format's `config_file`)

The names are the hub's (vit.encoder.layer.N.attention.attention.query, ...), which
save_pretrained writes and every transformers version loads. Hugging Face's ViT has a
class token (pool="token") and LayerNorm eps 1e-12 (set model.norm_epsilon to match: the
file does not carry it; hf_config writes the model's own eps, so an export reproduces
it); its GELU is the exact one. from_pretrained needs config.json beside the tensors:
hf_config gives it. Position embeddings are not interpolated (timm_vit.py says why and
what to do): a file for another image size is an error naming
vit.embeddings.position_embeddings.
"""

from models.vit import ViT
from train_lib.errors import UserError
from train_lib.weights import Rule, register
from train_lib.weights.timm_vit import (dense_rules, embedding_rules, merge_heads, norm_rules,
                                        num_heads_of, num_layers, out_rules, sizes,
                                        split_heads)


def check_pool(params) -> None:
  if "cls_token" not in params:
    raise UserError("hf_vit: Hugging Face's ViT classifies a class token; set "
                    "model.pool='token'")


@register("hf_vit")
def rules(model_config, variables) -> list:
  params = variables["params"]
  check_pool(params)
  out = embedding_rules(params, {"patch_embed": "vit.embeddings.patch_embeddings.projection",
                                 "pos_embed": "vit.embeddings.position_embeddings",
                                 "cls_token": "vit.embeddings.cls_token"})
  for i in range(num_layers(params)):
    t, o = f"vit.encoder.layer.{i}", (f"layer_{i}",)
    num_heads = num_heads_of(params[f"layer_{i}"]["attn"])
    out += norm_rules(f"{t}.layernorm_before", (*o, "attn_norm"))
    for part in ("query", "key", "value"):
      for suffix, leaf in (("weight", "kernel"), ("bias", "bias")):
        out.append(Rule(f"{t}.attention.attention.{part}.{suffix}",
                        ("params", *o, "attn", part, leaf),
                        lambda w, n=num_heads: split_heads(w, n), merge_heads))
    out += out_rules(f"{t}.attention.output.dense", (*o, "attn", "out"), num_heads)
    out += norm_rules(f"{t}.layernorm_after", (*o, "mlp_norm"))
    out += dense_rules(f"{t}.intermediate.dense", (*o, "mlp", "wi"))
    out += dense_rules(f"{t}.output.dense", (*o, "mlp", "wo"))
  out += norm_rules("vit.layernorm", ("final_norm",))
  out += dense_rules("classifier", ("head",))
  return out


def hf_config(model_config, variables) -> dict:
  """ViTConfig's fields (config.json) for these variables, which from_pretrained needs to
  load an exported model.safetensors; the other fields keep transformers' defaults."""
  check_pool(variables["params"])
  s = sizes(variables["params"], "hf_vit")
  labels = [f"LABEL_{i}" for i in range(s["classes"])]
  return {"architectures": ["ViTForImageClassification"], "model_type": "vit",
          "image_size": s["image"], "patch_size": s["patch"], "num_channels": s["channels"],
          "hidden_size": s["width"], "num_hidden_layers": s["depth"],
          "num_attention_heads": s["heads"], "intermediate_size": s["mlp"],
          "hidden_act": "gelu", "qkv_bias": True,
          "layer_norm_eps": model_config.get("norm_epsilon", ViT.norm_epsilon),
          "id2label": {str(i): l for i, l in enumerate(labels)},
          "label2id": {l: i for i, l in enumerate(labels)}}


rules.config_file = ("config.json", hf_config)   # tools/export.py writes it beside

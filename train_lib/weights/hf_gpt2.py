"""Hugging Face GPT-2 (GPT2LMHeadModel's safetensors) <-> models/transformer.py.

    --config.init_from=hf_gpt2:gpt2/model.safetensors     # with the model shaped as GPT-2:
    --config.model.use_bias=True --config.model.position=learned --config.model.norm=layernorm
    python tools/export.py --workdir=runs/x --format=hf_gpt2 --out=model.safetensors

The model must be GPT-2's shape, checked before any tensor is read: learned positions,
pre-norm LayerNorm with biases (eps 1e-5 in both), causal multi-head attention, tied
embeddings and activation "gelu", which is GPT-2's "gelu_new" (the tanh approximation,
models/layers/mlp.py), not the exact erf form. Layers may be scanned (one variable per
kind, layers on a leading axis) or not (layer_N).

Names: transformer.wte, transformer.wpe, transformer.h.N.{ln_1, attn.c_attn, attn.c_proj,
ln_2, mlp.c_fc, mlp.c_proj}, transformer.ln_f, as save_pretrained writes them and as export
writes them. HF's Conv1D keeps weights as [in, out], our kernels' layout, so only attention
is reshaped: c_attn's [D, 3D] is q|k|v, each split into [D, heads, head_dim]; c_proj's rows
become [heads, head_dim]. The attention-mask buffers (attn.bias, attn.masked_bias) and a
tied lm_head.weight carry nothing and are ignored. Files written by GPT2Model (names
without "transformer.", like the hub's gpt2) need `rules.rename` applied by weights.load.

Vocabulary: a model whose vocab_size is the file's rounded up to a multiple of 64 (50304
for GPT-2's 50257) gets the extra rows on import as the mean of the file's rows: their
logits are each the mean logit, so they add at most log(1 + extra/vocab) nats to any loss
(9e-4 for GPT-2) and the file's own logits are unchanged. Export cuts a 50304-row
embedding back to GPT-2's 50257 (VOCAB); any other vocab_size is written whole.
"""

import flax
import numpy as np

from models.transformer import Transformer
from train_lib.errors import UserError
from train_lib.weights import Rule, register, same

VOCAB = 50257          # GPT-2's vocabulary: what export writes for a model padded from it
PAD = 64               # the multiple a model's vocabulary may be padded to
# What GPT-2 is, in models/transformer.py's switches (the tensor shapes check the sizes).
GPT2 = {"name": "transformer", "position": "learned", "norm": "layernorm", "pre_norm": True,
        "activation": "gelu", "use_bias": True, "tie_embeddings": True, "causal": True}


def padded(vocab: int) -> int:
  return -(-vocab // PAD) * PAD


def check_model(model_config) -> None:
  """One error naming every switch that is not GPT-2's."""
  get = lambda k: model_config.get(k, getattr(Transformer, k, None))
  wrong = [(k, get(k), want) for k, want in GPT2.items() if get(k) != want]
  if get("num_kv_heads") not in (0, get("num_heads")):
    wrong.append(("num_kv_heads", get("num_kv_heads"), 0))
  if wrong:
    raise UserError("hf_gpt2: the model is not GPT-2's shape; set " + " ".join(
        f"--config.model.{k}={want} (now {have!r})" for k, have, want in wrong))


def _pad_vocab(vocab: int):
  def to_ours(w_VxD):
    extra = vocab - w_VxD.shape[0]
    if extra <= 0 or vocab != padded(w_VxD.shape[0]):
      return w_VxD                       # same size, or a mis-shape for the check to name
    return np.concatenate([w_VxD, np.repeat(w_VxD.mean(0, keepdims=True), extra, 0)])
  return to_ours


def _cut_vocab(vocab: int):
  keep = VOCAB if vocab == padded(VOCAB) else vocab
  return lambda w_VxD: w_VxD[:keep]


QKV = ("query", "key", "value")


def _layer_rules(name: str, heads: int, c_attn):
  """(theirs, ours below the layer, to_ours, to_theirs) for one layer; c_attn(leaf) gives
  HF's fused q|k|v ("kernel" [D, 3D] or "bias" [3D]) from this layer's variables, for export."""
  plain = [("ln_1.weight", ("attn_norm", "scale")), ("ln_1.bias", ("attn_norm", "bias")),
           ("ln_2.weight", ("mlp_norm", "scale")), ("ln_2.bias", ("mlp_norm", "bias")),
           ("mlp.c_fc.weight", ("mlp", "wi", "kernel")), ("mlp.c_fc.bias", ("mlp", "wi", "bias")),
           ("mlp.c_proj.weight", ("mlp", "wo", "kernel")),
           ("mlp.c_proj.bias", ("mlp", "wo", "bias")),
           ("attn.c_proj.bias", ("attn", "out", "bias"))]
  out = [(f"{name}.{theirs}", ours, same, same) for theirs, ours in plain]
  out.append((f"{name}.attn.c_proj.weight", ("attn", "out", "kernel"),
              lambda w_DxD: w_DxD.reshape(heads, -1, w_DxD.shape[-1]),
              lambda k_NxHxD: k_NxHxD.reshape(-1, k_NxHxD.shape[-1])))
  for j, proj in enumerate(QKV):
    out.append((f"{name}.attn.c_attn.weight", ("attn", proj, "kernel"),
                lambda w_Dx3D, j=j: np.split(w_Dx3D, 3, -1)[j].reshape(len(w_Dx3D), heads, -1),
                lambda _: c_attn("kernel")))
    out.append((f"{name}.attn.c_attn.bias", ("attn", proj, "bias"),
                lambda b_3D, j=j: np.split(b_3D, 3, -1)[j].reshape(heads, -1),
                lambda _: c_attn("bias")))
  return out


def _stacked(buffer, i: int, to_ours, to_theirs):
  """Layer i of a scanned variable [layers, ...]. The contract fills one variable from one
  tensor, so every layer's rule writes its slice into the same array and returns it whole
  (complete once the last layer's rule has run); a mis-shaped tensor comes back with the
  layers' axis for the check to name."""
  def stack(t):
    x = np.asarray(to_ours(t))
    if x.shape != buffer.shape[1:]:
      return np.broadcast_to(x, buffer.shape[:1] + x.shape)
    buffer[i] = x
    return buffer
  return stack, lambda k_Lx_: to_theirs(k_Lx_[i])


@register("hf_gpt2")
def rules(model_config, variables) -> list:
  check_model(model_config)
  flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(variables))
  heads = model_config.get("num_heads", Transformer.num_heads)
  num_layers = model_config.get("num_layers", Transformer.num_layers)
  scanned = model_config.get("scan_layers", Transformer.scan_layers)
  embed = ("params", "embed", "embedding")
  vocab = np.shape(flat[embed])[0] if embed in flat else 0
  out = [Rule("transformer.wte.weight", embed, _pad_vocab(vocab), _cut_vocab(vocab)),
         Rule("transformer.wpe.weight", ("params", "pos_embed")),
         Rule("transformer.ln_f.weight", ("params", "final_norm", "scale")),
         Rule("transformer.ln_f.bias", ("params", "final_norm", "bias"))]
  buffers = {}   # scanned: path -> the array that every layer's rule fills
  for i in range(num_layers):
    prefix = ("params", "layers") if scanned else ("params", f"layer_{i}")

    def ours(below, i=i, prefix=prefix):   # our array of layer i
      x = np.asarray(flat[prefix + below])
      return x[i] if scanned else x

    def c_attn(leaf, ours=ours):
      parts = [ours(("attn", p, leaf)) for p in QKV]
      return np.concatenate([x.reshape(len(x), -1) if leaf == "kernel" else x.reshape(-1)
                             for x in parts], axis=-1)

    for theirs, below, to_ours, to_theirs in _layer_rules(f"transformer.h.{i}", heads, c_attn):
      path = prefix + below
      if scanned and path in flat:
        buffer = buffers.setdefault(path, np.array(flat[path]))
        to_ours, to_theirs = _stacked(buffer, i, to_ours, to_theirs)
      out.append(Rule(theirs, path, to_ours, to_theirs))
  return out


rules.ignore = r"(transformer\.)?h\.\d+\.attn\.(bias|masked_bias)|lm_head\.weight"
# For weights.load, applied to every foreign name before anything is matched: GPT2Model's
# names (no "transformer.") are GPT2LMHeadModel's.
rules.rename = lambda name: (name if name.startswith(("transformer.", "lm_head."))
                             else "transformer." + name)

"""--mode=sample: restore a model and sample from it: text from a language model
(a prompt, a KV cache), or images from a task that samples them (ddpm, gan).

    result = sample.generate_from_workdir(config, workdir)   # {"step", "samples": [...]}
    # images: workdir/samples.npz (uint8 pixels) and workdir/plots/samples.png

The prompt is prefilled into a KV cache in one call; then one jit-compiled loop
(lax.fori_loop) decodes a token per step with temperature and top-k.
"""

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np

from train_lib import checkpointing, setup, writers
from train_lib.errors import UserError
from train_lib.tasks.base import to_pixels
from train_lib.tools import plots


def sample_logits(logits_BxV, rng, temperature: float, top_k: int):
  if temperature <= 0:
    return logits_BxV.argmax(-1).astype(jnp.int32)
  logits_BxV = logits_BxV.astype(jnp.float32) / temperature
  if top_k and top_k < logits_BxV.shape[-1]:
    kth_B1 = jax.lax.top_k(logits_BxV, top_k)[0][:, -1:]
    logits_BxV = jnp.where(logits_BxV < kth_B1, -jnp.inf, logits_BxV)
  return jax.random.categorical(rng, logits_BxV).astype(jnp.int32)


@functools.partial(jax.jit, static_argnames=("model", "num_new", "temperature", "top_k"))
def generate(model, params, prompt_BxP, rng, *, num_new: int, temperature: float, top_k: int):
  """Prompt [B, P] -> [B, num_new] new tokens, decoding with the model's KV cache."""
  B, P = prompt_BxP.shape
  cache = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), prompt_BxP[:, :1],
                                            decode=True)["cache"])
  cache = jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), cache)
  logits, variables = model.apply({"params": params, "cache": cache}, prompt_BxP, decode=True,
                                  mutable=["cache"])
  first = sample_logits(logits[:, -1], jax.random.fold_in(rng, 0), temperature, top_k)
  out_BxN = jnp.zeros((B, num_new), jnp.int32).at[:, 0].set(first)

  def step(i, carry):
    out, cache = carry
    last_Bx1 = jax.lax.dynamic_slice_in_dim(out, i - 1, 1, axis=1)
    logits, variables = model.apply({"params": params, "cache": cache}, last_Bx1,
                                    decode=True, mutable=["cache"])
    token = sample_logits(logits[:, -1], jax.random.fold_in(rng, i), temperature, top_k)
    return out.at[:, i].set(token), variables["cache"]

  out_BxN, _ = jax.lax.fori_loop(1, num_new, step, (out_BxN, variables["cache"]))
  return out_BxN


def generate_from_workdir(config, workdir: str) -> dict:
  workdir = os.path.abspath(os.path.expanduser(workdir))
  ckpt, wanted = checkpointing.open_for_reading(workdir, config.eval.step)
  s = setup.build(config)
  if hasattr(s.task, "sample_images"):
    return _images_from_workdir(config, workdir, s, ckpt, wanted)
  if not hasattr(s.data, "encode"):
    raise UserError(f"--mode=sample needs a task that samples images (ddpm, gan) or a text "
                    f"dataset; task {config.task.name!r} on data {config.data.name!r} has "
                    "neither")
  if not getattr(s.model, "causal", True):
    raise UserError(f"--mode=sample generates text left to right; task {config.task.name!r} "
                    "trains a bidirectional model (model.causal=False), which cannot")
  sc = config.sample
  prompt = s.data.encode(sc.prompt)
  if len(prompt) == 0:
    raise UserError("sample.prompt is empty; give at least one character")
  max_len = getattr(s.model, "max_len", None)   # a recurrent model has no limit
  if max_len is not None and len(prompt) + sc.max_new_tokens > max_len:
    raise UserError(f"prompt ({len(prompt)} tokens) + sample.max_new_tokens="
                    f"{sc.max_new_tokens} exceeds model.max_len={max_len}")
  target = checkpointing.sharded_target(s.abstract_state, s.state_sharding)
  state = ckpt.restore(wanted, target, config=config)
  ckpt.close()
  prompt_BxP = jnp.asarray(np.tile(prompt[None], (sc.num_samples, 1)))
  tokens = generate(s.model, state.params, prompt_BxP, jax.random.PRNGKey(sc.seed),
                    num_new=sc.max_new_tokens, temperature=float(sc.temperature),
                    top_k=int(sc.top_k))
  samples = [sc.prompt + s.data.decode(row) for row in np.asarray(tokens)]
  for text in samples:
    writers.console(f"--- sample (step {wanted})\n{text}")
  if jax.process_index() == 0:
    with open(os.path.join(workdir, "samples.txt"), "a") as f:
      for text in samples:
        f.write(f"--- step {wanted}, temperature {sc.temperature}, top_k {sc.top_k}\n{text}\n")
  return {"step": wanted, "mode": "sample", "samples": samples}


def _images_from_workdir(config, workdir, s, ckpt, wanted) -> dict:
  """Writes samples.npz (uint8 pixels) and plots/samples.png (a grid) in the workdir."""
  sc = config.sample
  if sc.num_images < 1:
    raise UserError(f"sample.num_images={sc.num_images} must be >= 1")
  target = checkpointing.sharded_target(s.abstract_state, s.state_sharding)
  state = ckpt.restore(wanted, target, config=config)
  ckpt.close()
  images = s.task.sample_images(s.task.eval_params(state), state.model_state,
                                jax.random.PRNGKey(sc.seed), sc.num_images)
  pixels = to_pixels(s.data, images).round().astype(np.uint8)
  out = {"step": wanted, "mode": "sample", "num_images": int(len(pixels))}
  if jax.process_index() == 0:
    npz = os.path.join(workdir, "samples.npz")
    np.savez_compressed(npz, images=pixels, step=wanted, seed=sc.seed)
    grid = plots.image_grid(os.path.join(workdir, "plots", "samples.png"),
                            pixels[:64].astype(np.float32) / 255.0, stretch=False)
    out.update({"npz": npz, "grid": grid})
  return out

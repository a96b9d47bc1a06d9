"""--mode=tokenizer: fit a tokenizer on the train split of the config's text corpus.

    python main.py --config=configs/shakespeare_char.py --workdir=runs/tok --mode=tokenizer \
        --config.data.tokenizer_train.vocab_size=4096       # kind=bpe (default) | sentencepiece
    python main.py --config=configs/shakespeare_char.py --workdir=runs/bpe4k \
        --config.data.tokenizer=bpe:runs/tok/tokenizer/tokenizer.json

Only the train split is read, so the held-out split stays unseen. Writes
workdir/tokenizer/ (tokenizer.json for bpe, tokenizer.model for sentencepiece) and
workdir/tokenizer/fit.json; the last stdout line is the JSON result, with the spec to give
as data.tokenizer, bytes per token on the held-out split and whether every held-out
document decodes back to itself.
"""

import json
import os
import time

import jax

from input_pipeline import DataError, text, tokenizer as tokenizer_lib
from train_lib import setup, writers
from train_lib.errors import UserError
from train_lib.tools import capsule


def run(config, workdir: str) -> dict:
  dc, tc = config.data, config.data.tokenizer_train
  if dc.name not in ("shakespeare", "text") and not dc.name.startswith("tfds:"):
    raise UserError(f"--mode=tokenizer fits a corpus of text; data.name={dc.name!r} is none "
                    "(use shakespeare, text or tfds:NAME)")
  if tc.kind not in ("bpe", "sentencepiece"):
    raise UserError(f"data.tokenizer_train.kind={tc.kind!r} is unknown; use bpe or "
                    "sentencepiece")
  if isinstance(tc.vocab_size, bool) or not isinstance(tc.vocab_size, int) or \
      not 257 <= tc.vocab_size <= 2**20:
    raise UserError(f"data.tokenizer_train.vocab_size={tc.vocab_size!r} is out of range: an "
                    "integer from 257 (256 bytes + merges) to 1048576")
  workdir = setup.prepare_workdir(workdir)
  try:
    docs = text.load_docs(dc)
  except DataError as e:
    raise UserError(str(e)) from None
  capsule.write(workdir, config)
  decode = lambda split: [d.tobytes().decode("utf-8", errors="replace") for d in docs[split]]
  train, held_out = decode("train"), decode("validation")
  out_dir = os.path.join(workdir, "tokenizer")
  start = time.time()
  if jax.process_index() == 0:
    try:
      spec = tokenizer_lib.fit(train, tc.kind, tc.vocab_size, out_dir)
    except tokenizer_lib.TokenizerError as e:
      raise UserError(str(e)) from None
  else:
    spec = f"{tc.kind}:" + os.path.join(
        out_dir, "tokenizer.json" if tc.kind == "bpe" else "tokenizer.model")
  seconds = time.time() - start
  tok = tokenizer_lib.load(spec)
  ids = tok.encode_batch(held_out)
  tokens = sum(len(x) for x in ids)
  held_bytes = sum(len(t.encode("utf-8")) for t in held_out)
  exact = all(tok.decode(x) == t for x, t in zip(ids, held_out))
  result = {"mode": "tokenizer", "tokenizer": spec, "kind": tc.kind,
            "vocab_size": tok.vocab_size, "padded_vocab": tok.padded_vocab,
            "train_bytes": sum(len(t.encode("utf-8")) for t in train),
            "held_out_tokens": tokens, "held_out_bytes_per_token": held_bytes / max(tokens, 1),
            "held_out_round_trip": exact, "fit_s": round(seconds, 2)}
  if jax.process_index() == 0:
    with open(os.path.join(out_dir, "fit.json"), "w") as f:
      json.dump(result, f, indent=1)
  writers.console(
      f"tokenizer: {tc.kind} with {tok.vocab_size:,} ids fitted on {result['train_bytes']:,} "
      f"train bytes in {seconds:.1f} s; held-out: {result['held_out_bytes_per_token']:.2f} "
      f"bytes per token, round trip {'exact' if exact else 'NOT exact'}. "
      f"Use it: --config.data.tokenizer={spec}")
  return result

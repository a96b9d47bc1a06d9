"""Text for language modelling: tokens in windows of seq_len + 1.

    data = TextData(config.data, seed, sharding)
    batch = data.next_train()   # {"tokens": i32[B, T+1]}; inputs [:, :-1], targets [:, 1:]
    # eval batches add "mask": f32[B, T]; every held-out token is predicted exactly once
    data.token_bytes            # i32[vocab]: bytes each id covers (bits per byte)

Corpora: `shakespeare` (embedded, input_pipeline/corpora/shakespeare), `text` (your own
.txt/.txt.gz files: data.text_files is a glob), `tfds:NAME` (a text dataset of the TFDS
catalogue, prepared as ArrayRecord in data.tfds_dir; data.text_feature names its text),
`synthetic_tokens` (random, for speed). Training windows tile the train split with a fresh
random shift and order each epoch.

data.tokenizer (input_pipeline/tokenizer.py): `bytes` (default), `bpe:PATH` or
`sentencepiece:PATH`. Other than bytes, each split is tokenized once and cached as
ArrayRecord in data.tfds_dir/whetstone_tokens/KEY, KEY a hash of the tokenizer and of the
corpus's bytes, so a changed corpus or tokenizer never reads a stale cache.
"""

import glob
import hashlib
import json
import math
import os
import shutil
import sys
import time

import jax
import numpy as np
from array_record.python import array_record_module
from jax.experimental import multihost_utils

from input_pipeline import builders, tokenizer as tokenizer_lib
from input_pipeline.base import Data, DataError, epoch_positions, open_split, prepare, register
from input_pipeline.base import tfds_dir

SHAKESPEARE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpora", "shakespeare")
CACHE_VERSION = 1


def corpus_files(config):
  if config.name == "shakespeare":
    return "shakespeare", sorted(glob.glob(os.path.join(SHAKESPEARE, "*.txt.gz")))
  pattern = os.path.expanduser(config.text_files)
  if not pattern:
    raise DataError("data.name='text' needs data.text_files, a glob of .txt or .txt.gz files "
                    "(e.g. --config.data.text_files='~/corpus/*.txt')")
  files = sorted(glob.glob(pattern))
  if not files:
    raise DataError(f"data.text_files={config.text_files!r} matches no file; "
                    "give a glob of .txt or .txt.gz files")
  stamp = "|".join(f"{os.path.abspath(f)}:{os.path.getsize(f)}:{os.path.getmtime(f)}"
                   for f in files)
  return "files_" + hashlib.sha256(stamp.encode()).hexdigest()[:12], files


def load_docs(config) -> dict:
  """{"train": [uint8 arrays], "validation": [...]}: the documents of each split."""
  if config.name.startswith("tfds:"):
    return tfds_text_docs(config)
  name, files = corpus_files(config)
  if not files:
    raise DataError(f"no corpus files found in {SHAKESPEARE}; the checkout is incomplete")
  builder = builders.TextFiles(
      config=builders.TextFilesConfig(name=name, files=files,
                                      holdout_fraction=config.holdout_fraction),
      data_dir=tfds_dir(config), file_format="array_record")
  try:
    splits = prepare(builder)
  except OSError as e:
    raise DataError(f"cannot read corpus files: {e}") from None
  out = {}
  for split in ("train", "validation"):
    source = open_split(splits, split, name)
    out[split] = [np.asarray(source[i]["bytes"], np.uint8) for i in range(len(source))]
  return out


def tfds_text_docs(config) -> dict:
  """A prepared text dataset of the TFDS catalogue ("tfds:lm1b", "tfds:wikitext/
  wikitext-103-raw-v1", "tfds:NAME:1.0.0"), read from its ArrayRecord files without the
  builder's code: each record's data.text_feature is one document, ended by a newline."""
  import tensorflow_datasets as tfds
  spec = config.name[len("tfds:"):]
  name, _, version = spec.partition(":")
  root = tfds_dir(config)
  found = sorted(glob.glob(os.path.join(root, name, version or "*", "dataset_info.json")),
                 key=lambda p: [int(x) if x.isdigit() else x
                                for x in os.path.basename(os.path.dirname(p)).split(".")])
  if not name or not found:
    raise DataError(
        f"text dataset {spec!r} is not prepared in {root}; on a machine with internet access "
        f"run `tfds build {name or 'NAME'} --file_format=array_record --data_dir=DIR`, copy DIR "
        f"here and set --config.data.tfds_dir=DIR (or $TFDS_DATA_DIR)")
  builder = tfds.builder_from_directory(os.path.dirname(found[-1]))
  fmt = builder.info.file_format
  if fmt is None or fmt.value != "array_record":
    raise DataError(f"text dataset {spec!r} in {os.path.dirname(found[-1])} is stored as "
                    f"{getattr(fmt, 'value', fmt)}; prepare it again with "
                    "`tfds build ... --file_format=array_record`")
  feature = config.text_feature
  if feature not in builder.info.features:
    raise DataError(f"text dataset {spec!r} has no feature {feature!r} "
                    f"(it has {sorted(builder.info.features)}); set data.text_feature")
  splits = builder.as_data_source()
  out = {}
  for key, split in (("train", config.train_split), ("validation", config.eval_split)):
    source = open_split(splits, split, spec)
    docs, getitems = [], getattr(source, "__getitems__", None)
    for first in range(0, len(source), 4096):
      indices = list(range(first, min(first + 4096, len(source))))
      for record in (getitems(indices) if getitems else [source[i] for i in indices]):
        value = record[feature]
        text = value if isinstance(value, bytes) else str(value).encode("utf-8")
        docs.append(np.frombuffer(text + b"\n", np.uint8))
    out[key] = docs
  return out


def load_corpus(config):
  """The train and validation splits of a text corpus as uint8 arrays (prepared once)."""
  docs = load_docs(config)
  return tuple(np.concatenate(docs[s]) if docs[s] else np.zeros((0,), np.uint8)
               for s in ("train", "validation"))


def _log(message: str):
  if jax.process_index() == 0:
    print(message, file=sys.stderr, flush=True)


def tokenized(config, tok, docs: dict) -> dict:
  """{"train": ids, "validation": ids} for a tokenizer other than bytes, from the cache
  (tokenized once, by process 0, with every document encoded on its own)."""
  key = hashlib.sha256(f"v{CACHE_VERSION}|{tok.fingerprint}".encode())
  for split in ("train", "validation"):
    for doc in docs[split]:
      key.update(len(doc).to_bytes(8, "little"))
      key.update(doc.tobytes())
    key.update(b"|")
  folder = os.path.join(tfds_dir(config), "whetstone_tokens", key.hexdigest()[:24])
  dtype = np.uint16 if tok.padded_vocab <= 2**16 else np.int32
  cached = _read_cache(folder, dtype)
  if cached is None and jax.process_index() == 0:
    start = time.time()
    tmp = f"{folder}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    counts = {}
    for split in ("train", "validation"):
      texts = [d.tobytes().decode("utf-8", errors="replace") for d in docs[split]]
      writer = array_record_module.ArrayRecordWriter(
          os.path.join(tmp, f"{split}.array_record"), "group_size:1")
      counts[split] = 0
      for ids in tok.encode_batch(texts):
        writer.write(ids.astype(dtype).tobytes())
        counts[split] += len(ids)
      writer.close()
    with open(os.path.join(tmp, "info.json"), "w") as f:
      json.dump({"tokenizer": tok.spec, "fingerprint": tok.fingerprint,
                 "dtype": np.dtype(dtype).name, "tokens": counts,
                 "bytes": {s: int(sum(len(d) for d in docs[s])) for s in docs}}, f)
    shutil.rmtree(folder, ignore_errors=True)   # an incomplete or corrupt earlier cache
    try:
      os.replace(tmp, folder)
    except OSError:   # another run of the same corpus put its cache there meanwhile
      shutil.rmtree(tmp, ignore_errors=True)
    _log(f"tokenized {sum(counts.values()):,} tokens with {tok.spec} in "
         f"{time.time() - start:.1f} s -> {folder}")
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(f"tokenized {folder}")
  if cached is None:
    cached = _read_cache(folder, dtype)
    if cached is None:
      raise DataError(f"token cache {folder} cannot be read back; delete it and rerun")
  else:
    _log(f"tokens of {tok.spec} read from the cache {folder}")
  return cached


def _read_cache(folder: str, dtype):
  """The cached splits, or None where the folder is missing, incomplete or inconsistent."""
  try:
    with open(os.path.join(folder, "info.json")) as f:
      info = json.load(f)
    out = {}
    for split in ("train", "validation"):
      reader = array_record_module.ArrayRecordReader(os.path.join(folder, f"{split}.array_record"))
      records = reader.read_all() if reader.num_records() else []
      reader.close()
      ids = (np.concatenate([np.frombuffer(r, dtype) for r in records]) if records
             else np.zeros((0,), dtype))
      if len(ids) != info["tokens"][split] or info["dtype"] != np.dtype(dtype).name:
        return None
      out[split] = ids
    return out
  except (OSError, ValueError, KeyError, RuntimeError):
    return None


@register("shakespeare")
@register("text")
@register("synthetic_tokens")
@register("tfds:")   # tfds:NAME, a text dataset of the TFDS catalogue
class TextData(Data):
  token_bytes = None   # i32[vocab]: the bytes each id stands for; None: no text (synthetic)
  tokenizer = tokenizer_lib.Tokenizer()

  def __init__(self, config, seed: int, sharding, eval_sharding=None):
    super().__init__(config, seed, sharding, eval_sharding)
    self.seq_len = T = config.seq_len
    if T < 1:
      raise DataError(f"data.seq_len={T} must be positive")
    if config.name == "synthetic_tokens":
      self.vocab_size = config.vocab_size
      self.train_tokens = self.eval_tokens = None
      self.num_train, self.num_eval = 10**9, config.eval_batch_size
    else:
      try:
        self.tokenizer = tokenizer_lib.load(config.tokenizer)
      except tokenizer_lib.TokenizerError as e:
        raise DataError(str(e)) from None
      self.vocab_size, self.token_bytes = self.tokenizer.padded_vocab, self.tokenizer.token_bytes
      if self.tokenizer.kind == "bytes":
        self.train_tokens, self.eval_tokens = load_corpus(config)
      else:
        ids = tokenized(config, self.tokenizer, load_docs(config))
        self.train_tokens, self.eval_tokens = ids["train"], ids["validation"]
        pad = self.vocab_size - self.tokenizer.vocab_size
        _log(f"tokenizer {self.tokenizer.spec}: {self.tokenizer.vocab_size:,} ids, vocabulary "
             f"{self.vocab_size:,} ({pad} unused ids pad it to a multiple of "
             f"{tokenizer_lib.PAD_TO}); {len(self.train_tokens):,} train tokens")
      if len(self.train_tokens) < 2 * T + 2 or len(self.eval_tokens) < 2:
        raise DataError(f"corpus {config.name!r} is too small for data.seq_len={T}: "
                        f"{len(self.train_tokens)} train / {len(self.eval_tokens)} held-out bytes")
      self.num_train = (len(self.train_tokens) - T) // T   # windows per epoch
      self.num_eval = math.ceil((len(self.eval_tokens) - 1) / T)
      if config.eval_limit:
        self.num_eval = min(self.num_eval, config.eval_limit)
    self._orders = {}
    self.start()

  def eval_count(self) -> int:
    """Target tokens one full eval predicts: every held-out token after the first."""
    if self.eval_tokens is None:
      return self.num_eval * self.seq_len
    return min(self.num_eval * self.seq_len, len(self.eval_tokens) - 1)

  def train_batch(self, j: int) -> dict:
    G, L, T = self.config.batch_size, self.local_batch, self.seq_len
    positions = self.local_positions(j, G, L)
    if self.train_tokens is None:
      rng = np.random.default_rng((self.seed, j))
      tokens = rng.integers(0, self.vocab_size, (G, T + 1), dtype=np.int32)
      return {"tokens": tokens[positions - j * G]}
    windows = epoch_positions(self.seed, positions, self.num_train, self._orders)
    epochs = positions // self.num_train
    shift = {e: np.random.default_rng((self.seed, 2, int(e))).integers(T)
             for e in np.unique(epochs)}
    starts = windows * T + np.array([shift[e] for e in epochs])
    tokens = self.train_tokens[starts[:, None] + np.arange(T + 1)]
    return {"tokens": tokens.astype(np.int32)}

  def eval_batch(self, j: int, count: int = 0) -> dict:
    """Held-out windows of batch j (of the first `count`, default all); padding mask 0."""
    T, count = self.seq_len, count or self.num_eval
    windows = self.local_positions(j, self.config.eval_batch_size, self.local_eval_batch)
    if self.eval_tokens is None:
      rng = np.random.default_rng((self.seed, 3))
      tokens = rng.integers(0, self.vocab_size, (self.num_eval, T + 1), dtype=np.int32)
      valid = windows < count
      return {"tokens": tokens[np.where(valid, windows, 0)],
              "mask": np.repeat(valid[:, None], T, 1).astype(np.float32)}
    n = len(self.eval_tokens)
    positions = windows[:, None] * T + np.arange(T + 1)            # [L, T+1]
    in_range = (positions < n) & (windows[:, None] < count)
    tokens = np.where(in_range, self.eval_tokens[np.minimum(positions, n - 1)], 0)
    # target t (= position t+1) counts once if it exists and its window is in range
    mask = in_range[:, 1:]
    return {"tokens": tokens.astype(np.int32), "mask": mask.astype(np.float32)}

  def decode(self, tokens) -> str:
    return self.tokenizer.decode(tokens)

  def encode(self, text: str):
    return self.tokenizer.encode(text)

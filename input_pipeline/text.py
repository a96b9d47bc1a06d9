"""Text for language modelling: byte-level tokens in windows of seq_len + 1.

    data = TextData(config.data, seed, sharding)
    batch = data.next_train()   # {"tokens": i32[B, T+1]}; inputs [:, :-1], targets [:, 1:]
    # eval batches add "mask": f32[B, T]; every held-out token is predicted exactly once

Corpora: `shakespeare` (embedded, input_pipeline/corpora/shakespeare), `text` (your own
.txt/.txt.gz files: data.text_files is a glob), `synthetic_tokens` (random, for speed).
Training windows tile the train split with a fresh random shift and order each epoch.
"""

import glob
import hashlib
import math
import os

import numpy as np

from input_pipeline import builders
from input_pipeline.base import Data, DataError, epoch_positions, open_split, prepare, register
from input_pipeline.base import tfds_dir

SHAKESPEARE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpora", "shakespeare")


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


def load_corpus(config):
  """The train and validation splits of a text corpus as uint8 arrays (prepared once)."""
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
    docs = [np.asarray(source[i]["bytes"], np.uint8) for i in range(len(source))]
    out[split] = np.concatenate(docs) if docs else np.zeros((0,), np.uint8)
  return out["train"], out["validation"]


@register("shakespeare")
@register("text")
@register("synthetic_tokens")
class TextData(Data):
  bytes_per_token = 1

  def __init__(self, config, seed: int, sharding, eval_sharding=None):
    super().__init__(config, seed, sharding, eval_sharding)
    self.seq_len = T = config.seq_len
    if T < 1:
      raise DataError(f"data.seq_len={T} must be positive")
    if config.name == "synthetic_tokens":
      self.vocab_size, self.bytes_per_token = config.vocab_size, None
      self.train_tokens = self.eval_tokens = None
      self.num_train, self.num_eval = 10**9, config.eval_batch_size
    else:
      self.vocab_size = 256
      self.train_tokens, self.eval_tokens = load_corpus(config)
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
    return bytes(np.asarray(tokens, np.uint8).tolist()).decode("utf-8", errors="replace")

  def encode(self, text: str):
    return np.frombuffer(text.encode("utf-8"), np.uint8).astype(np.int32)

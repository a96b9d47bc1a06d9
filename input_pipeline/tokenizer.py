"""Tokenizers for text data, all from local files: bytes (the default), a BPE or a
SentencePiece loaded from disk, or one fitted on a corpus's train split (`fit`).

    tok = tokenizer.load("bytes")                       # 256 ids, one per byte
    tok = tokenizer.load("bpe:runs/tok/tokenizer.json") # Hugging Face tokenizer.json
    tok = tokenizer.load("bpe:gpt2/")                   # GPT-2's vocab.json + merges.txt
    tok = tokenizer.load("sentencepiece:sp.model")
    ids = tok.encode("To be")                           # int32 [n]
    tok.decode(ids)                                     # "To be"
    tok.vocab_size      # the tokenizer's ids; padded_vocab: rounded up to a multiple of 64
    tok.token_bytes     # int32 [padded_vocab]: the UTF-8 bytes each id stands for (0: none)
    tok.fingerprint     # sha256 of what defines the tokenizer: keys the token cache

    path = tokenizer.fit(docs, kind="bpe", vocab_size=4096, out_dir=...)   # --mode=tokenizer

Bits per byte divide a loss by the bytes that its target tokens cover (token_bytes), so a
model with any tokenizer is compared with one on bytes. Fitted tokenizers round-trip any
text exactly: byte-level BPE by construction; SentencePiece with identity normalisation,
no dummy prefix, whitespace kept and byte fallback.
"""

import hashlib
import json
import os
import re

import numpy as np

PAD_TO = 64
KINDS = ("bytes", "bpe", "sentencepiece")


class TokenizerError(ValueError):
  """A tokenizer spec or file that cannot be used; the message says what to give."""


def _bytes_to_unicode() -> dict:
  """GPT-2's byte-level alphabet: byte -> the printable character that stands for it."""
  keep = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
  chars, extra = {}, 0
  for b in range(256):
    if b in keep:
      chars[b] = chr(b)
    else:
      chars[b] = chr(256 + extra)
      extra += 1
  return chars


class Tokenizer:
  kind = "bytes"
  spec = "bytes"

  def __init__(self):
    self.vocab_size = 256
    self.fingerprint = "bytes"
    self._token_bytes = np.ones(256, np.int32)

  @property
  def padded_vocab(self) -> int:
    return -(-self.vocab_size // PAD_TO) * PAD_TO

  @property
  def token_bytes(self):
    out = np.zeros(self.padded_vocab, np.int32)
    out[:self.vocab_size] = self._token_bytes
    return out

  def encode(self, text: str):
    return np.frombuffer(text.encode("utf-8"), np.uint8).astype(np.int32)

  def encode_batch(self, texts):
    return [self.encode(t) for t in texts]

  def decode(self, ids) -> str:
    ids = [int(i) for i in np.asarray(ids).reshape(-1) if 0 <= int(i) < 256]
    return bytes(ids).decode("utf-8", errors="replace")


class HuggingFace(Tokenizer):
  """A `tokenizers` Tokenizer: tokenizer.json, or GPT-2's vocab.json + merges.txt."""
  kind = "bpe"

  def __init__(self, path: str):
    self.spec = f"bpe:{path}"
    self.tok = _load_hf(path)
    self.vocab_size = self.tok.get_vocab_size(with_added_tokens=True)
    self.fingerprint = hashlib.sha256(self.tok.to_str().encode()).hexdigest()
    self._token_bytes = np.zeros(self.vocab_size, np.int32)
    byte_level = "ByteLevel" in json.dumps(json.loads(self.tok.to_str()).get("decoder"))
    unicode_to_byte = {c: b for b, c in _bytes_to_unicode().items()}
    added = {t.content for t in self.tok.get_added_tokens_decoder().values()}
    for piece, i in self.tok.get_vocab(with_added_tokens=True).items():
      if piece in added:
        continue                      # special tokens stand for no text
      if byte_level and all(c in unicode_to_byte for c in piece):
        self._token_bytes[i] = len(piece)   # one character per byte
      else:
        self._token_bytes[i] = len(self.tok.decode([i], skip_special_tokens=False).encode())

  def encode(self, text: str):
    return np.asarray(self.tok.encode(text, add_special_tokens=False).ids, np.int32)

  def encode_batch(self, texts):
    return [np.asarray(e.ids, np.int32)
            for e in self.tok.encode_batch(list(texts), add_special_tokens=False)]

  def decode(self, ids) -> str:
    ids = [int(i) for i in np.asarray(ids).reshape(-1) if 0 <= int(i) < self.vocab_size]
    return self.tok.decode(ids, skip_special_tokens=False)


def _load_hf(path: str):
  import tokenizers
  from tokenizers import decoders, models, pre_tokenizers
  if os.path.isdir(path):
    if os.path.isfile(os.path.join(path, "tokenizer.json")):
      path = os.path.join(path, "tokenizer.json")
    else:
      path = os.path.join(path, "vocab.json")
  if os.path.basename(path) == "vocab.json" or path.endswith(".txt"):
    folder = os.path.dirname(path)
    vocab, merges = os.path.join(folder, "vocab.json"), os.path.join(folder, "merges.txt")
    missing = [p for p in (vocab, merges) if not os.path.isfile(p)]
    if missing:
      raise TokenizerError(f"GPT-2 tokenizer file {missing[0]} not found: a bpe: path is a "
                           "tokenizer.json, or a folder holding tokenizer.json or vocab.json "
                           "and merges.txt")
    try:
      tok = tokenizers.Tokenizer(models.BPE.from_file(vocab, merges))
    except Exception as e:
      raise TokenizerError(f"cannot read GPT-2 tokenizer {vocab} + {merges}: {e}") from None
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    with open(vocab, encoding="utf-8") as f:   # <|endoftext|> and the like, as GPT-2 has them
      tok.add_special_tokens([t for t in json.load(f) if re.fullmatch(r"<\|[^|<>]+\|>", t)])
    return tok
  if not os.path.isfile(path):
    raise TokenizerError(f"tokenizer file {path} not found: a bpe: path is a tokenizer.json, "
                         "or a folder holding tokenizer.json or vocab.json and merges.txt")
  try:
    return tokenizers.Tokenizer.from_file(path)
  except Exception as e:
    raise TokenizerError(f"cannot read tokenizer {path} ({str(e).splitlines()[0][:200]}); "
                         "give a Hugging Face tokenizer.json") from None


class SentencePiece(Tokenizer):
  kind = "sentencepiece"

  def __init__(self, path: str):
    import sentencepiece
    if os.path.isdir(path):
      found = sorted(f for f in os.listdir(path) if f.endswith(".model"))
      if not found:
        raise TokenizerError(f"no .model file in {path}; a sentencepiece: path is a "
                             "SentencePiece .model file")
      path = os.path.join(path, found[0])
    if not os.path.isfile(path):
      raise TokenizerError(f"SentencePiece model {path} not found; give a .model file")
    self.spec = f"sentencepiece:{path}"
    with open(path, "rb") as f:
      proto = f.read()
    try:
      self.sp = sentencepiece.SentencePieceProcessor(model_proto=proto)
    except Exception as e:
      raise TokenizerError(f"cannot read SentencePiece model {path} "
                           f"({str(e).splitlines()[0][:200]})") from None
    self.vocab_size = self.sp.get_piece_size()
    self.fingerprint = hashlib.sha256(proto).hexdigest()
    self._token_bytes = np.array([
        0 if self.sp.is_control(i) or self.sp.is_unknown(i) else
        1 if self.sp.is_byte(i) else len(self.sp.id_to_piece(i).replace("\u2581", " ").encode())
        for i in range(self.vocab_size)], np.int32)

  def encode(self, text: str):
    return np.asarray(self.sp.encode(text), np.int32)

  def encode_batch(self, texts):
    return [np.asarray(ids, np.int32) for ids in self.sp.encode(list(texts))]

  def decode(self, ids) -> str:
    return self.sp.decode([int(i) for i in np.asarray(ids).reshape(-1)
                           if 0 <= int(i) < self.vocab_size])


def load(spec: str) -> Tokenizer:
  """"bytes", "bpe:PATH" or "sentencepiece:PATH" -> a Tokenizer (TokenizerError if not)."""
  kind, _, path = (spec or "bytes").partition(":")
  if kind == "bytes" and not path:
    return Tokenizer()
  if kind not in KINDS[1:] or not path:
    raise TokenizerError(f"data.tokenizer={spec!r} is not a tokenizer; use bytes, bpe:PATH "
                         "(tokenizer.json, or a folder with vocab.json + merges.txt) or "
                         "sentencepiece:PATH (a .model file)")
  path = os.path.abspath(os.path.expanduser(path))
  try:
    return HuggingFace(path) if kind == "bpe" else SentencePiece(path)
  except ImportError as e:
    raise TokenizerError(f"data.tokenizer={spec!r} needs the {e.name} package; "
                         "pip install -r requirements.txt") from None


def fit(docs, kind: str, vocab_size: int, out_dir: str) -> str:
  """Fits a byte-level BPE (`tokenizers`) or a unigram SentencePiece on `docs` (strings)
  and saves it in out_dir; returns the spec that loads it ("bpe:...", "sentencepiece:...")."""
  os.makedirs(out_dir, exist_ok=True)
  if kind == "bpe":
    import tokenizers
    from tokenizers import decoders, models, pre_tokenizers, trainers
    if vocab_size < 257:
      raise TokenizerError(f"data.tokenizer_train.vocab_size={vocab_size} must be > 256 for a "
                           "byte-level BPE (256 byte tokens + merges)")
    tok = tokenizers.Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(docs, trainer=trainer)
    path = os.path.join(out_dir, "tokenizer.json")
    tok.save(path)
    return f"bpe:{path}"
  if kind == "sentencepiece":
    import io
    import sentencepiece
    lines = [line for doc in docs for line in doc.split("\n") if line]
    model = io.BytesIO()
    try:
      sentencepiece.SentencePieceTrainer.train(
          sentence_iterator=iter(lines), model_writer=model, vocab_size=vocab_size,
          model_type="unigram", byte_fallback=True, normalization_rule_name="identity",
          add_dummy_prefix=False, remove_extra_whitespaces=False,
          allow_whitespace_only_pieces=True, user_defined_symbols=["\n"],
          bos_id=-1, eos_id=-1, character_coverage=1.0, num_threads=1,
          max_sentence_length=1 << 16, minloglevel=2)
    except RuntimeError as e:
      raise TokenizerError(f"SentencePiece could not fit vocab_size={vocab_size}: "
                           f"{str(e).splitlines()[0][:300]}") from None
    path = os.path.join(out_dir, "tokenizer.model")
    with open(path, "wb") as f:
      f.write(model.getvalue())
    return f"sentencepiece:{path}"
  raise TokenizerError(f"data.tokenizer_train.kind={kind!r} is unknown; use bpe or "
                       "sentencepiece")

"""Tokenizers from local files, fitted on the train split, a token cache keyed by corpus and
tokenizer, bits per byte over the bytes targets cover, and TFDS text datasets by name."""

import json
import math
import os
import re
import shutil

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds
from jax.sharding import NamedSharding, PartitionSpec as P

import input_pipeline
from configs import base
from helpers import last_json, read_metrics, run_main, without_timings
from input_pipeline import text, tokenizer
from test_reliability import assert_same_arrays, saved_state


def data_config(tfds_dir, **kw):
  config = base.get_config().data
  config.update(tfds_dir=tfds_dir, name="shakespeare", eval_split="validation", seq_len=16,
                batch_size=4, eval_batch_size=4)
  config.update(kw)
  return config


def build(config):
  mesh = jax.make_mesh((1,), ("data",), devices=jax.devices()[:1])
  return input_pipeline.build(config, seed=0, sharding=NamedSharding(mesh, P("data")))


@pytest.fixture(scope="module")
def shakespeare(tfds_dir):
  docs = text.load_docs(data_config(tfds_dir))
  return {s: [d.tobytes().decode("utf-8") for d in docs[s]] for s in docs}


@pytest.fixture(scope="module")
def fitted(shakespeare, tmp_path_factory):
  """A byte-level BPE and a unigram SentencePiece fitted on the train split only."""
  root = tmp_path_factory.mktemp("fitted")
  return {kind: tokenizer.fit(shakespeare["train"], kind, 700, str(root / kind))
          for kind in ("bpe", "sentencepiece")}


@pytest.mark.parametrize("kind", ["bpe", "sentencepiece"])
def test_fitted_tokenizer_round_trips_every_held_out_line(kind, fitted, shakespeare):
  tok = tokenizer.load(fitted[kind])
  assert tok.vocab_size == 700 and tok.padded_vocab == 704
  lines = [line for doc in shakespeare["validation"] for line in doc.splitlines(keepends=True)]
  assert len(lines) > 10_000
  ids = tok.encode_batch(lines)
  bad = [line for line, x in zip(lines, ids) if tok.decode(x) != line]
  assert bad == []
  # every token stands for the bytes it covers: they add up to the line's UTF-8 length
  covered = [int(tok.token_bytes[x].sum()) for x in ids]
  assert covered == [len(line.encode("utf-8")) for line in lines]
  total_tokens = sum(len(x) for x in ids)
  assert total_tokens < 0.7 * sum(covered)   # it compresses: fewer tokens than bytes


def test_bpe_fit_is_deterministic(shakespeare, fitted, tmp_path):
  again = tokenizer.fit(shakespeare["train"], "bpe", 700, str(tmp_path))
  assert tokenizer.load(again).fingerprint == tokenizer.load(fitted["bpe"]).fingerprint


def _gpt2_reference(text_, vocab, merges):
  """GPT-2's own algorithm (openai/gpt-2 encoder.py), written out for ASCII text: split
  with its pattern, map bytes to its alphabet, merge the lowest-ranked pair until none."""
  alphabet = tokenizer._bytes_to_unicode()
  ranks = {tuple(m.split()): i for i, m in enumerate(merges)}
  pattern = r"'s|'t|'re|'ve|'m|'ll|'d| ?[A-Za-z]+| ?[0-9]+| ?[^\sA-Za-z0-9]+|\s+(?!\S)|\s+"
  out = []
  for word in re.findall(pattern, text_):
    parts = [alphabet[b] for b in word.encode("utf-8")]
    while len(parts) > 1:
      pairs = [(ranks.get(p, math.inf), i) for i, p in enumerate(zip(parts, parts[1:]))]
      rank, i = min(pairs)
      if rank == math.inf:
        break
      parts = parts[:i] + [parts[i] + parts[i + 1]] + parts[i + 2:]
    out.extend(vocab[p] for p in parts)
  return out


def test_gpt2_vocab_and_merges_encode_as_gpt2_and_the_tokenizers_library(tmp_path):
  from tokenizers import ByteLevelBPETokenizer
  alphabet = tokenizer._bytes_to_unicode()
  vocab = {alphabet[b]: b for b in range(256)}
  merges = ["Ġ t", "h e", "Ġt he", "Ġ a", "r e", "i n", "Ġthe re", "o u", "Ġ s", "e r",
            "Ġ w", "Ġs h", "Ġa n", "Ġan d", "l l"]
  for m in merges:
    vocab["".join(m.split())] = len(vocab)
  vocab["<|endoftext|>"] = len(vocab)
  (tmp_path / "vocab.json").write_text(json.dumps(vocab))
  (tmp_path / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
  sample = ("And there the theatre was, and we shall  see it: there's 12 ways in.\n"
            "  Then,   THE end!\n\nwell   ")
  tok = tokenizer.load(f"bpe:{tmp_path}")
  assert tok.vocab_size == 256 + len(merges) + 1 and tok.padded_vocab == 320
  ours = tok.encode(sample).tolist()
  assert ours == _gpt2_reference(sample, vocab, merges)
  library = ByteLevelBPETokenizer(str(tmp_path / "vocab.json"), str(tmp_path / "merges.txt"))
  assert ours == library.encode(sample).ids
  assert len(ours) < len(sample.encode()) and tok.decode(ours) == sample
  assert tokenizer.load(f"bpe:{tmp_path / 'vocab.json'}").encode(sample).tolist() == ours
  assert tok.token_bytes[vocab["<|endoftext|>"]] == 0 and tok.token_bytes[vocab["Ġthere"]] == 6
  assert vocab["<|endoftext|>"] in tok.encode("end.<|endoftext|>Then").tolist()  # as GPT-2's


@pytest.mark.parametrize("spec, message", [
    ("bpe", "is not a tokenizer"), ("wordpiece:/x", "is not a tokenizer"),
    ("bpe:/nonexistent/tokenizer.json", "not found"),
    ("sentencepiece:/nonexistent.model", "not found")])
def test_bad_tokenizer_specs_name_the_fix(spec, message):
  with pytest.raises(tokenizer.TokenizerError, match=message):
    tokenizer.load(spec)


def test_a_broken_tokenizer_file_is_one_clear_error(tmp_path):
  (tmp_path / "tokenizer.json").write_text("{not json")
  with pytest.raises(tokenizer.TokenizerError, match="cannot read tokenizer"):
    tokenizer.load(f"bpe:{tmp_path / 'tokenizer.json'}")
  result = run_main("--config=configs/shakespeare_char.py:runlocal", f"--workdir={tmp_path}/w",
                    f"--config.data.tokenizer=bpe:{tmp_path / 'tokenizer.json'}", check=False)
  assert result.returncode == 2 and "cannot read tokenizer" in result.stderr
  assert "Traceback" not in result.stderr


def test_token_cache_is_reused_and_invalidated(fitted, shakespeare, tmp_path, capfd):
  bpe, tfds_dir = fitted["bpe"], str(tmp_path / "tfds")   # its own cache, damaged below
  capfd.readouterr()
  first = build(data_config(tfds_dir, tokenizer=bpe))
  assert "tokenized" in capfd.readouterr().err
  second = build(data_config(tfds_dir, tokenizer=bpe))
  assert "read from the cache" in capfd.readouterr().err
  np.testing.assert_array_equal(first.train_tokens, second.train_tokens)
  np.testing.assert_array_equal(first.eval_tokens, second.eval_tokens)
  assert first.vocab_size == 704 and len(first.train_tokens) < 0.7 * sum(
      len(d.encode()) for d in shakespeare["train"])
  # the cache holds exactly the tokens the tokenizer gives each document
  tok = tokenizer.load(bpe)
  np.testing.assert_array_equal(first.eval_tokens,
                                np.concatenate(tok.encode_batch(shakespeare["validation"])))
  # the same file rewritten with another tokenizer: tokenized again, other tokens
  path = str(tmp_path / "tokenizer.json")
  shutil.copy(bpe.split(":", 1)[1], path)
  build(data_config(tfds_dir, tokenizer=f"bpe:{path}"))
  assert "read from the cache" in capfd.readouterr().err   # same content, same cache
  other = tokenizer.fit(shakespeare["train"], "bpe", 600, str(tmp_path / "other"))
  shutil.copy(other.split(":", 1)[1], path)
  third = build(data_config(tfds_dir, tokenizer=f"bpe:{path}"))
  assert "tokenized" in capfd.readouterr().err
  assert third.vocab_size == 640 and len(third.train_tokens) != len(first.train_tokens)
  # a damaged cache is rebuilt, not read
  for folder in glob_cache(tfds_dir):
    record = os.path.join(folder, "train.array_record")
    with open(record, "r+b") as f:
      f.truncate(os.path.getsize(record) // 2)
  fourth = build(data_config(tfds_dir, tokenizer=bpe))
  assert "tokenized" in capfd.readouterr().err
  np.testing.assert_array_equal(fourth.train_tokens, first.train_tokens)


def glob_cache(tfds_dir):
  root = os.path.join(tfds_dir, "whetstone_tokens")
  return [os.path.join(root, d) for d in os.listdir(root)]


def test_a_changed_corpus_is_tokenized_again(tfds_dir, fitted, tmp_path, capfd):
  corpus = tmp_path / "c.txt"
  corpus.write_text("To be, or not to be, that is the question.\n" * 40)
  config = data_config(tfds_dir, name="text", text_files=str(corpus), tokenizer=fitted["bpe"],
                       seq_len=4)
  a = build(config)
  corpus.write_text("Whether 'tis nobler in the mind to suffer\n" * 40)
  b = build(config)
  assert capfd.readouterr().err.count("tokenized") == 2
  assert a.decode(a.train_tokens[:10]) != b.decode(b.train_tokens[:10])
  assert b.decode(b.train_tokens).startswith("Whether 'tis nobler")


def test_bits_per_byte_by_hand():
  """Two windows of 3 targets over a 6-id vocabulary whose ids cover 1, 2, 3, 0, 4, 1 bytes;
  the last target of row 1 is masked out. bits/byte = sum of nll / ln 2 / covered bytes."""
  from types import SimpleNamespace
  from train_lib.tasks.lm import LanguageModeling
  token_bytes = np.array([1, 2, 3, 0, 4, 1], np.int32)
  data = SimpleNamespace(vocab_size=6, token_bytes=token_bytes, seq_len=3)
  task = LanguageModeling(SimpleNamespace(label_smoothing=0.0), data, SimpleNamespace())
  tokens = np.array([[0, 1, 2, 4], [5, 4, 3, 2]], np.int32)
  mask = np.array([[1, 1, 1], [1, 1, 0]], np.float32)
  logits = np.log(np.array([[0.1, 0.2, 0.3, 0.1, 0.2, 0.1]] * 6).reshape(2, 3, 6))
  _, stats = task.loss(lambda inputs: logits, {"tokens": tokens, "mask": mask}, None,
                       train=False)
  # targets 1, 2, 4 | 4, 3 (2 masked): p = 0.2, 0.3, 0.2 | 0.2, 0.1; bytes 2+3+4 | 4+0
  nll = -(np.log(0.2) + np.log(0.3) + np.log(0.2) + np.log(0.2) + np.log(0.1))
  total, covered = np.asarray(stats["bits_per_byte"])
  assert covered == 13
  assert total / covered == pytest.approx(nll / np.log(2) / 13, rel=1e-6)
  assert task.summarize({"loss": 1.0, "bits_per_byte": 0.5})["bits_per_byte"] == 0.5


def test_model_vocabulary_follows_the_tokenizer(tfds_dir, fitted, shakespeare, tmp_path,
                                                capfd):
  from train_lib import setup
  from configs import shakespeare_char
  spec = tokenizer.fit(shakespeare["train"], "bpe", 300, str(tmp_path))
  config = shakespeare_char.get_config("runlocal")
  config.data.tfds_dir, config.data.tokenizer = tfds_dir, spec
  config.mesh.data = 1
  s = setup.build(config, devices=jax.devices()[:1])
  assert s.model.vocab_size == 320 and s.data.vocab_size == 320
  assert "300 ids, vocabulary 320 (20 unused ids pad it" in capfd.readouterr().err
  assert s.abstract_state.params["embed"]["embedding"].shape[0] == 320
  config.model.vocab_size = 256   # set by hand below the tokenizer's: refused
  with pytest.raises(Exception, match="smaller than the data's vocabulary"):
    setup.build(config, devices=jax.devices()[:1])


def test_runlocal_with_a_fitted_bpe_trains_evaluates_resumes_and_samples(tmp_path, tfds_dir):
  config = "--config=configs/shakespeare_char.py:runlocal"
  tfds = f"--config.data.tfds_dir={tfds_dir}"
  fit = last_json(run_main(config, f"--workdir={tmp_path}/tok", "--mode=tokenizer", tfds,
                           "--config.data.tokenizer_train.vocab_size=512").stdout)
  assert fit["held_out_round_trip"] and fit["vocab_size"] == 512
  assert fit["held_out_bytes_per_token"] > 1.8
  assert json.load(open(tmp_path / "tok" / "tokenizer" / "fit.json")) == fit
  ref, resumed = str(tmp_path / "ref"), str(tmp_path / "resumed")
  argv = [config, tfds, f"--config.data.tokenizer={fit['tokenizer']}",
          "--config.train.num_steps=8", "--config.train.log_every=4",
          "--config.train.eval_every=0", "--config.train.checkpoint_every=4"]
  result = last_json(run_main(*argv, f"--workdir={ref}").stdout)
  assert result["step"] == 8 and result["loss"] < np.log(512)
  # bits per byte: the held-out targets' nats over the bytes they cover, not loss / ln 2
  from configs import shakespeare_char
  data_config = shakespeare_char.get_config("runlocal").data
  data_config.update(tfds_dir=tfds_dir, tokenizer=fit["tokenizer"])
  data = build(data_config)
  count = data.eval_count()
  assert count == result["num_examples"]
  covered = data.token_bytes[data.eval_tokens[1:count + 1]].sum()
  assert result["bits_per_byte"] == pytest.approx(
      result["loss"] * count / np.log(2) / covered, rel=1e-4)
  assert result["bits_per_byte"] < 0.6 * result["loss"] / np.log(2)
  shutil.copytree(ref, resumed)
  proc = run_main(*argv, f"--workdir={resumed}", "--config.train.restore_step=4")
  assert "rolled back to step 4" in proc.stderr and "read from the cache" in proc.stderr
  assert last_json(proc.stdout) == result
  step8 = lambda w: [without_timings(r) for r in read_metrics(w)
                     if r["step"] == 8 and r["split"] == "train" and "loss" in r]
  assert step8(resumed)[-1] == step8(ref)[-1]   # resumed: the copied line, then its own
  assert_same_arrays(saved_state(resumed, 8), saved_state(ref, 8))
  evaluated = last_json(run_main(*argv, f"--workdir={ref}", "--mode=eval").stdout)
  assert evaluated["loss"] == pytest.approx(result["loss"], rel=1e-5)
  sample = last_json(run_main(*argv, f"--workdir={ref}", "--mode=sample",
                              "--config.sample.prompt=ROMEO:", "--config.sample.temperature=0",
                              "--config.sample.max_new_tokens=12").stdout)
  text_ = sample["samples"][0]
  assert text_.startswith("ROMEO:") and len(text_) > len("ROMEO:")


class TinyText(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """A TFDS text dataset of the catalogue's shape (lm1b's: one "text" feature)."""
  name = "tiny_text"
  VERSION = tfds.core.Version("1.0.0")

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(
        {"text": tfds.features.Text()}))

  def _split_generators(self, dl_manager):
    return {"train": self._generate_examples(0, 400), "test": self._generate_examples(1, 40)}

  def _generate_examples(self, seed, n):
    rng = np.random.default_rng(seed)
    words = ["the", "king", "queen", "speaks", "softly", "and", "then", "leaves", "a", "hall"]
    for i in range(n):
      yield i, {"text": " ".join(rng.choice(words, 12)) + "."}


def test_a_local_tfds_text_dataset_trains_by_name(tmp_path):
  data_dir = str(tmp_path / "tfds")
  TinyText(data_dir=data_dir, file_format="array_record").download_and_prepare()
  argv = ["--config=configs/shakespeare_char.py:runlocal", f"--config.data.tfds_dir={data_dir}",
          "--config.data.name=tfds:tiny_text", "--config.data.eval_split=test",
          "--config.train.num_steps=30", "--config.data.seq_len=32", "--config.data.eval_limit=0"]
  result = last_json(run_main(*argv, f"--workdir={tmp_path}/w").stdout)
  # the held-out split is 40 sentences of ~70 bytes, each ended by a newline
  assert result["split"] == "test" and 2000 < result["num_examples"] < 3500
  assert result["loss"] < 0.7 * np.log(256)   # ten words: it learns fast
  fit = last_json(run_main(*argv, f"--workdir={tmp_path}/tok", "--mode=tokenizer",
                           "--config.data.tokenizer_train.vocab_size=300").stdout)
  assert fit["held_out_round_trip"]
  missing = run_main(*argv, f"--workdir={tmp_path}/m", "--config.data.name=tfds:lm1b",
                     check=False)
  assert missing.returncode == 2 and "not prepared" in missing.stderr
  assert "tfds build lm1b --file_format=array_record" in missing.stderr
  no_text = run_main(*argv, f"--workdir={tmp_path}/n", "--config.data.text_feature=body",
                     check=False)
  assert no_text.returncode == 2 and "has no feature 'body'" in no_text.stderr

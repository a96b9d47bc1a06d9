"""Language modelling end to end: text data, the lm task through main.py, sampling."""

import numpy as np
import pytest
import jax
from jax.sharding import NamedSharding, PartitionSpec as P

import input_pipeline
from configs import base
from helpers import last_json, read_metrics, run_main


def text_config(tfds_dir, **kw):
  config = base.get_config().data
  config.update(tfds_dir=tfds_dir, name="text", seq_len=8, batch_size=4, eval_batch_size=4)
  config.update(kw)
  return config


def build(config):
  mesh = jax.make_mesh((1,), ("data",), devices=jax.devices()[:1])
  return input_pipeline.build(config, seed=0, sharding=NamedSharding(mesh, P("data")))


@pytest.fixture
def corpus(tmp_path):
  rng = np.random.default_rng(0)
  for i in range(3):
    (tmp_path / f"doc{i}.txt").write_bytes(bytes(rng.integers(32, 127, 400 + 37 * i).tolist()))
  return str(tmp_path / "*.txt")


def test_eval_predicts_every_held_out_token_once(tfds_dir, corpus, capfd):
  data = build(text_config(tfds_dir, text_files=corpus))
  out, err = capfd.readouterr()   # our one line, not TFDS's "Downloading ... Unknown size"
  assert "Downloading" not in out + err and "from 3 files (" in err, (out, err)
  held_out = data.eval_tokens
  assert data.vocab_size == 256 and len(held_out) == 40 + 44 + 48  # 10% of each file
  seen = []
  for batch in data.eval_batches():
    tokens, mask = np.asarray(batch["tokens"]), np.asarray(batch["mask"])
    assert tokens.shape[1] == 9 and mask.shape[1] == 8
    seen.extend(tokens[:, 1:][mask > 0].tolist())
  np.testing.assert_array_equal(seen, held_out[1:])


def test_train_windows_are_real_text_and_seeded(tfds_dir, corpus):
  a, b = build(text_config(tfds_dir, text_files=corpus)), build(text_config(tfds_dir,
                                                                            text_files=corpus))
  x, y = np.asarray(a.next_train()["tokens"]), np.asarray(b.next_train()["tokens"])
  np.testing.assert_array_equal(x, y)
  text = a.train_tokens.tobytes()
  for row in x:
    assert bytes(row.astype(np.uint8).tolist()) in text


def test_missing_text_files_fail_fast(tfds_dir, tmp_path):
  with pytest.raises(input_pipeline.DataError, match="matches no file"):
    build(text_config(tfds_dir, text_files=str(tmp_path / "none*.txt")))


def test_shakespeare_train_eval_sample_through_main(tmp_path, tfds_dir):
  config = "--config=configs/shakespeare_char.py:runlocal"
  args = [config, f"--workdir={tmp_path}", f"--config.data.tfds_dir={tfds_dir}"]
  result = last_json(run_main(*args).stdout)
  assert result["split"] == "validation" and result["num_examples"] == 32 * 64
  assert result["loss"] < 0.9 * np.log(256)                 # it learned something
  assert result["bits_per_byte"] == pytest.approx(result["loss"] / np.log(2))
  train = [r for r in read_metrics(str(tmp_path)) if r["split"] == "train" and "loss" in r]
  assert train[0]["step"] == 0 and all(r["tokens_per_sec"] > 0 for r in train[1:])
  assert (tmp_path / "plots" / "loss.png").exists()
  sample = last_json(run_main(*args, "--mode=sample", "--config.sample.prompt=KING",
                              "--config.sample.max_new_tokens=20").stdout)
  assert sample["mode"] == "sample" and sample["samples"][0].startswith("KING")
  assert len(sample["samples"][0].encode("utf-8", "surrogateescape")) >= 4
  greedy = [last_json(run_main(*args, "--mode=sample", "--config.sample.temperature=0",
                               "--config.sample.max_new_tokens=10").stdout)["samples"]
            for _ in range(2)]
  assert greedy[0] == greedy[1]
  too_long = run_main(*args, "--mode=sample", "--config.sample.max_new_tokens=500", check=False)
  assert too_long.returncode == 2 and "exceeds model.max_len" in too_long.stderr


def test_gpt2_runlocal_synthetic_with_accumulation_and_chunked_loss(tmp_path, tfds_dir):
  result = last_json(run_main("--config=configs/gpt2_124m.py:runlocal,synthetic",
                              f"--workdir={tmp_path}", f"--config.data.tfds_dir={tfds_dir}",
                              "--config.model.loss_chunk=32").stdout)
  assert np.isfinite(result["loss"]) and "bits_per_byte" not in result

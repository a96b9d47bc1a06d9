"""The Shakespeare Transformer with bytes and with fitted BPEs, at equal training tokens:
held-out bits per byte, tokens/s, and what the tokenizer itself costs the input pipeline.

    python bench/tokenizer_table.py                       # one GPU: configs/shakespeare_char.py
    python bench/tokenizer_table.py --vocab=1024,4096,16384 --json=tokenizers.json
    JAX_PLATFORMS=cpu python bench/tokenizer_table.py --runlocal --steps=200   # a CPU smoke run

For each vocabulary size: `--mode=tokenizer` fits a byte-level BPE on the train split (fit
s); the corpus is then tokenized into a fresh cache (tokenize s) and read back from it
(cache s: what every later run pays); then the same config trains with that tokenizer, the
same steps x batch x seq_len tokens as the bytes run (its `model.vocab_size` follows the
tokenizer). Bits per byte are the held-out nats over the bytes the targets cover, so the
rows compare. tokens/s is the median of the train lines after the first. Prints a markdown
table.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)


def main_py(*args) -> dict:
  proc = subprocess.run([sys.executable, os.path.join(REPO, "main.py"), *args], cwd=REPO,
                        capture_output=True, text=True)
  if proc.returncode:
    raise SystemExit(f"main.py {' '.join(args)} exited {proc.returncode}:\n{proc.stderr[-3000:]}")
  return json.loads(proc.stdout.strip().splitlines()[-1])


def tokenize_cost(spec: str, data_args: dict) -> tuple:
  """(seconds to tokenize the corpus into a fresh cache, seconds to read it back)."""
  from configs import base
  from input_pipeline import text, tokenizer
  config = base.get_config().data
  config.update(name="shakespeare", **data_args)
  docs = text.load_docs(config)
  tok = tokenizer.load(spec)
  with tempfile.TemporaryDirectory() as cache:
    config.tfds_dir = cache
    start = time.time()
    text.tokenized(config, tok, docs)
    first = time.time() - start
    start = time.time()
    text.tokenized(config, tok, docs)
    return first, time.time() - start


def train(config: str, workdir: str, extra: list) -> dict:
  result = main_py(f"--config={config}", f"--workdir={workdir}", *extra)
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    lines = [json.loads(line) for line in f]
  rates = [r["tokens_per_sec"] for r in lines if r.get("split") == "train" and
           r.get("tokens_per_sec")][1:]
  return {"bits_per_byte": result["bits_per_byte"], "loss": result["loss"],
          "tokens_per_sec": statistics.median(rates) if rates else float("nan")}


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--vocab", default="1024,4096,16384")
  parser.add_argument("--runlocal", action="store_true")
  parser.add_argument("--steps", type=int, default=0, help="train.num_steps (0: the config's)")
  parser.add_argument("--workdir", default="")
  parser.add_argument("--json", default="")
  args = parser.parse_args()
  from train_lib import writers
  config = "configs/shakespeare_char.py" + (":runlocal" if args.runlocal else "")
  root = args.workdir or tempfile.mkdtemp(prefix="bench_tokenizers_")
  tfds_dir = os.path.join(root, "tfds")
  extra = [f"--config.data.tfds_dir={tfds_dir}"]
  if args.steps:
    extra.append(f"--config.train.num_steps={args.steps}")
  rows, results = [], {}
  bytes_run = train(config, os.path.join(root, "bytes"), extra)
  results["bytes"] = {**bytes_run, "vocab": 256, "bytes_per_token": 1.0}
  print(f"done bytes: {bytes_run}", flush=True)

  def keep():                        # after every row, so a cut-off run keeps what it measured
    if args.json:
      with open(args.json, "w") as f:
        json.dump(results, f, indent=1)

  keep()
  for vocab in [int(v) for v in args.vocab.split(",")]:
    fit = main_py(f"--config={config}", f"--workdir={os.path.join(root, f'tok{vocab}')}",
                  "--mode=tokenizer", f"--config.data.tokenizer_train.vocab_size={vocab}",
                  *extra)
    first, cached = tokenize_cost(fit["tokenizer"], {"tfds_dir": tfds_dir})
    run = train(config, os.path.join(root, f"bpe{vocab}"),
                extra + [f"--config.data.tokenizer={fit['tokenizer']}"])
    results[f"bpe{vocab}"] = {**run, "vocab": fit["padded_vocab"], "fit_s": fit["fit_s"],
                              "tokenize_s": first, "cache_read_s": cached,
                              "bytes_per_token": fit["held_out_bytes_per_token"]}
    print(f"done bpe {vocab}: {results[f'bpe{vocab}']}", flush=True)
    keep()
  base_rate = results["bytes"]["tokens_per_sec"]
  for name, r in results.items():
    rows.append([name, f"{r['vocab']:,}", f"{r['bytes_per_token']:.2f}",
                 f"{r['bits_per_byte']:.4f}", f"{r['tokens_per_sec']:,.0f}",
                 f"{r['tokens_per_sec'] / base_rate:.2f}",
                 f"{r['tokens_per_sec'] * r['bytes_per_token']:,.0f}",
                 *(f"{r[k]:.2f}" if k in r else "-" for k in ("fit_s", "tokenize_s",
                                                               "cache_read_s"))])
  import jax
  print(f"device: {jax.devices()[0].device_kind}, jax {jax.__version__}, config {config}")
  print(writers.table(["tokenizer", "vocab", "held-out bytes/token", "held-out bits/byte",
                       "tokens/s", "vs bytes", "bytes/s", "fit s", "tokenize s",
                       "cache read s"], rows, markdown=True))


if __name__ == "__main__":
  main()

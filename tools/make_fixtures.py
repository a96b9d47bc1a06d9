"""Builds the parity fixtures under tests/fixtures/ from reference implementations.

    python tools/make_fixtures.py              # every family
    python tools/make_fixtures.py rnn moe      # some of them

Needs torch, torchvision, timm, transformers and torch_geometric (the GPU machine's plain
python3 has them all; CI does not, and reads only the fixtures). Each family is a file
tools/parity/<family>.py with build(out_dir); every reference model is randomly
initialised from a fixed seed, so a rerun gives the same files on the same library
versions. The library versions are written to tests/fixtures/<family>/versions.json.
"""

import importlib
import json
import os
import pkgutil
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
FIXTURES = os.path.join(REPO, "tests", "fixtures")


def families():
  return sorted(m.name for m in pkgutil.iter_modules([os.path.join(HERE, "parity")]))


def versions() -> dict:
  out = {}
  for name in ("torch", "torchvision", "timm", "transformers", "torch_geometric", "numpy"):
    try:
      out[name] = importlib.import_module(name).__version__
    except ImportError:
      pass
  return out


def main(argv):
  sys.path.insert(0, REPO)
  names = argv or families()
  unknown = sorted(set(names) - set(families()))
  if unknown:
    raise SystemExit(f"unknown families {unknown}; known: {families()}")
  for name in names:
    out_dir = os.path.join(FIXTURES, name)
    os.makedirs(out_dir, exist_ok=True)
    importlib.import_module(f"tools.parity.{name}").build(out_dir)
    with open(os.path.join(out_dir, "versions.json"), "w") as f:
      json.dump(versions(), f, indent=1, sort_keys=True)
    size = sum(os.path.getsize(os.path.join(out_dir, f)) for f in os.listdir(out_dir))
    print(f"{name}: {size / 1e6:.2f} MB in {out_dir}")


if __name__ == "__main__":
  main(sys.argv[1:])

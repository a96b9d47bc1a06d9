#!/usr/bin/env bash
# Sourced at the start of each command on an offline GPU machine (bench/RESULTS.md runs):
# installs the carried wheelhouse (tools/build_wheelhouse.sh .whl python3.12 gpu-box) into
# /tmp/site and puts the carried Fashion-MNIST IDX files where the data source looks.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/site .whl/*.whl || return 1
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1
if [ -d .devdata/fashion-mnist ]; then
  mkdir -p /usr/share/datasets && cp -r .devdata/fashion-mnist /usr/share/datasets/
fi
python3 -c "import jax, ml_collections, grain, tensorflow_datasets; print(jax.devices())"

#!/usr/bin/env bash
# Builds an offline wheelhouse of requirements.txt for another machine (an air-gapped
# cluster, a GPU box without network): every wheel the target needs, resolved for its
# Python version by a throw-away virtualenv, minus the packages it already has.
#
#   tools/build_wheelhouse.sh DEST PYTHON [SKIP_REGEX]
#   tools/build_wheelhouse.sh .whl python3.12 '^(jax|jaxlib|flax|optax|orbax.*|numpy|scipy)$'
#   tools/build_wheelhouse.sh .whl python3.12 gpu-box
#
# SKIP_REGEX "gpu-box" names what this project's offline GPU machines already have (jax,
# flax, optax, orbax, torch's stack) or a training run there never imports (libtpu, the
# trackers, pytest, the TensorBoard viewer): 43 MB instead of 190 (Python 3.12, 2026-12-07).
#
# On the target (no network):
#   pip install --no-index --no-deps --target /tmp/site DEST/*.whl && export PYTHONPATH=/tmp/site
set -euo pipefail
DEST="${1:?usage: tools/build_wheelhouse.sh DEST PYTHON [SKIP_REGEX]}"
PYTHON="${2:?give the Python of the target, e.g. python3.12}"
SKIP="${3:-^$}"
if [ "$SKIP" = gpu-box ]; then
  SKIP='^(jax|jaxlib|flax|optax|orbax.*|numpy|scipy|ml-dtypes|opt-einsum|libtpu|pyarrow|'
  SKIP+='tensorstore|wandb|mlflow.*|databricks.*|grpcio|cryptography|hf-xet|pillow|fastapi|'
  SKIP+='starlette|uvicorn|uvloop|opentelemetry.*|git.*|smmap|sqlparse|cachetools|google-auth|'
  SKIP+='pyasn1.*|werkzeug|python-multipart|aiofiles|httpx.*|httpcore.*|h11|prometheus-client|'
  SKIP+='pydantic.*|annotated-.*|typing-inspection|pytest.*|execnet|iniconfig|pluggy|pygments|'
  SKIP+='tokenizers|networkx|setuptools|huggingface-hub|filelock|fsspec|requests|urllib3|'
  SKIP+='certifi|idna|charset-normalizer|pyyaml|tqdm|cffi|pycparser|python-dotenv|truststore|'
  SKIP+='distro|sniffio|anyio|click|cwevals|narwhals|markdown.*|mdurl|'
  SKIP+='tensorboard|tensorboard-data-server)$'
fi
REQ="$(cd "$(dirname "$0")/.." && pwd)/requirements.txt"
VENV="$(mktemp -d)/venv"
"$PYTHON" -m venv "$VENV"
"$VENV/bin/pip" install -q -r "$REQ"
PYVER="$("$VENV/bin/python" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')"
mkdir -p "$DEST"
PLATFORMS=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64 \
         manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64; do
  PLATFORMS+=(--platform "$p")
done
"$VENV/bin/pip" freeze --exclude-editable | while IFS= read -r pin; do
  name="$(echo "${pin%%==*}" | tr 'A-Z_' 'a-z-')"
  [[ "$name" =~ $SKIP ]] && continue
  "$VENV/bin/pip" download -q --no-deps --only-binary=:all: --python-version "$PYVER" \
      --implementation cp "${PLATFORMS[@]}" -d "$DEST" "$pin" 2>/dev/null ||
    "$VENV/bin/pip" wheel -q --no-deps -w "$DEST" "$pin"   # pure-Python sdists
done
rm -rf "$(dirname "$VENV")"
du -sh "$DEST"

#!/usr/bin/env bash
# strata's main job on a fresh Debian machine: install dependencies, fetch the default real models,
# build, and run the strata CLI on them.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-deps.sh
bash scripts/fetch-models.sh
cmake --preset default >/dev/null
cmake --build --preset default -j "$(nproc)"

strata=build/default/bin/strata
models="${STRATA_MODELS_DIR:-models}"
shared="${STRATA_SHARED_DATA:-../shared/data}"
"$strata" info
echo
"$strata" inspect "$models/smollm2-135m-instruct-q4_1.gguf"
echo
"$strata" inspect "$models/all-minilm-l6-v2/model.safetensors"
if [ -f "$shared/models/stories260K/stories260K.bin" ]; then
  echo
  "$strata" inspect "$shared/models/stories260K/stories260K.bin"
fi

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
out="${STRATA_OUT:-out}"
mkdir -p "$out"
"$strata" info
echo
# Compress SmolLM2-135M with the default GGUF recipe to the size of llama.cpp's uniform Q3_K, calibrated
# on State of the Union addresses and judged on a disjoint slice of Moby Dick; the report compares
# the dense, uniform and allocated models and draws the allocation and rate-distortion plots.
"$strata" compress "$models/smollm2-135m-instruct-q4_1.gguf" --preset gguf --sequences 16 --length 256 \
  --evolve --generations 10 --offspring 4 \
  --calib-text "$shared/corpora/sotu_1790-2021.txt" --eval-text "$shared/corpora/moby_dick.txt" \
  --out "$out/smollm2-135m-strata.gguf" --report "$out/report"

#!/usr/bin/env bash
# The whole test suite on a fresh Debian machine: install dependencies, fetch the real models the
# model tests use, configure, build, run CTest. Usage: scripts/run-tests.sh [preset] (default|asan).
set -euo pipefail
cd "$(dirname "$0")/.."
preset="${1:-default}"

bash scripts/install-deps.sh
if [ -x scripts/fetch-models.sh ]; then
  bash scripts/fetch-models.sh || echo "strata: model fetch failed; tests that need the models will skip"
fi
cmake --preset "$preset"
cmake --build --preset "$preset" -j "$(nproc)"
ctest --preset "$preset"

#!/usr/bin/env bash
# The GPU checks, for a machine with a CUDA device: every CUDA test (again under compute-sanitizer's
# memcheck where it is installed), then every GPU benchmark. Usage: scripts/run-cuda-checks.sh [build
# dir]; another directory than build/cuda must already hold the built binaries.
set -euo pipefail
cd "$(dirname "$0")/.."
dir="${1:-build/cuda}"
command -v nvidia-smi >/dev/null && nvidia-smi -L
sanitizer="$(command -v compute-sanitizer || ls /usr/local/cuda/bin/compute-sanitizer 2>/dev/null || true)"
shopt -s nullglob
# The default build directory is brought up to date here (configured first if it never was), so
# that a fresh GPU machine needs only this script and no binary is older than its sources.
if [ "$dir" = build/cuda ]; then
  targets=()
  for f in tests/cuda/*_test.cc; do targets+=("test_cuda_$(basename "$f" _test.cc)"); done
  for f in bench/cuda/bench_*.cc; do targets+=("$(basename "$f" .cc)"); done
  [ -f "$dir/build.ninja" ] || cmake --preset cuda
  cmake --build --preset cuda -j"$(nproc)" --target "${targets[@]}"
fi
tests=("$dir"/tests/cuda/test_cuda_*)
benches=("$dir"/bench/bench_cuda_*)
[ ${#tests[@]} -gt 0 ] || { echo "no CUDA tests under $dir/tests/cuda: build the cuda preset first" >&2; exit 1; }
for t in "${tests[@]}"; do
  case "$t" in *.cmake) continue ;; esac
  echo "== $t"
  "$t"
  if [ -n "$sanitizer" ]; then
    echo "== $t under compute-sanitizer memcheck"
    "$sanitizer" --tool memcheck --error-exitcode 1 "$t"
  fi
done
for b in "${benches[@]}"; do
  echo "== $b"
  "$b"
done

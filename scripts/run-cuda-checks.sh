#!/usr/bin/env bash
# The GPU checks, for a machine with a CUDA device: every CUDA test (again under compute-sanitizer's
# memcheck where it is installed), then every GPU benchmark. Build first with the cuda preset
# (cmake --preset cuda && cmake --build --preset cuda). Usage: scripts/run-cuda-checks.sh [build dir]
set -euo pipefail
cd "$(dirname "$0")/.."
dir="${1:-build/cuda}"
command -v nvidia-smi >/dev/null && nvidia-smi -L
sanitizer="$(command -v compute-sanitizer || ls /usr/local/cuda/bin/compute-sanitizer 2>/dev/null || true)"
shopt -s nullglob
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

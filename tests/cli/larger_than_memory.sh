#!/usr/bin/env bash
# The pipeline on a model several times larger than the memory the process may allocate: a synthetic
# Llama GGUF of 2.4 GB of F32 weights (48 blocks), compressed block by block under a 900 MiB limit on the
# process's data segment (heap and private writable mappings; the memory-mapped model file is not
# counted, as it is page cache the kernel can drop). The limit counts address space reserved too
# (OpenBLAS's buffers, thread stacks: about 200 MiB before any work) and the compressed model, which is
# held whole until it is written (350 MiB here). Usage: larger_than_memory.sh STREAM_CHECK
set -euo pipefail
check="$1"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
free_kib=$(df -Pk "$work" | awk 'NR == 2 {print $4}')
if [ "$free_kib" -lt $((3 * 1024 * 1024)) ]; then
  echo "skipped: the 2.4 GB model needs 3 GiB free in $(dirname "$work"), there are $((free_kib / 1024)) MiB"
  exit 77
fi
"$check" write "$work/big.gguf" 1024 2816 48
size=$(stat -c %s "$work/big.gguf")
limit=$((900 * 1024 * 1024))
echo "model file: $((size / 1048576)) MiB; data-size limit: $((limit / 1048576)) MiB"
[ "$size" -gt $((limit * 2)) ] || { echo "FAIL: the model is not larger than twice the limit"; exit 1; }
prlimit --data=$limit "$check" compress "$work/big.gguf" "$work/out.gguf"
[ -s "$work/out.gguf" ] || { echo "FAIL: no output"; exit 1; }
echo "output: $(($(stat -c %s "$work/out.gguf") / 1048576)) MiB"

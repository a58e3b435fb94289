#!/usr/bin/env bash
# llama.cpp importance matrices through the CLI on SmolLM2: strata calibrate --imatrix-out writes
# both layouts; strata compress --imatrix refuses, before calibrating, a truncated file and one made
# for another model (naming the first mismatching tensor), leaving no output behind.
# Usage: imatrix_cli.sh STRATA MODELS_DIR SHARED_DIR
set -uo pipefail
strata="$1"; models="$2"; shared="$3"
smol="$models/smollm2-135m-instruct-q4_1.gguf"
sotu="$shared/corpora/sotu_1790-2021.txt"
if [ ! -f "$smol" ] || [ ! -f "$sotu" ] || ! command -v python3 >/dev/null; then
  echo "skipped: needs $smol, $sotu and python3"; exit 77
fi
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
failures=0
fail() { echo "FAIL $*"; failures=$((failures + 1)); }

for ext in gguf dat; do
  if ! "$strata" calibrate "$smol" --text "$sotu" --slice 0:0.5 --sequences 2 --length 64 \
      --imatrix-out "$work/smol.$ext" > "$work/cal.txt" 2>&1; then
    fail "calibrate --imatrix-out $ext:"; cat "$work/cal.txt"
  fi
  [ -s "$work/smol.$ext" ] || fail "no $ext imatrix written"
done
grep -q "importance matrix: .* (210 entries" "$work/cal.txt" || { fail "calibrate did not report 210 entries"; cat "$work/cal.txt"; }

# A legacy imatrix whose first entry has 64 columns (another model's size).
python3 - "$work/other.dat" <<'PY'
import struct, sys
name = b"blk.0.attn_k.weight"
data = struct.pack("<i", 1) + struct.pack("<i", len(name)) + name + struct.pack("<ii", 1, 64) + struct.pack("<64f", *([1.0] * 64))
open(sys.argv[1], "wb").write(data + struct.pack("<ii", 1, 0))
PY
head -c 1000 "$work/smol.dat" > "$work/cut.dat"
expect_refusal() {  # FILE PATTERN
  if "$strata" compress "$smol" --imatrix "$1" --calib-text "$sotu" --no-eval --out "$work/out.gguf" > "$work/err.txt" 2>&1; then
    fail "--imatrix $1 accepted"
  elif ! grep -q "$2" "$work/err.txt"; then
    fail "--imatrix $1: message does not match '$2':"; cat "$work/err.txt"
  fi
  grep -q "calibrating" "$work/err.txt" && fail "--imatrix $1 refused only after calibrating"
  [ -e "$work/out.gguf" ] && fail "--imatrix $1 left an output file"
}
expect_refusal "$work/other.dat" "'blk.0.attn_k.weight' has 1 matrices of 64 columns"
expect_refusal "$work/cut.dat" "cut.dat: "
[ "$failures" -eq 0 ] && echo "ok" || exit 1

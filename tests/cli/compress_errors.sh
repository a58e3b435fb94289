#!/usr/bin/env bash
# strata compress must refuse bad requests early, with a message naming what is wrong, and leave
# no output file (nor a temporary one) behind. Usage: compress_errors.sh STRATA MODELS_DIR SHARED_DIR
set -uo pipefail
strata="$1"; models="$2"; shared="$3"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
smol="$models/smollm2-135m-instruct-q4_1.gguf"
sotu="$shared/corpora/sotu_1790-2021.txt"
moby="$shared/corpora/moby_dick.txt"
failures=0

# expect_refusal NAME PATTERN ARGS...: the command fails, its stderr matches PATTERN, and the
# work directory holds nothing but the inputs the case created.
expect_refusal() {
  local name="$1" pattern="$2"; shift 2
  local out="$work/out/$name.gguf"
  mkdir -p "$work/out"
  local start=$SECONDS
  if "$strata" compress "$@" --out "$out" --calib-text "$sotu" --eval-text "$moby" >"$work/$name.stdout" 2>"$work/$name.stderr"; then
    echo "FAIL $name: exit status 0"; failures=$((failures + 1)); return
  fi
  if ! grep -q -- "$pattern" "$work/$name.stderr"; then
    echo "FAIL $name: message does not match '$pattern':"; cat "$work/$name.stderr"; failures=$((failures + 1)); return
  fi
  if [ -n "$(ls -A "$work/out")" ]; then
    echo "FAIL $name: left files behind:"; ls -la "$work/out"; failures=$((failures + 1)); return
  fi
  echo "ok   $name ($((SECONDS - start)) s): $(tr '\n' ' ' < "$work/$name.stderr")"
}

printf 'GGUF\003\000\000\000garbage that is not a GGUF header' > "$work/corrupt.gguf"
expect_refusal corrupt_model "corrupt.gguf" "$work/corrupt.gguf"

printf '{"name": "typo", "rules": [{"match": "blk.*", "methods": ["quant.ggml"]}], "bits_per_weigth": 4}' > "$work/typo.json"
printf '{"name": "negative", "rules": [{"match": "blk.*", "methods": ["quant.ggml"]}], "bytes": -5}' > "$work/negative.json"
printf '{"name": "broken", "rules": [' > "$work/broken.json"
printf '{"name": "mixed", "rules": [{"match": "blk.*", "methods": ["quant.ggml", "lowrank.svdllm"]}], "bits_per_weight": 5}' > "$work/mixed.json"

if [ ! -f "$smol" ] || [ ! -f "$sotu" ]; then
  echo "SmolLM2 or the corpora are missing (scripts/fetch-models.sh, STRATA_SHARED_DATA): skipping the model cases"
  [ "$failures" -eq 0 ] && exit 77 || exit 1
fi
expect_refusal malformed_recipe_key "bits_per_weigth: unknown key" "$smol" --recipe "$work/typo.json"
expect_refusal malformed_recipe_value "bytes: budget must be > 0" "$smol" --recipe "$work/negative.json"
expect_refusal malformed_recipe_json "broken.json" "$smol" --recipe "$work/broken.json"
expect_refusal gguf_cannot_hold "which GGUF cannot hold" "$smol" --recipe "$work/mixed.json"
expect_refusal impossible_budget "is impossible" "$smol" --preset gguf --bpw 3.5
expect_refusal impossible_bytes "is impossible" "$smol" --preset gguf --bytes 1000
expect_refusal unknown_preset "gguf" "$smol" --preset nope
# Typos in requests are refused before the model is read, let alone calibrated (which takes minutes).
expect_quick_refusal() {
  local name="$1" start=$SECONDS
  expect_refusal "$@"
  if [ $((SECONDS - start)) -gt 20 ]; then
    echo "FAIL $name: took $((SECONDS - start)) s, not refused before the work"; failures=$((failures + 1))
  fi
}
expect_quick_refusal solver_typo "gredy" "$smol" --preset gguf --solver gredy
expect_quick_refusal like_unknown_type "q3_kk" "$smol" --preset gguf --like q3_kk
expect_quick_refusal like_unknown_method "quant.nope" "$smol" --preset gguf --like quant.nope:bits=3
expect_quick_refusal compare_unknown "q9_k" "$smol" --preset gguf --compare q2_k,q9_k
expect_quick_refusal error_without_cap "max" "$smol" --preset gguf --solver error
if [ -f "$shared/models/stories260K/stories260K.bin" ]; then
  expect_refusal no_tokenizer "no tokenizer" "$shared/models/stories260K/stories260K.bin" --preset gguf
fi
# A missing output directory is refused before the model is read.
if "$strata" compress "$smol" --preset gguf --calib-text "$sotu" --out "$work/missing/x.gguf" 2>"$work/dir.stderr"; then
  echo "FAIL missing_dir: exit status 0"; failures=$((failures + 1))
elif ! grep -q "does not exist" "$work/dir.stderr"; then
  echo "FAIL missing_dir:"; cat "$work/dir.stderr"; failures=$((failures + 1))
else
  echo "ok   missing_dir: $(cat "$work/dir.stderr")"
fi
[ "$failures" -eq 0 ]

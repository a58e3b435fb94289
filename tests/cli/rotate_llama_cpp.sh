#!/usr/bin/env bash
# strata rotate on SmolLM2, then llama.cpp (llama-cpp-python from scripts/install-llama-cpp.sh) runs
# the rotated GGUF: same logits as the folded, unrotated F32 file (1e-4 relative) and as strata's
# engine on the same file (mean KL < 1e-3, top-1 >= 99%). Skips (77) without the venv or the model.
# Usage: rotate_llama_cpp.sh STRATA MODELS_DIR SOURCE_DIR
set -uo pipefail
strata="$1"; models="$2"; src="$3"
py="$src/.cache/llama-cpp/bin/python"
smol="$models/smollm2-135m-instruct-q4_1.gguf"
if [ ! -x "$py" ] || ! "$py" -c "import llama_cpp, numpy" 2>/dev/null; then
  echo "skipped: needs llama-cpp-python in $src/.cache/llama-cpp (scripts/install-llama-cpp.sh)"; exit 77
fi
if [ ! -f "$smol" ]; then echo "skipped: needs $smol (scripts/fetch-models.sh)"; exit 77; fi
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
"$strata" rotate "$smol" --out "$work/rotated.gguf" --seed 1 --check-tokens 48 --check-out "$work/strata.bin" || exit 1
"$strata" rotate "$smol" --out "$work/folded.gguf" --fold-only --check-tokens 0 || exit 1
"$py" "$src/tests/cli/rotate_llama_cpp.py" "$work/rotated.gguf" "$work/folded.gguf" "$work/strata.bin"

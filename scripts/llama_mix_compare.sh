#!/usr/bin/env bash
# llama-quantize's own mix files against strata's allocation at the same bytes, both read by
# llama.cpp's forward pass (docs/ggml-quantization.md, "llama.cpp's mixes against the allocator"):
#   1. the importance strata calibrates (SOTU 0:0.5, 32 x 512 tokens) as a llama.cpp imatrix file;
#   2. per file type, llama.cpp's quantizer writes its mix with that imatrix (from the Q4_1 file);
#   3. strata compress writes its allocation at the bytes of the same mix (recipe gguf-no-grid:
#      no q4_1 / q5_1, the types SmolLM2's weights sit on exactly);
#   4. llama.cpp computes perplexity and KL to the original file on Moby-Dick 0.9:1.0 for both.
# Usage: scripts/llama_mix_compare.sh BUILD_DIR OUT_DIR [TYPES (default "Q2_K Q3_K_M")]
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build=${1:?usage: llama_mix_compare.sh BUILD_DIR OUT_DIR [TYPES]}
out=${2:?usage: llama_mix_compare.sh BUILD_DIR OUT_DIR [TYPES]}
types=${3:-Q2_K Q3_K_M}
model=${STRATA_MODELS_DIR:-$repo/models}/smollm2-135m-instruct-q4_1.gguf
data=${STRATA_SHARED_DATA:-$repo/../shared/data}/corpora
python=$(bash "$repo/scripts/install-llama-cpp.sh")
eval_py="$python $repo/scripts/llama_cpp_eval.py"
mkdir -p "$out"

[[ -f $out/imatrix.dat ]] || "$build/examples/llama_mix_imatrix" --model "$model" --calib "$data/sotu_1790-2021.txt" \
  --calib-slice 0:0.5 --sequences 32 --length 512 --out "$out/imatrix.dat"
for t in $types; do
  $eval_py quantize --allow-requantize --model "$model" --out "$out/llama_$t.gguf" --type "$t" \
    --imatrix "$out/imatrix.dat" 2>/dev/null >/dev/null
  table=()
  [[ -f $out/table.json ]] && table=(--table-in "$out/table.json") || table=(--table "$out/table.json")
  "$build/bin/strata" compress "$model" --recipe "$repo/examples/recipes/gguf-no-grid.json" --like "$t" \
    --calib-text "$data/sotu_1790-2021.txt" --calib-slice 0:0.5 --sequences 32 --length 512 --no-eval \
    "${table[@]}" --out "$out/strata_$t.gguf" > "$out/strata_$t.log"
  for f in llama strata; do
    $eval_py eval --model "$out/${f}_$t.gguf" --reference "$model" --text "$data/moby_dick.txt" --slice 0.9:1.0 \
      --eval-tokens 2048 --context 512 > "$out/${f}_$t.json"
  done
  "$python" - "$out" "$t" <<'EOF'
import json, os, sys
out, t = sys.argv[1], sys.argv[2]
r = {f: json.load(open(os.path.join(out, "%s_%s.json" % (f, t)))) for f in ("llama", "strata")}
b = {f: os.path.getsize(os.path.join(out, "%s_%s.gguf" % (f, t))) for f in ("llama", "strata")}
for f in ("llama", "strata"):
    print("%s %-6s file %10d bytes  perplexity %8.3f (reference %.3f)  mean KL %.5f  top-1 %.4f" % (
        t, f, b[f], r[f]["perplexity"], r[f]["reference_perplexity"], r[f]["mean_kl"], r[f]["top1_agreement"]))
print("%s strata / llama.cpp: bytes %.4f, KL %.3f" % (t, b["strata"] / b["llama"], r["strata"]["mean_kl"] / r["llama"]["mean_kl"]))
EOF
done

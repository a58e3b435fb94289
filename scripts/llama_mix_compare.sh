#!/usr/bin/env bash
# llama-quantize's own mix files against strata's allocation at the same bytes, all read by
# llama.cpp's forward pass (docs/ggml-quantization.md, "llama.cpp's mixes against the allocator"):
#   1. the importance strata calibrates (SOTU 0:0.5, 32 x 512 tokens) as a llama.cpp imatrix file;
#   2. per file type, llama.cpp's quantizer writes its mix with that imatrix (from the Q4_1 file);
#   3. strata compress writes its allocations at the bytes of that file's quantized tensors, one per
#      variant:
#        strata    allocation alone (recipe gguf-no-grid: no q4_1 / q5_1, the types SmolLM2's weights
#                  sit on exactly)
#        gptq      allocation whose menu also holds GPTQ into the same ggml types (gguf-no-grid-gptq)
#        rot       the residual-rotated model (strata rotate, Hadamard seed 0), allocation alone
#        rot_gptq  the rotated model, allocation with the GPTQ options
#      The rotated model carries its own output head (the folded final norm unties it), which the
#      same bytes must pay for;
#   4. llama.cpp computes perplexity and KL to the original file on Moby-Dick 0.9:1.0 for every file.
# Usage: scripts/llama_mix_compare.sh BUILD_DIR OUT_DIR [TYPES (default "Q2_K Q3_K_M")]
#                                     [VARIANTS (default "strata")]
# Files already in OUT_DIR (imatrix, rotated model, tables, written files, evaluations) are reused.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
usage="usage: llama_mix_compare.sh BUILD_DIR OUT_DIR [TYPES] [VARIANTS]"
build=${1:?$usage}
out=${2:?$usage}
types=${3:-Q2_K Q3_K_M}
variants=${4:-strata}
model=${STRATA_MODELS_DIR:-$repo/models}/smollm2-135m-instruct-q4_1.gguf
data=${STRATA_SHARED_DATA:-$repo/../shared/data}/corpora
for v in $variants; do
  case $v in
    strata | gptq | rot | rot_gptq) ;;
    *) echo "llama_mix_compare.sh: unknown variant '$v' (known: strata gptq rot rot_gptq)" >&2; exit 2 ;;
  esac
done
python=$(bash "$repo/scripts/install-llama-cpp.sh")
eval_py="$python $repo/scripts/llama_cpp_eval.py"
mkdir -p "$out"

[[ -f $out/imatrix.dat ]] || "$build/examples/llama_mix_imatrix" --model "$model" --calib "$data/sotu_1790-2021.txt" \
  --calib-slice 0:0.5 --sequences 32 --length 512 --out "$out/imatrix.dat"
if [[ " $variants " == *" rot"* && ! -f $out/rotated.gguf ]]; then
  "$build/bin/strata" rotate "$model" --out "$out/rotated.gguf" > "$out/rotate.log"
fi

# Bytes of a GGUF file's quantized tensors (all but the F32 norms): the budget of every variant.
quantized_bytes() {
  "$python" - "$1" <<'PY'
import sys
from gguf import GGUFReader, GGMLQuantizationType
r = GGUFReader(sys.argv[1])
print(sum(int(t.n_bytes) for t in r.tensors if t.tensor_type != GGMLQuantizationType.F32))
PY
}

for t in $types; do
  [[ -f $out/llama_$t.gguf ]] || $eval_py quantize --allow-requantize --model "$model" --out "$out/llama_$t.gguf" \
    --type "$t" --imatrix "$out/imatrix.dat" 2>/dev/null >/dev/null
  bytes=$(quantized_bytes "$out/llama_$t.gguf")
  for v in $variants; do
    [[ -f $out/${v}_$t.gguf ]] && continue
    case $v in
      strata) recipe=gguf-no-grid src=$model ;;
      gptq) recipe=gguf-no-grid-gptq src=$model ;;
      rot) recipe=gguf-no-grid src=$out/rotated.gguf ;;
      rot_gptq) recipe=gguf-no-grid-gptq src=$out/rotated.gguf ;;
    esac
    table=(--table "$out/table_$v.json")
    [[ -f $out/table_$v.json ]] && table=(--table-in "$out/table_$v.json")
    "$build/bin/strata" compress "$src" --recipe "$repo/examples/recipes/$recipe.json" --bytes "$bytes" \
      --calib-text "$data/sotu_1790-2021.txt" --calib-slice 0:0.5 --sequences 32 --length 512 --no-eval \
      "${table[@]}" --out "$out/${v}_$t.gguf" > "$out/${v}_$t.log"
  done
  for f in llama $variants; do
    [[ -f $out/${f}_$t.json ]] || $eval_py eval --model "$out/${f}_$t.gguf" --reference "$model" \
      --text "$data/moby_dick.txt" --slice 0.9:1.0 --eval-tokens 2048 --context 512 > "$out/${f}_$t.json"
  done
  "$python" - "$out" "$t" "$bytes" llama $variants <<'PY'
import json, os, sys
out, t, budget, files = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4:]
r = {f: json.load(open(os.path.join(out, "%s_%s.json" % (f, t)))) for f in files}
b = {f: os.path.getsize(os.path.join(out, "%s_%s.gguf" % (f, t))) for f in files}
print("%s: quantized tensors of llama.cpp's file %d bytes (the budget); reference perplexity %.3f" % (
    t, budget, r["llama"]["reference_perplexity"]))
print("%-6s %-9s %11s %8s %10s %9s %7s %9s %9s" % ("type", "file", "file bytes", "/llama", "perplexity", "mean KL",
                                                   "top-1", "KL/llama", "KL/strata"))
for f in files:
    kl = r[f]["mean_kl"]
    vs_alloc = "%9.3f" % (kl / r["strata"]["mean_kl"]) if "strata" in r else "%9s" % "-"
    print("%-6s %-9s %11d %8.4f %10.3f %9.5f %7.4f %9.3f %s" % (
        t, f, b[f], b[f] / b["llama"], r[f]["perplexity"], kl, r[f]["top1_agreement"], kl / r["llama"]["mean_kl"],
        vs_alloc))
PY
done

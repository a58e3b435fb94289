#!/usr/bin/env bash
# Builds strata's libFuzzer targets (the "fuzz" CMake preset: clang, ASan + UBSan, the library
# instrumented too) and runs each for a while, seeded from committed seeds and from real files.
#
# Usage: scripts/run-fuzzers.sh [SECONDS_PER_FUZZER] [FUZZER...]
#   SECONDS_PER_FUZZER  default 60
#   FUZZER              names without the fuzz_ prefix (gguf, safetensors, llama2c); default: all
# Environment: JOBS (build parallelism, default 2), MAX_LEN (largest input in bytes, default 65536),
#   STRATA_MODELS_DIR / STRATA_SHARED_DATA (where the real files are looked for).
# Corpora grow across runs in build/fuzz/corpus/NAME; a crash leaves its input in
# build/fuzz/artifacts/ and makes the script exit non-zero.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
seconds=${1:-60}
shift || true
[[ $seconds =~ ^[0-9]+$ ]] || { echo "run-fuzzers: error: SECONDS must be a whole number, got '$seconds'" >&2; exit 2; }
jobs=${JOBS:-2}
max_len=${MAX_LEN:-65536}
models=${STRATA_MODELS_DIR:-$repo/models}
shared=${STRATA_SHARED_DATA:-$repo/../shared/data}
build=$repo/build/fuzz

die() { echo "run-fuzzers: error: $*" >&2; exit 1; }
command -v clang++ > /dev/null || die "clang++ not found (libFuzzer needs clang)"

cd "$repo"
mkdir -p "$repo/build"
cmake --preset fuzz > "$repo/build/fuzz-configure.log" 2>&1 ||
  die "configuring the fuzz preset failed; see build/fuzz-configure.log"
cmake --build --preset fuzz --target fuzzers -j "$jobs" || die "building the fuzzers failed"

# ---- seeds derived from real files (written once per corpus folder; small by construction) ----------
seed_dir() { echo "$build/seeds/$1"; }
mkdir -p "$build/seeds"

derive_safetensors_seeds() {
  local out
  out=$(seed_dir safetensors)
  mkdir -p "$out"
  cp -f "$repo"/tests/data/safetensors/*.safetensors "$out"/ 2>/dev/null || true
  local minilm=$models/all-minilm-l6-v2/model.safetensors
  if [[ -f $minilm ]]; then
    # The real header with the data cut off, and cut inside the JSON: both must fail cleanly.
    python3 - "$minilm" "$out" <<'EOF'
import struct, sys
src, out = sys.argv[1:3]
with open(src, "rb") as f:
    head = f.read(8)
    n = struct.unpack("<Q", head)[0]
    header = f.read(n)
open(out + "/minilm_header_only.safetensors", "wb").write(head + header)
open(out + "/minilm_header_cut.safetensors", "wb").write(head + header[: n // 2])
EOF
  fi
  local stories=$shared/models/stories260K/stories260K.bin
  if [[ -f $stories ]]; then
    # A valid safetensors file holding stories260K's RMSNorm weights (the small tensors).
    python3 - "$stories" "$out/stories260k_norms.safetensors" <<'EOF'
import json, struct, sys
src, dst = sys.argv[1:3]
b = open(src, "rb").read()
dim, hidden, layers, heads, kv, vocab, seq = struct.unpack("<7i", b[:28])
kv_dim = dim * kv // heads
f = 4
pos = 28 + abs(vocab) * dim * f
tensors = []
for l in range(layers):
    tensors.append((f"blk.{l}.attn_norm.weight", b[pos + l * dim * f: pos + (l + 1) * dim * f]))
pos += layers * dim * f + layers * (2 * dim * dim + 2 * kv_dim * dim) * f
for l in range(layers):
    tensors.append((f"blk.{l}.ffn_norm.weight", b[pos + l * dim * f: pos + (l + 1) * dim * f]))
pos += layers * dim * f + 3 * layers * hidden * dim * f
tensors.append(("output_norm.weight", b[pos: pos + dim * f]))
tensors.sort(key=lambda t: t[0])
header, data, off = {"__metadata__": {"source": "stories260K"}}, b"", 0
for name, raw in tensors:
    header[name] = {"dtype": "F32", "shape": [dim], "data_offsets": [off, off + len(raw)]}
    off += len(raw)
    data += raw
j = json.dumps(header, separators=(",", ":")).encode()
j += b" " * ((8 - len(j) % 8) % 8)
open(dst, "wb").write(struct.pack("<Q", len(j)) + j + data)
EOF
  fi
}

derive_gguf_seeds() {
  local out
  out=$(seed_dir gguf)
  mkdir -p "$out"
  local smol=$models/smollm2-135m-instruct-q4_1.gguf
  if [[ -f $smol ]]; then
    # The real header up to MAX_LEN: metadata and the start of the tokenizer arrays, then truncation.
    head -c "$max_len" "$smol" > "$out/smollm2_head.gguf"
    head -c 4096 "$smol" > "$out/smollm2_head4k.gguf"
  fi
  local stories=$shared/models/stories260K/stories260K.bin
  if [[ -f $stories ]]; then
    # A valid GGUF v3 file with stories260K's hyper-parameters and its RMSNorm weights as F32 tensors.
    python3 - "$stories" "$out/stories260k_norms.gguf" <<'EOF'
import struct, sys
src, dst = sys.argv[1:3]
b = open(src, "rb").read()
dim, hidden, layers, heads, kv, vocab, seq = struct.unpack("<7i", b[:28])
kv_dim = dim * kv // heads
f = 4
def s(x): x = x.encode(); return struct.pack("<Q", len(x)) + x
kvs = [("general.architecture", 8, s("llama")), ("general.name", 8, s("stories260K")),
       ("llama.block_count", 4, struct.pack("<I", layers)), ("llama.embedding_length", 4, struct.pack("<I", dim)),
       ("llama.feed_forward_length", 4, struct.pack("<I", hidden)), ("llama.attention.head_count", 4, struct.pack("<I", heads)),
       ("llama.attention.head_count_kv", 4, struct.pack("<I", kv)), ("llama.context_length", 4, struct.pack("<I", seq)),
       ("llama.attention.layer_norm_rms_epsilon", 6, struct.pack("<f", 1e-5)),
       ("general.alignment", 4, struct.pack("<I", 32))]
pos = 28 + abs(vocab) * dim * f
tensors = [(f"blk.{l}.attn_norm.weight", b[pos + l * dim * f: pos + (l + 1) * dim * f]) for l in range(layers)]
pos += layers * dim * f + layers * (2 * dim * dim + 2 * kv_dim * dim) * f
tensors += [(f"blk.{l}.ffn_norm.weight", b[pos + l * dim * f: pos + (l + 1) * dim * f]) for l in range(layers)]
pos += layers * dim * f + 3 * layers * hidden * dim * f
tensors.append(("output_norm.weight", b[pos: pos + dim * f]))
out = b"GGUF" + struct.pack("<IQQ", 3, len(tensors), len(kvs))
for k, t, v in kvs:
    out += s(k) + struct.pack("<I", t) + v
off = 0
for name, raw in tensors:
    out += s(name) + struct.pack("<I", 1) + struct.pack("<Q", dim) + struct.pack("<I", 0) + struct.pack("<Q", off)
    off += (len(raw) + 31) // 32 * 32
out += b"\0" * ((32 - len(out) % 32) % 32)
for name, raw in tensors:
    out += raw + b"\0" * ((32 - len(raw) % 32) % 32)
open(dst, "wb").write(out)
EOF
  fi
}

derive_safetensors_seeds
derive_gguf_seeds

# ---- run ---------------------------------------------------------------------------------------------
mapfile -t binaries < <(find "$build/fuzz" -maxdepth 1 -type f -name 'fuzz_*' -perm -u+x | sort)
(( ${#binaries[@]} > 0 )) || die "no fuzz_* binaries in $build/fuzz"
wanted=("$@")

mkdir -p "$build/artifacts" "$build/logs"
summary=()
failed=0
for bin in "${binaries[@]}"; do
  name=$(basename "$bin")
  name=${name#fuzz_}
  if (( ${#wanted[@]} > 0 )) && [[ ! " ${wanted[*]} " == *" $name "* ]]; then continue; fi
  corpus=$build/corpus/$name
  mkdir -p "$corpus"
  dirs=("$corpus")
  [[ -d $repo/tests/fuzz/corpus/$name ]] && dirs+=("$repo/tests/fuzz/corpus/$name")
  [[ -d $(seed_dir "$name") ]] && dirs+=("$(seed_dir "$name")")
  log=$build/logs/$name.log
  echo "run-fuzzers: fuzz_$name for ${seconds}s (max_len $max_len; seeds: ${dirs[*]:1})"
  status=ok
  # -max_total_time bounds the whole run; -timeout flags a single input that hangs.
  if ! "$bin" -max_total_time="$seconds" -max_len="$max_len" -timeout=10 -print_final_stats=1 \
      -artifact_prefix="$build/artifacts/$name-" "${dirs[@]}" > "$log" 2>&1; then
    status="FAILED (see $log and $build/artifacts/)"
    failed=1
  fi
  # A run that dies early prints fewer statistics: a missing figure is "?", not an error.
  runs=$(grep -oE 'stat::number_of_executed_units: +[0-9]+' "$log" | tail -1 | awk '{print $2}' || true)
  rate=$(grep -oE 'stat::average_exec_per_sec: +[0-9]+' "$log" | tail -1 | awk '{print $2}' || true)
  cov=$(grep -oE 'cov: [0-9]+' "$log" | tail -1 | awk '{print $2}' || true)
  files=$(find "$corpus" -type f | wc -l)
  summary+=("$(printf '%-12s %12s runs %8s exec/s  cov %6s  corpus %5s  %s' "$name" "${runs:-?}" "${rate:-?}" \
    "${cov:-?}" "$files" "$status")")
done

echo
echo "run-fuzzers: summary (${seconds}s each)"
printf '  %s\n' "${summary[@]}"
exit $failed

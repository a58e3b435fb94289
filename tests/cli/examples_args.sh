#!/usr/bin/env bash
# The evaluation examples' command lines: calibration text that overlaps the evaluation text is
# refused before the model is read, however the one file's two paths are spelled; kv_generate refuses
# the calibration options it has no use for; the command lines docs/ shows still parse.
# Usage: examples_args.sh EXAMPLES_DIR SHARED_DIR (STRATA_SHARED_DATA wins, as it does for the examples'
# default texts).
set -uo pipefail
bin="$1"; shared="${STRATA_SHARED_DATA:-$2}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
moby="$shared/corpora/moby_dick.txt"
failures=0

if [ ! -f "$moby" ] || [ ! -f "$shared/corpora/sotu_1790-2021.txt" ]; then
  echo "the corpora are missing (STRATA_SHARED_DATA): skipping"
  exit 77
fi
# A model file that fails as soon as it is opened: a case that reaches it got through every check of
# its options and texts, and nothing waits on a real model.
printf 'not a model\n' > "$work/not-a-model.gguf"
bogus="$work/not-a-model.gguf"
ln -s "$moby" "$work/linked.txt"

# run NAME EXAMPLE ARGS...: runs the example (20 s at most) into $work/NAME.{stdout,stderr}, sets $rc
# and $took.
run() {
  local name="$1" example="$2"; shift 2
  local start=$SECONDS
  timeout 20 "$bin/$example" "$@" >"$work/$name.stdout" 2>"$work/$name.stderr"
  rc=$?
  took=$((SECONDS - start))
}
fail() { echo "FAIL $1: $2"; cat "$work/$1.stderr"; failures=$((failures + 1)); }

# expect_refusal NAME PATTERN EXAMPLE ARGS...: a non-zero exit within seconds, stderr matching PATTERN.
expect_refusal() {
  local name="$1" pattern="$2"; shift 2
  run "$name" "$@"
  if [ "$rc" -eq 0 ]; then fail "$name" "exit status 0"; return; fi
  if [ "$rc" -eq 124 ]; then fail "$name" "still running after 20 s: not refused before the model was read"; return; fi
  if ! grep -q -- "$pattern" "$work/$name.stderr"; then fail "$name" "message does not match '$pattern'"; return; fi
  if [ "$took" -gt 5 ]; then fail "$name" "took $took s"; return; fi
  echo "ok   $name: $(head -c 300 "$work/$name.stderr" | tr '\n' ' ')"
}

# expect_parsed NAME EXAMPLE ARGS...: the options are accepted and the texts pass their checks; the
# run stops at the bogus model, which the message names.
expect_parsed() {
  local name="$1"; shift
  run "$name" "$@" --model "$bogus"
  if [ "$rc" -eq 0 ]; then fail "$name" "exit status 0 with a bogus model"; return; fi
  if ! grep -q "not-a-model.gguf" "$work/$name.stderr"; then fail "$name" "did not get as far as the model"; return; fi
  echo "ok   $name"
}

for example in quant_eval ggml_imatrix_eval lowrank_eval prune_eval; do
  expect_refusal "${example}_overlap_dotdot" "overlaps evaluation text" "$example" \
    --calib "$moby" --calib-slice 0.5:0.95 --eval "$shared/corpora/../corpora/moby_dick.txt" --eval-slice 0.9:1.0
  # Disjoint slices of the same two spellings are fine.
  expect_parsed "${example}_disjoint_dotdot" "$example" \
    --calib "$moby" --calib-slice 0:0.5 --eval "$shared/corpora/../corpora/moby_dick.txt" --eval-slice 0.9:1.0
done
expect_refusal quant_eval_overlap_symlink "overlaps evaluation text" quant_eval \
  --calib "$work/linked.txt" --calib-slice 0:0.5 --eval "$moby" --eval-slice 0.4:0.6
expect_refusal quant_eval_overlap_relative "overlaps evaluation text" quant_eval \
  --calib "$(realpath --relative-to=. "$moby")" --calib-slice 0:1 --eval "$moby"

# kv_generate calibrates nothing: every calibration option is refused, not silently ignored.
for option in "--calib $moby" "--calib-slice 0:0.5" "--sequences 4" "--length 64" "--eval-tokens 100"; do
  # shellcheck disable=SC2086
  expect_refusal "kv_generate_refuses_${option%% *}" "${option%% *}" kv_generate $option
done

# The command lines of docs/ (their model replaced by the bogus one).
expect_parsed docs_kv_generate kv_generate --eval-slice 0.9:0.93 --prompt-tokens 512 --score-next 64 --passages 4 \
  -n 0 --scorer snapkv --policy uniform --budget 128
expect_parsed docs_prune_eval prune_eval --sequences 32 --patterns "" --blocks ""
expect_parsed docs_lowrank_eval lowrank_eval --keep 0.9,0.95
expect_parsed docs_ggml_imatrix_eval ggml_imatrix_eval
expect_parsed docs_kv_quant_eval kv_quant_eval

# kv_format_eval's allocation: budgets, menu and calibration text checked before the model is read.
expect_refusal kv_format_eval_bits_below "--kv-bits" kv_format_eval --kv-bits 2.5
expect_refusal kv_format_eval_bits_negative "--kv-bits" kv_format_eval --kv-bits=-4
expect_refusal kv_format_eval_menu "--menu" kv_format_eval --kv-bits 4 --menu q4_0,q5_0
expect_refusal kv_format_eval_overlap "overlaps evaluation text" kv_format_eval --kv-bits 4 \
  --calib "$work/linked.txt" --calib-slice 0.75:0.9
expect_parsed docs_kv_format_eval_alloc kv_format_eval --windows 2 --steps 64 --formats q4_0,kivi4,kivi2 \
  --kv-bits 3.5,4.5,5 --tables-out "$work/tables.json"
# prefill_prune_eval: slices, pruning settings and names checked before the model is read.
expect_refusal prefill_prune_eval_overlap "overlaps --report-slice" prefill_prune_eval --tune-slice 0.75:0.85
expect_refusal prefill_prune_eval_drop "steps\[0\].drop = 1" prefill_prune_eval --fractions 0.5,1
expect_refusal prefill_prune_eval_window "window = 0" prefill_prune_eval --window 0
expect_refusal prefill_prune_eval_score "--score" prefill_prune_eval --score max
expect_parsed docs_prefill_prune_eval prefill_prune_eval
expect_parsed docs_prefill_prune_eval_tasks prefill_prune_eval --passages 0 --no-tune --score window --pool 5 \
  --tasks 4 --fractions 0.5 --merge-fractions ""
expect_parsed docs_quant_eval quant_eval --no-minilm --no-grid-check --calib-cache "$work/cache.bin" --configs 3:128 \
  --methods rtn,rtn_clip,quant.gptq:act_order+clip=0+damp=0.1,gptq_natural,gptq@seq5
# The tuning- and report-slice commands of docs/quantization.md, pruning.md and lowrank.md.
expect_parsed docs_quant_eval_report quant_eval --no-minilm --no-grid-check --calib-cache "$work/cache.bin" \
  --eval-slice 0.7:0.8 --eval-tokens 4096 --configs 4:128,3:128 --methods rtn,rtn_clip_w,gptq
expect_parsed docs_prune_eval_tuning prune_eval --eval-slice 0.8:0.9 --eval-tokens 2048 --patterns "" --blocks "" \
  --ffn 0.1,0.25 --ffn-damp 0.01,0.03,0.1,0.3,1
expect_parsed docs_prune_eval_report prune_eval --eval-slice 0.7:0.8 --eval-tokens 4096 --patterns 0.5,2:4 \
  --methods magnitude,wanda,sparsegpt --ffn 0.1,0.25 --ffn-damp 0.2 --blocks ""
expect_parsed docs_lowrank_eval_report lowrank_eval --eval-slice 0.7:0.8 --eval-tokens 4096 --keep 0.9,0.95
expect_refusal prune_eval_bad_ffn_damp "--ffn-damp" prune_eval --ffn-damp 0.1,much
expect_refusal prune_eval_negative_ffn_damp "--ffn-damp" prune_eval --ffn-damp 0.1,-1
# A malformed list item is refused by the parser.
expect_refusal prune_eval_bad_blocks "--blocks" prune_eval --blocks 1,two
expect_refusal quant_eval_bad_configs "--configs" quant_eval --configs 4-128

[ "$failures" -eq 0 ] && echo "all passed" || echo "$failures failed"
[ "$failures" -eq 0 ]

#!/usr/bin/env bash
# strata kv-eval end to end at a tiny size on SmolLM2: every section runs, the report holds a row
# for every policy and budget with finite KL, the summary tables are there; bad settings are refused
# with a message naming them; a report directory named with shell syntax is only a name; the default
# model and text follow STRATA_MODELS_DIR and STRATA_SHARED_DATA. Usage: kv_eval_smoke.sh STRATA MODELS_DIR SHARED_DIR
set -uo pipefail
strata="$1"; models="$2"; shared="$3"
smol="$models/smollm2-135m-instruct-q4_1.gguf"
moby="$shared/corpora/moby_dick.txt"
if [ ! -f "$smol" ] || [ ! -f "$moby" ]; then
  echo "skipped: needs $smol (scripts/fetch-models.sh) and $moby"; exit 77
fi
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
failures=0
fail() { echo "FAIL $*"; failures=$((failures + 1)); }

common=(--model "$smol" --text "$moby" -P 96 -D 3 --windows 2 --sinks 2 --recent 4 --probe 4)
# The report directory's name is full of shell syntax: it must be taken as a name, never run. Any
# command it smuggled in would create a pwned* file in the working directory ($work).
name="it's; touch pwned1; \$(touch pwned2) \`touch pwned3\` \"q\" | touch pwned4 &"
report="$work/$name"
if ! (cd "$work" && "$strata" kv-eval "${common[@]}" --budgets 0.25,0.5 --scorers tova,chunkkv \
    --policies uniform,adakv,allocated --recent-share 0,0.5 --needle-tokens 160 --depths 0.2,0.8 \
    --needle-budgets 0.5 --needle-scorers chunkkv --layer-budget 0.3 --report "$name") > "$work/out.txt" 2>&1; then
  fail "kv-eval exited with an error:"; cat "$work/out.txt"
else
  for f in report.md report.json kl_vs_budget.dat kl_vs_budget.gp layer_error.dat layer_error.gp; do
    [ -s "$report/$f" ] || fail "missing $f"
  done
  if command -v gnuplot > /dev/null; then
    for f in kl_vs_budget.png layer_error.png; do
      [ -s "$report/$f" ] || { fail "gnuplot did not render $f:"; cat "$report/gnuplot.log"; }
    done
  fi
  pwned="$(find "$work" -name 'pwned*' | head -3)"
  [ -z "$pwned" ] && echo "ok   a report directory named $name runs nothing" || fail "the report name ran commands: $pwned"
  ls "$report" | grep -q '\.tmp-' && fail "temporary files left in the report directory"
  for title in "Decode-time KL" "Against StreamingLLM" "Needle retrieval" "Needle: the best policy" \
               "Attention-output error over layers"; do
    grep -q "$title" "$report/report.md" || fail "report.md has no '$title' table"
  done
  # 1 StreamingLLM + 2 scorers x 2 windows x 3 policies = 13 policies, x 2 budgets; 2 depths x
  # (full cache + StreamingLLM + 6 ChunkKV policies).
  python3 - "$report/report.json" <<'PY' || failures=$((failures + 1))
import json, math, sys
r = json.load(open(sys.argv[1]))
res = r["decode"]["results"]
assert len(res) == 26, f"{len(res)} decode rows, want 26"
assert all(math.isfinite(x["kl"]) and x["kl"] >= 0 for x in res), "a KL is not finite and >= 0"
assert r["decode"]["windows"] == 2 and r["decode"]["prefill"] == 96
assert len(r["decode"]["versus_streaming"]) == 2
assert len(r["needle"]["answers"]) == 16, f'{len(r["needle"]["answers"])} needle answers, want 16'
assert len(r["layers"]["errors"]) == 13, f'{len(r["layers"]["errors"])} layer columns, want 13'
print("ok   report.json: 26 decode rows, 16 needle answers, 13 layer columns")
PY
fi

# expect_refusal NAME PATTERN ARGS...
expect_refusal() {
  local name="$1" pattern="$2"; shift 2
  if "$strata" kv-eval "$@" --report "$work/refused" > "$work/$name.txt" 2>&1; then
    fail "$name: exit status 0"; return
  fi
  grep -q -- "$pattern" "$work/$name.txt" || { fail "$name: message does not match '$pattern':"; cat "$work/$name.txt"; return; }
  echo "ok   $name: $(grep -- "$pattern" "$work/$name.txt" | head -1)"
}
expect_refusal share "recent-share 1.5" "${common[@]}" --recent-share 1.5 --skip-needle --skip-layers
expect_refusal short_prompt "need P > sinks + recent" --model "$smol" --text "$moby" -P 5 --skip-needle --skip-layers
expect_refusal policy "policy 'pyramids'" "${common[@]}" --policies pyramids --skip-needle --skip-layers
expect_refusal scorer "h3o" "${common[@]}" --scorers h3o --skip-needle --skip-layers
expect_refusal overlap "overlaps" "${common[@]}" --calib-slice 0.5:0.6 --skip-needle --skip-layers
expect_refusal budget "budget 1.5" "${common[@]}" --budgets 0.2,1.5 --skip-needle --skip-layers
expect_refusal model "no-such.gguf" --model "$work/no-such.gguf" --text "$moby"
# Long-context tasks and generations: bad settings are refused before the model is read.
expect_refusal task "--tasks: kv tasks: task .needle." "${common[@]}" --tasks needle --skip-decode --skip-needle --skip-layers
expect_refusal vt_hops "vt hops" "${common[@]}" --tasks vt --vt-hops -1 --skip-decode --skip-needle --skip-layers
expect_refusal task_budget "task-budgets 2" "${common[@]}" --tasks qa --task-budgets 2 --skip-decode --skip-needle --skip-layers
expect_refusal gen_every "gen-every 0" "${common[@]}" --gen-sequences 1 --gen-every 0 --skip-decode --skip-needle --skip-layers
expect_refusal gen_allocated_overlap "overlaps --gen-slice" "${common[@]}" --gen-sequences 1 --gen-policies allocated \
  --gen-slice 0.15:0.25 --skip-decode --skip-needle --skip-layers
# Without --model / --text the defaults come from STRATA_MODELS_DIR and STRATA_SHARED_DATA.
STRATA_MODELS_DIR="$work/models-here" expect_refusal models_dir "$work/models-here/smollm2-135m-instruct-q4_1.gguf" \
  --text "$moby"
STRATA_SHARED_DATA="$work/data-here" expect_refusal shared_dir "$work/data-here/corpora/moby_dick.txt" --model "$smol"
printf 'GGUF\003\000\000\000not a header' > "$work/corrupt.gguf"
expect_refusal corrupt "corrupt.gguf" --model "$work/corrupt.gguf" --text "$moby"

[ "$failures" -eq 0 ] || { echo "$failures failure(s)"; exit 1; }
echo "all ok"

#!/usr/bin/env bash
# ensure_fast_blas sets what the environment lacks for BLAS-heavy work, and leaves what the user set
# alone: idle OpenMP and OpenBLAS threads sleep instead of spinning against each other, after a
# short spin of strata's own threads between back-to-back parallel loops.
# Usage: thread_env.sh STRATA
set -uo pipefail
strata="$1"
failures=0
check() {  # check NAME PATTERN ENV...: `strata info` run under ENV prints PATTERN on its BLAS line
  local name="$1" pattern="$2"; shift 2
  local line
  line="$(env "$@" "$strata" info | grep '^BLAS')"
  if grep -q -- "$pattern" <<<"$line"; then echo "ok   $name: $line"; else echo "FAIL $name: $line"; failures=$((failures + 1)); fi
}
check unset_gets_passive "OMP_WAIT_POLICY=passive" -u OMP_WAIT_POLICY -u OPENBLAS_THREAD_TIMEOUT -u GOMP_SPINCOUNT
check unset_gets_timeout "OPENBLAS_THREAD_TIMEOUT=4" -u OMP_WAIT_POLICY -u OPENBLAS_THREAD_TIMEOUT -u GOMP_SPINCOUNT
check unset_gets_spin "GOMP_SPINCOUNT=3000" -u OMP_WAIT_POLICY -u OPENBLAS_THREAD_TIMEOUT -u GOMP_SPINCOUNT
check user_policy_kept "OMP_WAIT_POLICY=active" -u OPENBLAS_THREAD_TIMEOUT OMP_WAIT_POLICY=active
check user_timeout_kept "OPENBLAS_THREAD_TIMEOUT=9" -u OMP_WAIT_POLICY OPENBLAS_THREAD_TIMEOUT=9
check user_spin_kept "GOMP_SPINCOUNT=0" -u OMP_WAIT_POLICY GOMP_SPINCOUNT=0
if env -u OMP_WAIT_POLICY -u OPENBLAS_THREAD_TIMEOUT -u GOMP_SPINCOUNT STRATA_BLAS_AUTOFIX=0 "$strata" info | grep '^BLAS' | grep -q OMP_WAIT_POLICY; then
  echo "FAIL autofix_off: STRATA_BLAS_AUTOFIX=0 still changed the environment"; failures=$((failures + 1))
else
  echo "ok   autofix_off"
fi
[ "$failures" -eq 0 ]

#pragma once
// Which BLAS strata runs on, and a guard against a trap measured on real machines: Debian's OpenBLAS
// 0.3.21 does not recognise some recent CPUs (Xeon family 6 model 207, Emerald Rapids) and falls back
// to its SSE3 "Prescott" kernels, 7-10x slower than the AVX-512 ones the CPU can run. OpenBLAS picks
// its kernels once, when it is loaded, from OPENBLAS_CORETYPE; nothing can change them later in the
// same process. So the remedy is to set that variable and re-execute before any work is done.
#include <string>

namespace strata {

struct BlasInfo {
  std::string library;      // "OpenBLAS", or "unknown" when the BLAS is not OpenBLAS
  std::string config;       // openblas_get_config(): version and build options
  std::string core;         // kernels in use (openblas_get_corename()), e.g. "SkylakeX"
  std::string best_core;    // strongest OpenBLAS kernel set this CPU can run, e.g. "Cooperlake"
  bool coretype_from_env = false;  // OPENBLAS_CORETYPE was set by the user (or by the re-exec)
  int threads = 0;          // BLAS threads
  // The kernels in use are weaker than what the CPU supports (a misdetection or a bad override).
  bool slow_kernels() const;
  std::string describe() const;  // one line for logs and reports
};

BlasInfo blas_info();

// Call first in main(). Re-executes the program once with the same arguments (STRATA_BLAS_AUTOFIX=0
// disables this) when the environment lacks what fast BLAS-heavy work needs, each only when unset:
// OPENBLAS_CORETYPE, when OpenBLAS chose kernels weaker than this CPU runs; OMP_WAIT_POLICY=passive
// and OPENBLAS_THREAD_TIMEOUT=4, so that idle threads of strata's OpenMP loops and of OpenBLAS's pool
// sleep instead of spinning against each other; GOMP_SPINCOUNT=3000, so that strata's threads first
// spin for about 0.1 ms (decoding runs hundreds of small parallel loops per token, each of which
// would otherwise wake its threads from sleep). Returns normally when nothing needs fixing or exec
// fails. An engine that starts its own threads' environment sets these itself.
void ensure_fast_blas(int argc, char** argv);

// Prints, once per process, a warning with the fix when the BLAS kernels are slow for this CPU.
// Library entry points that spend their time in BLAS call this, so an engine that does not call
// ensure_fast_blas is told rather than left silently slow.
void warn_if_blas_slow();

}  // namespace strata

#include "strata/core/blas.hpp"

#include <dlfcn.h>
#include <unistd.h>

#include <array>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <sstream>
#include <string_view>

namespace strata {

namespace {

using CharFn = char* (*)();
using IntFn = int (*)();

template <class Fn>
Fn lookup(const char* symbol) {
  return reinterpret_cast<Fn>(dlsym(RTLD_DEFAULT, symbol));
}

// OpenBLAS x86-64 kernel sets, weakest to strongest, by the names openblas_get_corename() prints
// (lower case). Names not listed are treated as unknown and never reported as slow.
int core_rank(std::string_view core) {
  static constexpr std::array<std::pair<std::string_view, int>, 18> kRanks = {{
      {"katmai", 0},     {"coppermine", 0}, {"northwood", 0}, {"prescott", 1},    {"banias", 0},
      {"atom", 1},       {"core2", 1},      {"penryn", 1},    {"dunnington", 1},  {"nehalem", 1},
      {"opteron", 1},    {"barcelona", 1},  {"bulldozer", 1}, {"sandybridge", 2}, {"haswell", 3},
      {"zen", 3},        {"skylakex", 4},   {"cooperlake", 5},
  }};
  std::string lower(core);
  for (auto& c : lower) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  if (lower == "sapphirerapids") return 5;
  for (const auto& [name, rank] : kRanks)
    if (lower == name) return rank;
  return -1;
}

std::string best_core_for_this_cpu() {
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512bf16") && __builtin_cpu_supports("avx512vl")) return "Cooperlake";
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq"))
    return "SkylakeX";
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return "Haswell";
  if (__builtin_cpu_supports("avx")) return "Sandybridge";
  return "";
}

}  // namespace

bool BlasInfo::slow_kernels() const {
  if (library != "OpenBLAS" || best_core.empty()) return false;
  const int have = core_rank(core), best = core_rank(best_core);
  return have >= 0 && best >= 0 && have < best;
}

std::string BlasInfo::describe() const {
  std::ostringstream out;
  out << library;
  if (library == "OpenBLAS") {
    out << " kernels=" << core << " (best for this CPU: " << (best_core.empty() ? "?" : best_core) << ")"
        << " threads=" << threads;
    if (coretype_from_env) out << " OPENBLAS_CORETYPE=" << std::getenv("OPENBLAS_CORETYPE");
    if (slow_kernels()) out << " [SLOW KERNELS]";
  }
  for (const char* var : {"OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "OPENBLAS_THREAD_TIMEOUT"})
    if (const char* v = std::getenv(var)) out << " " << var << "=" << v;
  return out.str();
}

BlasInfo blas_info() {
  BlasInfo info;
  const auto corename = lookup<CharFn>("openblas_get_corename");
  const auto config = lookup<CharFn>("openblas_get_config");
  const auto threads = lookup<IntFn>("openblas_get_num_threads");
  if (!corename) {
    info.library = "unknown";
    return info;
  }
  info.library = "OpenBLAS";
  info.core = corename();
  if (config) info.config = config();
  if (threads) info.threads = threads();
  info.best_core = best_core_for_this_cpu();
  const char* env = std::getenv("OPENBLAS_CORETYPE");
  info.coretype_from_env = env && *env;
  return info;
}

void ensure_fast_blas(int argc, char** argv) {
  (void)argc;
  const char* autofix = std::getenv("STRATA_BLAS_AUTOFIX");
  if (autofix && std::string_view(autofix) == "0") return;
  if (std::getenv("STRATA_BLAS_REEXEC")) return;  // already re-executed once: never loop
  const BlasInfo info = blas_info();
  bool reexec = false;
  if (info.slow_kernels() && !info.coretype_from_env) {
    setenv("OPENBLAS_CORETYPE", info.best_core.c_str(), 1);
    reexec = true;
  }
  // strata's loops (OpenMP) and OpenBLAS's own thread pool take turns on the same cores. By default
  // each pool's idle threads spin after their work (libgomp for a while, OpenBLAS for about 2^28
  // cycles) and steal the cores the other pool needs next; on a 2-core machine with other work a
  // forward pass of SmolLM2 ran 2x slower. Both read these only at start-up.
  if (std::getenv("OMP_WAIT_POLICY") == nullptr) {
    setenv("OMP_WAIT_POLICY", "passive", 1);
    reexec = true;
  }
  // Passive waiting alone makes every parallel region wake its threads from sleep, tens of
  // microseconds each; a decode step runs hundreds of small regions back to back (SmolLM2's on two
  // threads ran slower than on one). A short spin first (about 0.1 ms, 3000 pause loops) keeps the
  // team awake between consecutive regions and still frees the core long before a BLAS call needs it.
  if (std::getenv("GOMP_SPINCOUNT") == nullptr) {
    setenv("GOMP_SPINCOUNT", "3000", 1);
    reexec = true;
  }
  if (std::getenv("OPENBLAS_THREAD_TIMEOUT") == nullptr) {
    setenv("OPENBLAS_THREAD_TIMEOUT", "4", 1);  // 2^4 cycles: idle threads sleep at once
    reexec = true;
  }
  if (!reexec) return;
  setenv("STRATA_BLAS_REEXEC", "1", 1);
  std::fflush(nullptr);
  execv("/proc/self/exe", argv);
  // exec failed: carry on with the slow kernels, but say so.
  warn_if_blas_slow();
}

void warn_if_blas_slow() {
  static std::once_flag once;
  std::call_once(once, [] {
    const BlasInfo info = blas_info();
    if (!info.slow_kernels()) return;
    std::fprintf(stderr,
                 "strata: warning: OpenBLAS runs its '%s' kernels, but this CPU supports '%s', which are "
                 "several times faster. Set OPENBLAS_CORETYPE=%s in the environment before starting the "
                 "program (or call strata::ensure_fast_blas(argc, argv) first in main).\n",
                 info.core.c_str(), info.best_core.c_str(), info.best_core.c_str());
  });
}

}  // namespace strata

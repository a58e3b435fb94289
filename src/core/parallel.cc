#include "strata/core/parallel.hpp"

#include <dlfcn.h>
#include <omp.h>

#include <exception>

#include "strata/core/error.hpp"

namespace strata {

int num_threads() { return omp_get_max_threads(); }

void set_num_threads(int n) {
  require(n >= 1, "set_num_threads: need at least one thread, got ", n);
  omp_set_num_threads(n);
  // OpenBLAS keeps its own thread pool; strata's matrix products must follow the same setting.
  using SetThreads = void (*)(int);
  if (auto set_blas = reinterpret_cast<SetThreads>(dlsym(RTLD_DEFAULT, "openblas_set_num_threads"))) set_blas(n);
}

void parallel_chunks(int64_t n_chunks, const std::function<void(int64_t)>& body) {
  if (n_chunks <= 0) return;
  if (n_chunks == 1 || omp_in_parallel()) {
    for (int64_t c = 0; c < n_chunks; ++c) body(c);
    return;
  }
  // Exceptions must not escape an OpenMP region; keep the one from the lowest chunk so that the
  // error reported does not depend on scheduling.
  std::exception_ptr first_error;
  int64_t first_chunk = n_chunks;
#pragma omp parallel for schedule(dynamic, 1)
  for (int64_t c = 0; c < n_chunks; ++c) {
    try {
      body(c);
    } catch (...) {
#pragma omp critical(strata_parallel_error)
      {
        if (c < first_chunk) {
          first_chunk = c;
          first_error = std::current_exception();
        }
      }
    }
  }
  if (first_error) std::rethrow_exception(first_error);
}

}  // namespace strata

#pragma once
// Parallel loops whose results do not depend on the number of threads: work is cut into chunks whose
// boundaries depend only on the problem size and the chunk size, and reductions combine per-chunk
// partial results in chunk order.
#include <cstdint>
#include <functional>
#include <vector>

namespace strata {

// Threads strata's own loops use (OpenMP). Defaults to the OpenMP default (OMP_NUM_THREADS or cores).
int num_threads();
void set_num_threads(int n);

// Calls body(chunk_index) for chunk_index in [0, n_chunks), in parallel. An exception thrown by a
// body is rethrown on the calling thread after the loop (the first one, by chunk index).
void parallel_chunks(int64_t n_chunks, const std::function<void(int64_t)>& body);

// Calls body(begin, end) over [0, n) cut into chunks of `chunk` indices (the last one shorter).
inline void parallel_for(int64_t n, int64_t chunk, const std::function<void(int64_t, int64_t)>& body) {
  if (n <= 0) return;
  if (chunk < 1) chunk = 1;
  const int64_t n_chunks = (n + chunk - 1) / chunk;
  parallel_chunks(n_chunks, [&](int64_t c) {
    const int64_t b = c * chunk;
    body(b, b + chunk < n ? b + chunk : n);
  });
}

// Deterministic reduction: map(begin, end) -> T per chunk, combined left to right by `combine`.
template <class T, class Map, class Combine>
T parallel_reduce(int64_t n, int64_t chunk, T init, Map map, Combine combine) {
  if (n <= 0) return init;
  if (chunk < 1) chunk = 1;
  const int64_t n_chunks = (n + chunk - 1) / chunk;
  std::vector<T> partial(static_cast<std::size_t>(n_chunks), init);
  parallel_chunks(n_chunks, [&](int64_t c) {
    const int64_t b = c * chunk;
    partial[static_cast<std::size_t>(c)] = map(b, b + chunk < n ? b + chunk : n);
  });
  T acc = init;
  for (auto& p : partial) acc = combine(acc, p);
  return acc;
}

}  // namespace strata

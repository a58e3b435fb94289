#pragma once
// The many-token path of the compressed layers: BLAS's GEMM throughput beats any product that
// skips zeros or widens codes once a dozen or more tokens share the weights, so a block of rows is
// made dense at a time (small enough to stay in cache while BLAS reads it for every token) and
// multiplied through BLAS.
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "strata/core/parallel.hpp"
#include "strata/nn/linear.hpp"

namespace strata::nn::detail {

// y [tokens, rows] = x [tokens, cols] W^T, where densify(r0, r1, out) writes rows [r0, r1) of W
// as float32, [r1 - r0, cols] row-major.
template <class Densify>
void dense_block_matmul(int64_t rows, int64_t cols, const float* x, int64_t tokens, float* y, const Densify& densify) {
  // About 1 MiB of float32 rows a block.
  const int64_t block = std::clamp<int64_t>((int64_t{1} << 18) / cols, 8, rows);
  std::vector<float> dense(static_cast<size_t>(block * cols)), out(static_cast<size_t>(tokens * block));
  for (int64_t r0 = 0; r0 < rows; r0 += block) {
    const int64_t r1 = std::min(rows, r0 + block), n = r1 - r0;
    parallel_for(n, 16, [&](int64_t b, int64_t e) { densify(r0 + b, r0 + e, dense.data() + b * cols); });
    matmul_wt(x, tokens, dense.data(), n, cols, out.data());
    for (int64_t t = 0; t < tokens; ++t)
      std::memcpy(y + t * rows + r0, out.data() + t * n, static_cast<size_t>(n) * sizeof(float));
  }
}

// Rows a kernel call covers when the rows are spread over threads: about 64 Ki weights, enough
// work a call and enough calls for the threads.
inline int64_t kernel_row_chunk(int64_t cols) { return std::max<int64_t>(1, (int64_t{1} << 16) / cols); }

}  // namespace strata::nn::detail

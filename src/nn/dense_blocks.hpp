#pragma once
// The many-token path of the compressed layers: BLAS's GEMM throughput beats any product that
// skips zeros or widens codes once a dozen or more tokens share the weights, so a block of rows is
// made dense at a time and multiplied through BLAS.
#include <cblas.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "strata/core/parallel.hpp"
#include "strata/nn/linear.hpp"

namespace strata::nn::detail {

// y [tokens, rows] = x [tokens, cols] W^T, where densify(r0, r1, out) writes rows [r0, r1) of W
// as float32, [r1 - r0, cols] row-major.
//
// A block is 4 MiB of float32 rows, which holds a whole block layer of a small model (a 1536 x 576
// FFN matrix is 3.4 MiB), so such a layer is one GEMM call as in the float32 path. Smaller blocks
// stay in L2 but multiply the GEMM calls, and each call wakes BLAS's threads: with 1 MiB blocks a
// 2-thread prefill of SmolLM2 in its Q4_1 blocks ran 3x slower in wall time than float32 on a busy
// machine, with 4 MiB blocks within 5% of it. The block is written once and read by the GEMM's own
// packing, from L3; its buffer is kept per thread between calls (a fresh 4 MiB allocation would be
// mapped and faulted in every time).
template <class Densify>
void dense_block_matmul(int64_t rows, int64_t cols, const float* x, int64_t tokens, float* y, const Densify& densify) {
  const int64_t block = std::clamp<int64_t>((int64_t{1} << 20) / cols, 8, rows);
  thread_local std::vector<float> dense;
  if (dense.size() < static_cast<size_t>(block * cols)) dense.resize(static_cast<size_t>(block * cols));
  float* const buffer = dense.data();  // this thread's buffer: inside the workers `dense` is theirs
  for (int64_t r0 = 0; r0 < rows; r0 += block) {
    const int64_t r1 = std::min(rows, r0 + block), n = r1 - r0;
    parallel_for(n, 16, [&](int64_t b, int64_t e) { densify(r0 + b, r0 + e, buffer + b * cols); });
    // y[:, r0:r1] = x block^T, written in place through ldc = rows.
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, static_cast<int>(tokens), static_cast<int>(n),
                static_cast<int>(cols), 1.0f, x, static_cast<int>(cols), buffer, static_cast<int>(cols), 0.0f,
                y + r0, static_cast<int>(rows));
  }
}

// Rows a kernel call covers when the rows are spread over threads: about 64 Ki weights, enough
// work a call and enough calls for the threads.
inline int64_t kernel_row_chunk(int64_t cols) { return std::max<int64_t>(1, (int64_t{1} << 16) / cols); }

}  // namespace strata::nn::detail

#pragma once
// The SIMD families behind kernels::ggml_matmul. Each family lives in its own dispatched source
// (ggml_matmul_q.cc: the 32-element block types; ggml_matmul_k.cc: the 256-element k-quants) and
// answers for its own types only. Arguments are already checked by ggml_matmul.
#include <cstdint>

#include "strata/kernels/ggml_blocks.hpp"

namespace strata::kernels::detail {

// Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, IQ4_NL. Returns false (and does nothing) for any other type.
bool matmul_q_blocks(GgmlType t, const void* w, int64_t rows, int64_t cols, const float* x, int64_t tokens, float* y,
                     int64_t y_stride);
bool matmul_q_blocks_supported(GgmlType t);

// Q2_K, Q3_K, Q4_K, Q5_K, Q6_K. Returns false (and does nothing) for any other type.
bool matmul_k_blocks(GgmlType t, const void* w, int64_t rows, int64_t cols, const float* x, int64_t tokens, float* y,
                     int64_t y_stride);
bool matmul_k_blocks_supported(GgmlType t);

}  // namespace strata::kernels::detail

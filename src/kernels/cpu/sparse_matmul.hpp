#pragma once
// Products of a pruned weight matrix with a few tokens, y[t, r] = sum_j W[r, j] x[t, j], read
// straight from the layouts nn::SparseLinear keeps: the weights are never made dense, so a product
// streams only the kept values and where they sit. Each kernel has a scalar reference, the oracle
// the SIMD versions are tested against (they differ only in the order of the float additions).
//
// Every entry point computes rows [r0, r1) for `tokens` tokens: x is [tokens, cols] and y
// [tokens, rows], row-major and contiguous, and only y[t, r0..r1) is written. Values are float32 or
// f16 (`half`), the latter widened in registers.
#include <cstdint>

#include "strata/core/dtype.hpp"

namespace strata::kernels {

// 2:4: every group of four consecutive inputs keeps two.
struct Sparse24 {
  int64_t rows = 0, cols = 0;  // cols a multiple of 4
  const void* values = nullptr;  // [rows, cols / 2], kept values in column order
  bool half = false;
  // The position (0..3) inside its group of four of every kept value, 2 bits each, LSB-first,
  // `position_stride` bytes a row (the form sparse tensor cores read); readable 4 bytes past the
  // last row, so that a chunk's bits load as one 32-bit word.
  const uint8_t* positions = nullptr;
  int64_t position_stride = 0;
};

// Unstructured, dense-ish: a bitmask per row and the kept values, row after row.
struct SparseBitmask {
  int64_t rows = 0, cols = 0;
  const void* values = nullptr;  // readable 16 values past the last kept one
  bool half = false;
  const int64_t* row_start = nullptr;  // [rows + 1]: where each row's values start
  // Bit j % 8 of byte j / 8 of a row says whether input j is kept; `mask_stride` bytes a row,
  // readable 4 bytes past the last row.
  const uint8_t* mask = nullptr;
  int64_t mask_stride = 0;
};

// Unstructured, very sparse: compressed sparse rows.
struct SparseCsr {
  int64_t rows = 0, cols = 0;
  const void* values = nullptr;
  bool half = false;
  const int64_t* row_start = nullptr;  // [rows + 1]
  // The input of each kept value: 16-bit when cols <= 65536 (col16), 32-bit otherwise (col32).
  const uint16_t* col16 = nullptr;
  const uint32_t* col32 = nullptr;
};

void sparse24_matmul(const Sparse24& w, const float* x, int64_t tokens, float* y, int64_t r0, int64_t r1);
void sparse_bitmask_matmul(const SparseBitmask& w, const float* x, int64_t tokens, float* y, int64_t r0, int64_t r1);
void sparse_csr_matmul(const SparseCsr& w, const float* x, int64_t tokens, float* y, int64_t r0, int64_t r1);

// The scalar references.
void sparse24_matmul_reference(const Sparse24& w, const float* x, int64_t tokens, float* y, int64_t r0, int64_t r1);
void sparse_bitmask_matmul_reference(const SparseBitmask& w, const float* x, int64_t tokens, float* y, int64_t r0,
                                     int64_t r1);
void sparse_csr_matmul_reference(const SparseCsr& w, const float* x, int64_t tokens, float* y, int64_t r0,
                                 int64_t r1);

// Rows [r0, r1) as dense float32, [r1 - r0, cols] row-major (the prefill path's GEMM operand).
void sparse24_densify(const Sparse24& w, int64_t r0, int64_t r1, float* out);
void sparse_bitmask_densify(const SparseBitmask& w, int64_t r0, int64_t r1, float* out);
void sparse_csr_densify(const SparseCsr& w, int64_t r0, int64_t r1, float* out);

// The value at `k` of a value array, float32 or f16.
inline float sparse_value(const void* values, bool half, int64_t k) {
  return half ? f16_to_f32(static_cast<const f16*>(values)[k]) : static_cast<const float*>(values)[k];
}

}  // namespace strata::kernels

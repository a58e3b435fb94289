#pragma once
// Products with weights kept in their ggml block formats: a layer stored as Q4_0 or Q4_K is read
// as those bytes (4.5 bits per weight), never expanded to a float32 copy.
//
//   // y[t, r] = W[r, :] . x[t, :]  for a Q4_K weight of rows x cols and `tokens` activation rows
//   kernels::ggml_matmul(GgmlType::Q4_K, w_bytes, rows, cols, x, tokens, y, /*y_stride=*/rows);
//
// The kernels unpack each block into SIMD registers and accumulate in float32 against float32
// activations (no activation quantization), so their result equals a product with the dequantized
// weights up to the order of the float additions. They are built for every Highway target and
// dispatched to the best one the running CPU has. ggml_matmul_reference() (dequantize a row, then a
// scalar dot product) is the oracle the SIMD variants are tested against.
//
// The functions are single-threaded over the rows they are given: callers split rows across threads
// (nn::GgmlLinear does) and pass a row sub-range with its y offset and the full y_stride.
#include <cstdint>

#include "strata/kernels/ggml_blocks.hpp"

namespace strata::kernels {

// Whether ggml_matmul has a SIMD kernel for the type. Other types throw strata::Error from
// ggml_matmul; dequantize them first.
bool ggml_matmul_supported(GgmlType t);

// y[t * y_stride + r] = sum_c W[r, c] * x[t * cols + c] for r < rows, t < tokens.
// w: `rows` consecutive rows of ggml_nbytes(t, cols) bytes each, any alignment. cols must be a whole
// number of the type's blocks; x is [tokens, cols] row-major, y_stride >= rows. Throws strata::Error
// naming the type for an unsupported type, a cols that is not a whole number of blocks, or
// non-positive sizes. Any number of tokens works; the kernels are tuned for 1..16 (decode and small
// batches); larger batches are faster through a dequantized tile and a GEMM (nn::GgmlLinear does that).
void ggml_matmul(GgmlType t, const void* w, int64_t rows, int64_t cols, const float* x, int64_t tokens, float* y,
                 int64_t y_stride);

// The oracle: each row dequantized by the codec's dequantize_row, then a float32 dot product in
// column order. Same contract and checks as ggml_matmul, for every type the codec can read.
void ggml_matmul_reference(GgmlType t, const void* w, int64_t rows, int64_t cols, const float* x, int64_t tokens,
                           float* y, int64_t y_stride);

}  // namespace strata::kernels

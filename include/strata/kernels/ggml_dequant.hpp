#pragma once
// Scalar reference dequantizers for ggml's tensor types. They reproduce ggml's own to_float results
// bit for bit (checked against golden output of ggml itself), which makes them the oracle that SIMD
// and CUDA variants are tested against.
#include <cstddef>
#include <cstdint>
#include <span>

#include "strata/kernels/ggml_blocks.hpp"

namespace strata::kernels {

// Whether dequantize() decodes this type.
bool ggml_can_dequantize(GgmlType t);

// Bytes that n elements of type t occupy. Throws strata::Error naming the type if n is negative or
// not a multiple of the type's block size, or if the byte count overflows.
uint64_t ggml_nbytes(GgmlType t, int64_t n);
// Bytes of one row of `row_length` elements (the same rule; rows are whole blocks in ggml).
inline uint64_t ggml_row_size(GgmlType t, int64_t row_length) { return ggml_nbytes(t, row_length); }

// Decodes n elements stored as `blocks` into out[0..n). Throws strata::Error naming the type when
// the type is not decodable, n is not a whole number of blocks, or blocks.size() != ggml_nbytes(t, n).
// Decodes F32, F16, BF16, F64, I8, I16, I32, I64 (converted to float), Q4_0, Q4_1, Q5_0, Q5_1, Q8_0,
// Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, Q8_K, IQ4_NL and IQ4_XS. (Q8_1 is left out on purpose: ggml itself
// has no decoder for it, as it only ever exists inside dot products.)
void dequantize(GgmlType t, std::span<const std::byte> blocks, float* out, int64_t n);

// Per-format entry points on whole blocks: nb blocks in, nb * block_size floats out. No checks;
// dequantize() validates and dispatches to these.
void dequantize_q4_0(const BlockQ4_0* x, float* y, int64_t nb);
void dequantize_q4_1(const BlockQ4_1* x, float* y, int64_t nb);
void dequantize_q5_0(const BlockQ5_0* x, float* y, int64_t nb);
void dequantize_q5_1(const BlockQ5_1* x, float* y, int64_t nb);
void dequantize_q8_0(const BlockQ8_0* x, float* y, int64_t nb);
void dequantize_q2_k(const BlockQ2_K* x, float* y, int64_t nb);
void dequantize_q3_k(const BlockQ3_K* x, float* y, int64_t nb);
void dequantize_q4_k(const BlockQ4_K* x, float* y, int64_t nb);
void dequantize_q5_k(const BlockQ5_K* x, float* y, int64_t nb);
void dequantize_q6_k(const BlockQ6_K* x, float* y, int64_t nb);
void dequantize_q8_k(const BlockQ8_K* x, float* y, int64_t nb);
void dequantize_iq4_nl(const BlockIQ4_NL* x, float* y, int64_t nb);
void dequantize_iq4_xs(const BlockIQ4_XS* x, float* y, int64_t nb);

}  // namespace strata::kernels

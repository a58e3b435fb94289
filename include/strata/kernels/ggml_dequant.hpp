#pragma once
// Sizes of ggml tensors and their decoding to float32, through the codec table
// (strata/kernels/ggml_codec.hpp). The decoders reproduce ggml's own to_float results bit for bit
// (checked against golden output of ggml itself), which makes them the oracle that SIMD and CUDA
// variants are tested against.
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

// Decodes n elements stored as `blocks` (any alignment) into out[0..n). Throws strata::Error naming
// the type when the type is not decodable, n is not a whole number of blocks, or
// blocks.size() != ggml_nbytes(t, n). Decodes F32, F16, BF16, F64, I8, I16, I32, I64 (converted to
// float), Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, Q8_K, IQ4_NL and IQ4_XS. (Q8_1
// is left out on purpose: ggml itself has no decoder for it, as it only ever exists inside dot
// products.)
void dequantize(GgmlType t, std::span<const std::byte> blocks, float* out, int64_t n);

}  // namespace strata::kernels

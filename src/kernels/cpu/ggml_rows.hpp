#pragma once
// The per-format kernels behind the ggml codec table (strata/kernels/ggml_codec.hpp), private to the
// library: no argument checks, typed block pointers. Engines reach them through ggml_codec(t), whose
// rows take untyped bytes (any alignment) and whose checked entry points validate sizes first.
#include <cstdint>
#include <span>

#include "strata/kernels/ggml_codec.hpp"

namespace strata::kernels::detail {

// ---- decoders: nb whole blocks in, nb * block_size floats out --------------------------------------
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

// ---- row quantizers ---------------------------------------------------------------------------------
// x: one row of n floats, n a multiple of the type's block size (the legacy types' imatrix path
// takes sigma^2 over the whole row, so a row must not be split); y: n / block_size blocks;
// importance: n values for the same columns, or nullptr. Q8_0 ignores the importance, as ggml does.
void quantize_row_q4_0(const float* x, BlockQ4_0* y, int64_t n, const float* importance);
void quantize_row_q4_1(const float* x, BlockQ4_1* y, int64_t n, const float* importance);
void quantize_row_q5_0(const float* x, BlockQ5_0* y, int64_t n, const float* importance);
void quantize_row_q5_1(const float* x, BlockQ5_1* y, int64_t n, const float* importance);
void quantize_row_q8_0(const float* x, BlockQ8_0* y, int64_t n, const float* importance);
void quantize_row_q2_k(const float* x, BlockQ2_K* y, int64_t n, const float* importance);
void quantize_row_q3_k(const float* x, BlockQ3_K* y, int64_t n, const float* importance);
void quantize_row_q4_k(const float* x, BlockQ4_K* y, int64_t n, const float* importance);
void quantize_row_q5_k(const float* x, BlockQ5_K* y, int64_t n, const float* importance);
void quantize_row_q6_k(const float* x, BlockQ6_K* y, int64_t n, const float* importance);
void quantize_row_iq4_nl(const float* x, BlockIQ4_NL* y, int64_t n, const float* importance);

// Scale and min of sub-block j from the 12 bytes that pack eight 6-bit scales and eight 6-bit mins
// of Q4_K / Q5_K: sub-blocks 0..3 sit in the low six bits of bytes 0..3 (scales) and 4..7 (mins);
// sub-blocks 4..7 keep their low four bits in bytes 8..11 and their top two bits in the spare high
// bits of bytes 0..7.
inline void unpack_scale_min_k4(int j, const uint8_t* q, uint8_t& sc, uint8_t& m) {
  if (j < 4) {
    sc = q[j] & 63;
    m = q[j + 4] & 63;
  } else {
    sc = static_cast<uint8_t>((q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4));
    m = static_cast<uint8_t>((q[j + 4] >> 4) | ((q[j] >> 6) << 4));
  }
}

// Throws strata::Error naming the type, the row and the column of the first NaN/Inf in x[0..n).
// A plain scan runs first (it vectorizes); the message is built only when something is wrong.
void check_finite(const float* x, int64_t n, const char* what, GgmlType t, int64_t row);
// The argument checks every checked quantizer shares: rows of n elements are a positive whole
// number of the codec's blocks, and `importance` is empty or n finite, non-negative values.
void check_row_args(const GgmlCodec& c, int64_t n, std::span<const float> importance);

}  // namespace strata::kernels::detail

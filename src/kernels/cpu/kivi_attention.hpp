#pragma once
// Decode attention straight from KIVI codes (kv::Cache's kivi2 / kivi4 rows), SIMD through Highway's
// dynamic dispatch: no dequantized tile is written, each row's codes are unpacked in registers and
// used once for all the queries of a block. The `_reference` versions dequantize and sum in double:
// the oracle the tests hold them to.
//
// Codes: `bits` (2 or 4) per element, element c of a row at bit (c % per) * bits of byte c / per,
// per = 8 / bits. Scales and minimums are binary16 bit patterns; x' = min + scale * code.
#include <cstdint>

namespace strata::kernels {

// Keys quantized per channel over a group of tokens: `params` holds per channel c the scale at
// [2c] and the minimum at [2c + 1], shared by the n rows of codes (rows row_bytes apart, d elements
// each). scores[i * score_stride + j] = scale * sum_c q[i * q_stride + c] (min_c + scale_c code_jc)
// for i < m, j < n. Computed as q.min + (q .* scale).code: the products q .* scale once per group,
// then one dot product of each row's codes with them. Sums in float.
void kivi_key_scores(const float* q, int64_t m, int64_t q_stride, const uint8_t* codes, int64_t n,
                     int64_t row_bytes, int64_t d, int bits, const uint16_t* params, float scale, float* scores,
                     int64_t score_stride);
void kivi_key_scores_reference(const float* q, int64_t m, int64_t q_stride, const uint8_t* codes, int64_t n,
                               int64_t row_bytes, int64_t d, int bits, const uint16_t* params, float scale,
                               float* scores, int64_t score_stride);

// Values quantized per token over groups of `group` channels (the last group shorter when group does
// not divide d): each row (row_bytes apart) is d * bits / 8 bytes of codes, then per channel group
// its scale and minimum (binary16, 4 bytes). out[i * out_stride + c] += sum_j p[i * p_stride + j]
// (min_jg + scale_jg code_jc) for i < m, j < n, c < d, g the group of c. Computed as
// sum_j (p_j scale_jg) code_jc plus, per channel group, sum_j p_j min_jg. Sums in float (the
// reference: in double, then added).
void kivi_values(const float* p, int64_t m, int64_t p_stride, const uint8_t* rows, int64_t n, int64_t row_bytes,
                 int64_t d, int bits, int64_t group, float* out, int64_t out_stride);
void kivi_values_reference(const float* p, int64_t m, int64_t p_stride, const uint8_t* rows, int64_t n,
                           int64_t row_bytes, int64_t d, int bits, int64_t group, float* out, int64_t out_stride);

}  // namespace strata::kernels

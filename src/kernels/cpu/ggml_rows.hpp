#pragma once
// The per-format rows behind the ggml codec table (strata/kernels/ggml_codec.hpp), private to the
// library: no argument checks. Engines reach them through ggml_codec(t); the checked entry points
// validate sizes first. The typed block kernels stay inside ggml_quantize.cc and ggml_dequant.cc.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>
#include <vector>

#include "strata/kernels/ggml_codec.hpp"

namespace strata::kernels::detail {

// ---- row functions of the block types: the codec table's rows (GgmlCodec::quantize_row and
// dequantize_row), with the same contracts ----------------------------------------------------------
void dequantize_row_q4_0(const void* in, int64_t n, float* out);
void dequantize_row_q4_1(const void* in, int64_t n, float* out);
void dequantize_row_q5_0(const void* in, int64_t n, float* out);
void dequantize_row_q5_1(const void* in, int64_t n, float* out);
void dequantize_row_q8_0(const void* in, int64_t n, float* out);
void dequantize_row_q2_k(const void* in, int64_t n, float* out);
void dequantize_row_q3_k(const void* in, int64_t n, float* out);
void dequantize_row_q4_k(const void* in, int64_t n, float* out);
void dequantize_row_q5_k(const void* in, int64_t n, float* out);
void dequantize_row_q6_k(const void* in, int64_t n, float* out);
void dequantize_row_q8_k(const void* in, int64_t n, float* out);
void dequantize_row_iq4_nl(const void* in, int64_t n, float* out);
void dequantize_row_iq4_xs(const void* in, int64_t n, float* out);
// The scalar rows of the SIMD-dispatched types above: the test oracles of ggml_dequant_simd.
void dequantize_row_q4_0_scalar(const void* in, int64_t n, float* out);
void dequantize_row_q4_1_scalar(const void* in, int64_t n, float* out);
void dequantize_row_q5_0_scalar(const void* in, int64_t n, float* out);
void dequantize_row_q5_1_scalar(const void* in, int64_t n, float* out);
void dequantize_row_q8_0_scalar(const void* in, int64_t n, float* out);
// The SIMD block loops (ggml_dequant_simd.cc), aligned blocks.
void dequantize_q4_0_simd(const BlockQ4_0* x, float* y, int64_t nb);
void dequantize_q4_1_simd(const BlockQ4_1* x, float* y, int64_t nb);
void dequantize_q5_0_simd(const BlockQ5_0* x, float* y, int64_t nb);
void dequantize_q5_1_simd(const BlockQ5_1* x, float* y, int64_t nb);
void dequantize_q8_0_simd(const BlockQ8_0* x, float* y, int64_t nb);

void quantize_row_q4_0(const float* x, int64_t n, void* out, const float* importance);
void quantize_row_q4_1(const float* x, int64_t n, void* out, const float* importance);
void quantize_row_q5_0(const float* x, int64_t n, void* out, const float* importance);
void quantize_row_q5_1(const float* x, int64_t n, void* out, const float* importance);
void quantize_row_q8_0(const float* x, int64_t n, void* out, const float* importance);
void quantize_row_q2_k(const float* x, int64_t n, void* out, const float* importance);
void quantize_row_q3_k(const float* x, int64_t n, void* out, const float* importance);
void quantize_row_q4_k(const float* x, int64_t n, void* out, const float* importance);
void quantize_row_q5_k(const float* x, int64_t n, void* out, const float* importance);
void quantize_row_q6_k(const float* x, int64_t n, void* out, const float* importance);
void quantize_row_iq4_nl(const float* x, int64_t n, void* out, const float* importance);

// The weighted paths of Q4_0, Q4_1, Q5_0 and Q5_1 take sigma^2 (in qw_j * sqrt(sigma2 + x_j^2)) over
// the whole row. quantize_blocks_legacy writes the blocks of a part of a row with the sigma^2 given
// (legacy_row_sigma2 of the whole row, as ggml computes it), so a row quantized a block at a time gets
// ggml's bytes; other types' blocks never look beyond themselves and go to their codec row function.
float legacy_row_sigma2(const float* x, int64_t n);
void quantize_blocks_legacy(GgmlType t, const float* x, int64_t n, void* out, const float* importance, float sigma2);

// Q4_K, Q5_K and Q6_K through the SIMD quantizers of ggml_quantize_k.cc, which the codec table routes
// to: the same bytes as quantize_row_q4_k, _q5_k and _q6_k above (the scalar references), faster.
void quantize_row_q4_k_simd(const float* x, int64_t n, void* out, const float* importance);
void quantize_row_q5_k_simd(const float* x, int64_t n, void* out, const float* importance);
void quantize_row_q6_k_simd(const float* x, int64_t n, void* out, const float* importance);
// Q2_K and Q3_K likewise (the same bytes as quantize_row_q2_k and quantize_row_q3_k).
void quantize_row_q2_k_simd(const float* x, int64_t n, void* out, const float* importance);
void quantize_row_q3_k_simd(const float* x, int64_t n, void* out, const float* importance);

// The per-super-block steps the SIMD quantizers share with the references. encode_q4_k_scales sets
// d, dmin and the packed 6-bit scales and mins of y from the eight sub-blocks' fitted scales and
// mins (sw: the sub-blocks' summed importance weights, or nullptr without importance).
// encode_q6_k_scales sets d and the sixteen 8-bit scales, or zeroes y and returns false when every
// scale vanishes.
void encode_q4_k_scales(const float* scales, const float* mins, const float* sw, BlockQ4_K& y);
// The last step of encode_q4_k_scales with importance: the eight quantized scales Ls and mins Lm
// (make_qp_quants' quants, stored as ggml stores them) packed into y with d and dmin.
void pack_q4_k_scales(const uint8_t* Ls, const uint8_t* Lm, float d_block, float m_block, BlockQ4_K& y);
bool encode_q6_k_scales(const float* scales, BlockQ6_K& y);
// encode_q2_k_scales sets d, dmin and the sixteen packed 4-bit scales and mins of y from the
// sub-blocks' fitted scales and mins (sw as above); pack_q2_k_scales is its last step with importance
// (make_qp_quants' quants Ls and Lm, as ggml stores them, with d and dmin).
void encode_q2_k_scales(const float* scales, const float* mins, const float* sw, BlockQ2_K& y);
void pack_q2_k_scales(const uint8_t* Ls, const uint8_t* Lm, float d_block, float m_block, BlockQ2_K& y);
// Q3_K: encode_q3_k_scales sets d and the packed 6-bit scales from the sixteen sub-block scales
// without importance (y's scales zeroed first); pack_q3_k_scales packs make_qx_quants' quants Ls
// (0 .. 63) with d (importance); unpack_q3_k_scale reads sub-block j's signed scale back.
void encode_q3_k_scales(const float* scales, BlockQ3_K& y);
void pack_q3_k_scales(const int8_t* Ls, float d_block, BlockQ3_K& y);
int unpack_q3_k_scale(int j, const uint8_t* scales);
// Q5_K's 256 quants (0 .. 31) into y's qs (low four bits) and qh (fifth bits).
void pack_q5_k_quants(const uint8_t* L, BlockQ5_K& y);

// ---- alignment --------------------------------------------------------------------------------------
// The kernels read and write typed blocks. Tensor data in a GGUF file and the buffers strata
// allocates are aligned, but bytes handed in from elsewhere (a fuzzer, a network buffer, a packed
// cache) need not be; those are staged through aligned storage so that no block is accessed through
// a misaligned pointer. The test costs one branch per row, outside the kernels' loops.

// Runs decode(units, out, count) over `units` blocks (or elements) of type Unit read from `in`, each
// kPerUnit floats.
template <class Unit, int64_t kPerUnit, class Decode>
void decode_units(const void* in, int64_t units, float* out, Decode decode) {
  if (reinterpret_cast<std::uintptr_t>(in) % alignof(Unit) == 0)
    return decode(static_cast<const Unit*>(in), out, units);
  constexpr int64_t kChunk = 64;
  Unit staged[kChunk];
  const auto* bytes = static_cast<const std::byte*>(in);
  for (int64_t u = 0; u < units; u += kChunk) {
    const int64_t m = std::min(kChunk, units - u);
    std::memcpy(staged, bytes + u * static_cast<int64_t>(sizeof(Unit)), static_cast<std::size_t>(m) * sizeof(Unit));
    decode(staged, out + u * kPerUnit, m);
  }
}

// Runs encode(units) on `out`, or on aligned storage copied to `out` when `out` is misaligned for Unit.
template <class Unit, class Encode>
void encode_units(void* out, int64_t units, Encode encode) {
  if (reinterpret_cast<std::uintptr_t>(out) % alignof(Unit) == 0) return encode(static_cast<Unit*>(out));
  std::vector<Unit> staged(static_cast<std::size_t>(units));
  encode(staged.data());
  std::memcpy(out, staged.data(), staged.size() * sizeof(Unit));
}

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

// Dynamic dispatch of decode attention from KIVI codes to the best SIMD target of the running CPU,
// and the double-precision references.
#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "kernels/cpu/kivi_attention.cc"
#include <hwy/foreach_target.h>  // IWYU pragma: keep
#include <hwy/highway.h>

#include "kernels/cpu/kivi_attention-inl.h"

#if HWY_ONCE
#include <algorithm>
#include <cstring>

#include "kernels/cpu/kivi_attention.hpp"
#include "strata/core/dtype.hpp"

namespace strata::kernels {

HWY_EXPORT(KiviKeyScores);
HWY_EXPORT(KiviValues);

void kivi_key_scores(const float* q, int64_t m, int64_t q_stride, const uint8_t* codes, int64_t n, int64_t row_bytes,
                     int64_t d, int bits, const uint16_t* params, float scale, float* scores, int64_t score_stride) {
  if (m <= 0 || n <= 0) return;
  HWY_DYNAMIC_DISPATCH(KiviKeyScores)(q, m, q_stride, codes, n, row_bytes, d, bits, params, scale, scores,
                                      score_stride);
}

void kivi_values(const float* p, int64_t m, int64_t p_stride, const uint8_t* rows, int64_t n, int64_t row_bytes,
                 int64_t d, int bits, int64_t group, float* out, int64_t out_stride) {
  if (m <= 0 || n <= 0) return;
  HWY_DYNAMIC_DISPATCH(KiviValues)(p, m, p_stride, rows, n, row_bytes, d, bits, group, out, out_stride);
}

namespace {

double code_at(const uint8_t* row, int64_t c, int bits) {
  const int per = 8 / bits;
  return (row[c / per] >> (c % per * bits)) & ((1 << bits) - 1);
}
double half(uint16_t bits) { return f16_to_f32(f16{bits}); }

}  // namespace

void kivi_key_scores_reference(const float* q, int64_t m, int64_t q_stride, const uint8_t* codes, int64_t n,
                               int64_t row_bytes, int64_t d, int bits, const uint16_t* params, float scale,
                               float* scores, int64_t score_stride) {
  for (int64_t i = 0; i < m; ++i)
    for (int64_t j = 0; j < n; ++j) {
      double s = 0;
      for (int64_t c = 0; c < d; ++c)
        s += static_cast<double>(q[i * q_stride + c]) *
             (half(params[2 * c + 1]) + half(params[2 * c]) * code_at(codes + j * row_bytes, c, bits));
      scores[i * score_stride + j] = static_cast<float>(s * scale);
    }
}

void kivi_values_reference(const float* p, int64_t m, int64_t p_stride, const uint8_t* rows, int64_t n,
                           int64_t row_bytes, int64_t d, int bits, int64_t group, float* out, int64_t out_stride) {
  group = std::min(group, d);
  const int64_t code_bytes = d * bits / 8;
  for (int64_t i = 0; i < m; ++i)
    for (int64_t c = 0; c < d; ++c) {
      double s = 0;
      for (int64_t j = 0; j < n; ++j) {
        const uint8_t* row = rows + j * row_bytes;
        uint16_t params[2];
        std::memcpy(params, row + code_bytes + c / group * 4, 4);
        s += static_cast<double>(p[i * p_stride + j]) * (half(params[1]) + half(params[0]) * code_at(row, c, bits));
      }
      out[i * out_stride + c] = static_cast<float>(out[i * out_stride + c] + s);
    }
}

}  // namespace strata::kernels
#endif  // HWY_ONCE

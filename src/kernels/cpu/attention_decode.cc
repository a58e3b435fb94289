// Dynamic dispatch of the few-query attention products to the best SIMD target of the running CPU,
// and their double-precision references.
#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "kernels/cpu/attention_decode.cc"
#include <hwy/foreach_target.h>  // IWYU pragma: keep
#include <hwy/highway.h>

#include "kernels/cpu/attention_decode-inl.h"

#if HWY_ONCE
#include "kernels/cpu/attention_decode.hpp"

namespace strata::kernels {

HWY_EXPORT(AttentionScores);
HWY_EXPORT(AttentionValues);

void attention_scores(const float* q, int64_t m, int64_t q_stride, const float* k, int64_t n, int64_t k_stride,
                      int64_t d, float scale, float* scores, int64_t score_stride) {
  if (m <= 0 || n <= 0) return;
  HWY_DYNAMIC_DISPATCH(AttentionScores)(q, m, q_stride, k, n, k_stride, d, scale, scores, score_stride);
}

void attention_values(const float* p, int64_t m, int64_t p_stride, const float* v, int64_t n, int64_t v_stride,
                      int64_t d, float* out, int64_t out_stride) {
  if (m <= 0 || n <= 0) return;
  HWY_DYNAMIC_DISPATCH(AttentionValues)(p, m, p_stride, v, n, v_stride, d, out, out_stride);
}

void attention_scores_reference(const float* q, int64_t m, int64_t q_stride, const float* k, int64_t n,
                                int64_t k_stride, int64_t d, float scale, float* scores, int64_t score_stride) {
  for (int64_t i = 0; i < m; ++i)
    for (int64_t j = 0; j < n; ++j) {
      double s = 0;
      for (int64_t c = 0; c < d; ++c) s += static_cast<double>(q[i * q_stride + c]) * k[j * k_stride + c];
      scores[i * score_stride + j] = static_cast<float>(s * scale);
    }
}

void attention_values_reference(const float* p, int64_t m, int64_t p_stride, const float* v, int64_t n,
                                int64_t v_stride, int64_t d, float* out, int64_t out_stride) {
  for (int64_t i = 0; i < m; ++i)
    for (int64_t c = 0; c < d; ++c) {
      double s = 0;
      for (int64_t j = 0; j < n; ++j) s += static_cast<double>(p[i * p_stride + j]) * v[j * v_stride + c];
      out[i * out_stride + c] = static_cast<float>(out[i * out_stride + c] + s);
    }
}

}  // namespace strata::kernels
#endif  // HWY_ONCE

// Dynamic dispatch of the 32-element block types' row quantizers (Q4_0, Q4_1, Q5_0 and Q5_1 with an
// importance vector, IQ4_NL with or without one) to the best SIMD target of the running CPU.
#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "kernels/cpu/ggml_quantize_legacy.cc"
#include <hwy/foreach_target.h>  // IWYU pragma: keep
#include <hwy/highway.h>

#include "kernels/cpu/ggml_quantize_legacy-inl.h"

#if HWY_ONCE
#include "kernels/cpu/ggml_quantize_legacy.hpp"

namespace strata::kernels::detail {

HWY_EXPORT(QuantizeRowQ40);
HWY_EXPORT(QuantizeRowQ41);
HWY_EXPORT(QuantizeRowQ50);
HWY_EXPORT(QuantizeRowQ51);
HWY_EXPORT(QuantizeRowIQ4NL);

// Without importance the Q4_0 ... Q5_1 references are one pass over the block, and stay in use.
void quantize_row_q4_0_simd(const float* x, int64_t n, void* out, const float* importance) {
  if (!importance) return quantize_row_q4_0(x, n, out, nullptr);
  encode_units<BlockQ4_0>(out, n / kQK, [&](BlockQ4_0* y) { HWY_DYNAMIC_DISPATCH(QuantizeRowQ40)(x, n, y, importance); });
}
void quantize_row_q4_1_simd(const float* x, int64_t n, void* out, const float* importance) {
  if (!importance) return quantize_row_q4_1(x, n, out, nullptr);
  encode_units<BlockQ4_1>(out, n / kQK, [&](BlockQ4_1* y) { HWY_DYNAMIC_DISPATCH(QuantizeRowQ41)(x, n, y, importance); });
}
void quantize_row_q5_0_simd(const float* x, int64_t n, void* out, const float* importance) {
  if (!importance) return quantize_row_q5_0(x, n, out, nullptr);
  encode_units<BlockQ5_0>(out, n / kQK, [&](BlockQ5_0* y) { HWY_DYNAMIC_DISPATCH(QuantizeRowQ50)(x, n, y, importance); });
}
void quantize_row_q5_1_simd(const float* x, int64_t n, void* out, const float* importance) {
  if (!importance) return quantize_row_q5_1(x, n, out, nullptr);
  encode_units<BlockQ5_1>(out, n / kQK, [&](BlockQ5_1* y) { HWY_DYNAMIC_DISPATCH(QuantizeRowQ51)(x, n, y, importance); });
}
void quantize_row_iq4_nl_simd(const float* x, int64_t n, void* out, const float* importance) {
  encode_units<BlockIQ4_NL>(out, n / kQK,
                            [&](BlockIQ4_NL* y) { HWY_DYNAMIC_DISPATCH(QuantizeRowIQ4NL)(x, n, y, importance); });
}

}  // namespace strata::kernels::detail
#endif  // HWY_ONCE

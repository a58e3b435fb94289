// Dynamic dispatch of the Q2_K, Q3_K, Q4_K, Q5_K and Q6_K row quantizers to the best SIMD target of the running CPU.
#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "kernels/cpu/ggml_quantize_k.cc"
#include <hwy/foreach_target.h>  // IWYU pragma: keep
#include <hwy/highway.h>

#include "kernels/cpu/ggml_quantize_k-inl.h"

#if HWY_ONCE
namespace strata::kernels::detail {

HWY_EXPORT(QuantizeRowQ2K);
HWY_EXPORT(QuantizeRowQ3K);
HWY_EXPORT(QuantizeRowQ4K);
HWY_EXPORT(QuantizeRowQ5K);
HWY_EXPORT(QuantizeRowQ6K);

void quantize_row_q2_k_simd(const float* x, int64_t n, void* out, const float* importance) {
  encode_units<BlockQ2_K>(out, n / kQK_K,
                          [&](BlockQ2_K* y) { HWY_DYNAMIC_DISPATCH(QuantizeRowQ2K)(x, n, y, importance); });
}
void quantize_row_q3_k_simd(const float* x, int64_t n, void* out, const float* importance) {
  encode_units<BlockQ3_K>(out, n / kQK_K,
                          [&](BlockQ3_K* y) { HWY_DYNAMIC_DISPATCH(QuantizeRowQ3K)(x, n, y, importance); });
}
void quantize_row_q4_k_simd(const float* x, int64_t n, void* out, const float* importance) {
  encode_units<BlockQ4_K>(out, n / kQK_K,
                          [&](BlockQ4_K* y) { HWY_DYNAMIC_DISPATCH(QuantizeRowQ4K)(x, n, y, importance); });
}
void quantize_row_q5_k_simd(const float* x, int64_t n, void* out, const float* importance) {
  encode_units<BlockQ5_K>(out, n / kQK_K,
                          [&](BlockQ5_K* y) { HWY_DYNAMIC_DISPATCH(QuantizeRowQ5K)(x, n, y, importance); });
}
void quantize_row_q6_k_simd(const float* x, int64_t n, void* out, const float* importance) {
  encode_units<BlockQ6_K>(out, n / kQK_K,
                          [&](BlockQ6_K* y) { HWY_DYNAMIC_DISPATCH(QuantizeRowQ6K)(x, n, y, importance); });
}

}  // namespace strata::kernels::detail
#endif  // HWY_ONCE

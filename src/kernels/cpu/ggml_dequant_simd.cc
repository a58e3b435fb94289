// Dynamic dispatch of the SIMD dequantizers of the 32-element ggml block types to the best target of
// the running CPU. The codec's row functions (ggml_dequant.cc) call these; the scalar block loops
// there stay as the test oracle.
#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "kernels/cpu/ggml_dequant_simd.cc"
#include <hwy/foreach_target.h>  // IWYU pragma: keep
#include <hwy/highway.h>

#include "kernels/cpu/ggml_dequant_simd-inl.h"

#if HWY_ONCE
#include "kernels/cpu/ggml_rows.hpp"

namespace strata::kernels::detail {

HWY_EXPORT(DequantQ4_0);
HWY_EXPORT(DequantQ4_1);
HWY_EXPORT(DequantQ5_0);
HWY_EXPORT(DequantQ5_1);
HWY_EXPORT(DequantQ8_0);

void dequantize_q4_0_simd(const BlockQ4_0* x, float* y, int64_t nb) { HWY_DYNAMIC_DISPATCH(DequantQ4_0)(x, y, nb); }
void dequantize_q4_1_simd(const BlockQ4_1* x, float* y, int64_t nb) { HWY_DYNAMIC_DISPATCH(DequantQ4_1)(x, y, nb); }
void dequantize_q5_0_simd(const BlockQ5_0* x, float* y, int64_t nb) { HWY_DYNAMIC_DISPATCH(DequantQ5_0)(x, y, nb); }
void dequantize_q5_1_simd(const BlockQ5_1* x, float* y, int64_t nb) { HWY_DYNAMIC_DISPATCH(DequantQ5_1)(x, y, nb); }
void dequantize_q8_0_simd(const BlockQ8_0* x, float* y, int64_t nb) { HWY_DYNAMIC_DISPATCH(DequantQ8_0)(x, y, nb); }

}  // namespace strata::kernels::detail
#endif  // HWY_ONCE

// Dynamic dispatch of the f16/bf16 array conversions to the best SIMD target of the running CPU.
#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "kernels/cpu/convert.cc"
#include <hwy/foreach_target.h>  // IWYU pragma: keep
#include <hwy/highway.h>

#include "kernels/cpu/convert-inl.h"

#if HWY_ONCE
namespace strata {

HWY_EXPORT(ConvertF32ToF16);
HWY_EXPORT(ConvertF16ToF32);
HWY_EXPORT(ConvertF32ToBF16);
HWY_EXPORT(ConvertBF16ToF32);

void convert_f32_to_f16(const float* in, f16* out, uint64_t n) { HWY_DYNAMIC_DISPATCH(ConvertF32ToF16)(in, out, n); }
void convert_f16_to_f32(const f16* in, float* out, uint64_t n) { HWY_DYNAMIC_DISPATCH(ConvertF16ToF32)(in, out, n); }
void convert_f32_to_bf16(const float* in, bf16* out, uint64_t n) { HWY_DYNAMIC_DISPATCH(ConvertF32ToBF16)(in, out, n); }
void convert_bf16_to_f32(const bf16* in, float* out, uint64_t n) { HWY_DYNAMIC_DISPATCH(ConvertBF16ToF32)(in, out, n); }

}  // namespace strata
#endif  // HWY_ONCE

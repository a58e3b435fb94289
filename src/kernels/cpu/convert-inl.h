// f32 <-> f16 / bf16 array conversion, one source for every SIMD target (Google Highway).
// Included by convert.cc for dynamic dispatch and by the per-target tests; the scalar functions in
// strata/core/dtype.hpp are the oracle these must match bit for bit.
#if defined(STRATA_KERNELS_CONVERT_INL_H_) == defined(HWY_TARGET_TOGGLE)
#ifdef STRATA_KERNELS_CONVERT_INL_H_
#undef STRATA_KERNELS_CONVERT_INL_H_
#else
#define STRATA_KERNELS_CONVERT_INL_H_
#endif

#include <hwy/highway.h>

#include "strata/core/dtype.hpp"

HWY_BEFORE_NAMESPACE();
namespace strata {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

// Targets with f16 conversion instructions (x86 from AVX2 on, with F16C; Arm) round to nearest even
// and keep infinities and NaNs, like the reference. Highway 1.0's emulation for the others (x86
// SSE4/SSSE3, the scalar and EMU128 targets) truncates the mantissa, flushes the smallest
// subnormals to zero and turns f16 infinities into 65536, so those targets convert with the
// reference itself: they are pre-2013 CPUs, where exactness matters more than speed.
#if HWY_TARGET == HWY_SCALAR || HWY_TARGET == HWY_EMU128 || \
    (HWY_ARCH_X86 && (HWY_TARGET == HWY_SSE4 || HWY_TARGET == HWY_SSSE3))
inline void ConvertF32ToF16(const float* HWY_RESTRICT in, f16* HWY_RESTRICT out, uint64_t n) {
  for (uint64_t i = 0; i < n; ++i) out[i] = f32_to_f16(in[i]);
}

inline void ConvertF16ToF32(const f16* HWY_RESTRICT in, float* HWY_RESTRICT out, uint64_t n) {
  for (uint64_t i = 0; i < n; ++i) out[i] = f16_to_f32(in[i]);
}
#else
inline void ConvertF32ToF16(const float* HWY_RESTRICT in, f16* HWY_RESTRICT out, uint64_t n) {
  const hn::ScalableTag<float> df;
  const hn::Rebind<hwy::float16_t, decltype(df)> dh;
  const uint64_t N = hn::Lanes(df);
  auto* o = reinterpret_cast<hwy::float16_t*>(out);
  uint64_t i = 0;
  for (; i + N <= n; i += N) hn::StoreU(hn::DemoteTo(dh, hn::LoadU(df, in + i)), dh, o + i);
  for (; i < n; ++i) out[i] = f32_to_f16(in[i]);
}

inline void ConvertF16ToF32(const f16* HWY_RESTRICT in, float* HWY_RESTRICT out, uint64_t n) {
  const hn::ScalableTag<float> df;
  const hn::Rebind<hwy::float16_t, decltype(df)> dh;
  const uint64_t N = hn::Lanes(df);
  const auto* p = reinterpret_cast<const hwy::float16_t*>(in);
  uint64_t i = 0;
  for (; i + N <= n; i += N) hn::StoreU(hn::PromoteTo(df, hn::LoadU(dh, p + i)), df, out + i);
  for (; i < n; ++i) out[i] = f16_to_f32(in[i]);
}
#endif

// Round to nearest even on the integer bits, as the scalar reference does; Highway's own bf16
// demotion may truncate on some targets, so it is not used.
inline void ConvertF32ToBF16(const float* HWY_RESTRICT in, bf16* HWY_RESTRICT out, uint64_t n) {
  const hn::ScalableTag<uint32_t> du;
  const hn::Rebind<uint16_t, decltype(du)> du16;
  const hn::ScalableTag<float> df;
  const uint64_t N = hn::Lanes(du);
  auto* o = reinterpret_cast<uint16_t*>(out);
  const auto abs_mask = hn::Set(du, 0x7FFFFFFFu);
  const auto inf = hn::Set(du, 0x7F800000u);
  const auto bias = hn::Set(du, 0x7FFFu);
  const auto one = hn::Set(du, 1u);
  const auto quiet = hn::Set(du, 0x40u);
  uint64_t i = 0;
  for (; i + N <= n; i += N) {
    const auto bits = hn::BitCast(du, hn::LoadU(df, in + i));
    const auto rounded = hn::ShiftRight<16>(hn::Add(bits, hn::Add(bias, hn::And(hn::ShiftRight<16>(bits), one))));
    const auto nan = hn::Or(hn::ShiftRight<16>(bits), quiet);
    const auto is_nan = hn::Gt(hn::And(bits, abs_mask), inf);
    hn::StoreU(hn::TruncateTo(du16, hn::IfThenElse(is_nan, nan, rounded)), du16, o + i);
  }
  for (; i < n; ++i) out[i] = f32_to_bf16(in[i]);
}

inline void ConvertBF16ToF32(const bf16* HWY_RESTRICT in, float* HWY_RESTRICT out, uint64_t n) {
  const hn::ScalableTag<uint32_t> du;
  const hn::Rebind<uint16_t, decltype(du)> du16;
  const hn::ScalableTag<float> df;
  const uint64_t N = hn::Lanes(du);
  const auto* p = reinterpret_cast<const uint16_t*>(in);
  uint64_t i = 0;
  for (; i + N <= n; i += N)
    hn::StoreU(hn::BitCast(df, hn::ShiftLeft<16>(hn::PromoteTo(du, hn::LoadU(du16, p + i)))), df, out + i);
  for (; i < n; ++i) out[i] = bf16_to_f32(in[i]);
}

}  // namespace HWY_NAMESPACE
}  // namespace strata
HWY_AFTER_NAMESPACE();

#endif  // STRATA_KERNELS_CONVERT_INL_H_

// SIMD dequantizers of ggml's 32-element block types (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0), one source for
// every SIMD target (Google Highway). Included by ggml_dequant_simd.cc for dynamic dispatch and by
// the per-target tests; the scalar functions in ggml_dequant.cc are the oracles.
//
// The results equal the scalar ones bit for bit: every intermediate (q * d with d a binary16 value
// and q at most 5 bits) is exact in binary32, so each output is the single rounding of q * d + m
// whether or not the multiply and add fuse (see ggml_dequant.cc). A block's 32 outputs are written
// in vectors of the target's float width: its quants are read as that many bytes, widened to int32
// and converted.
#if defined(STRATA_KERNELS_GGML_DEQUANT_SIMD_INL_H_) == defined(HWY_TARGET_TOGGLE)
#ifdef STRATA_KERNELS_GGML_DEQUANT_SIMD_INL_H_
#undef STRATA_KERNELS_GGML_DEQUANT_SIMD_INL_H_
#else
#define STRATA_KERNELS_GGML_DEQUANT_SIMD_INL_H_
#endif

#include <hwy/highway.h>

#include <cstdint>
#include <cstring>

#include "strata/core/dtype.hpp"
#include "strata/kernels/ggml_blocks.hpp"

HWY_BEFORE_NAMESPACE();
namespace strata {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

namespace dequant_detail {
using DF = hn::CappedTag<float, 16>;  // at most half a block per vector
using DI = hn::RebindToSigned<DF>;
using DU8 = hn::Rebind<uint8_t, DF>;
using DI8 = hn::Rebind<int8_t, DF>;
constexpr size_t kHalf = kernels::kQK / 2, kBlock = kernels::kQK;

HWY_INLINE float H2F(uint16_t bits) { return f16_to_f32(f16{bits}); }

HWY_INLINE uint32_t Le32(const uint8_t* p) {
  uint32_t v;
  std::memcpy(&v, p, 4);
  return v;  // x86-64 and aarch64 builds are little-endian, as ggml's files are
}

// The low (high) nibbles of qs[j .. j + N), widened to float, or with bit 4 set from `qh5` bit
// (j + shift) for the 5-bit types.
template <bool kHigh>
HWY_INLINE hn::Vec<DF> Nibbles(const uint8_t* qs, size_t j) {
  const DF df;
  const DI di;
  const DU8 d8;
  const auto b = hn::LoadU(d8, qs + j);
  const auto n = kHigh ? hn::ShiftRight<4>(b) : hn::And(b, hn::Set(d8, uint8_t{0x0F}));
  return hn::ConvertTo(df, hn::BitCast(di, hn::PromoteTo(hn::RebindToUnsigned<DI>(), n)));
}

// Bit 4 for elements j .. j + N of a 5-bit block: bit (j + lane + offset) of qh, as 16.0f or 0.
HWY_INLINE hn::Vec<DF> FifthBit(uint32_t qh, size_t j, int offset) {
  const DF df;
  const hn::RebindToUnsigned<DI> du;
  const auto lane = hn::Iota(du, static_cast<uint32_t>(j + static_cast<size_t>(offset)));
  const auto bits = hn::And(hn::Set(du, qh) >> lane, hn::Set(du, 1u));
  return hn::ConvertTo(df, hn::BitCast(DI(), hn::ShiftLeft<4>(bits)));
}
}  // namespace dequant_detail

inline void DequantQ4_0(const kernels::BlockQ4_0* HWY_RESTRICT x, float* HWY_RESTRICT y, int64_t nb) {
  using namespace dequant_detail;
  const DF df;
  const size_t N = hn::Lanes(df);
  const auto eight = hn::Set(df, 8.0f);
  for (int64_t i = 0; i < nb; ++i, y += kernels::kQK) {
    const auto d = hn::Set(df, H2F(x[i].d));
    for (size_t j = 0; j < kHalf; j += N) {
      hn::StoreU(hn::Mul(hn::Sub(Nibbles<false>(x[i].qs, j), eight), d), df, y + j);
      hn::StoreU(hn::Mul(hn::Sub(Nibbles<true>(x[i].qs, j), eight), d), df, y + kHalf + j);
    }
  }
}

inline void DequantQ4_1(const kernels::BlockQ4_1* HWY_RESTRICT x, float* HWY_RESTRICT y, int64_t nb) {
  using namespace dequant_detail;
  const DF df;
  const size_t N = hn::Lanes(df);
  for (int64_t i = 0; i < nb; ++i, y += kernels::kQK) {
    const auto d = hn::Set(df, H2F(x[i].d)), m = hn::Set(df, H2F(x[i].m));
    for (size_t j = 0; j < kHalf; j += N) {
      hn::StoreU(hn::MulAdd(Nibbles<false>(x[i].qs, j), d, m), df, y + j);
      hn::StoreU(hn::MulAdd(Nibbles<true>(x[i].qs, j), d, m), df, y + kHalf + j);
    }
  }
}

inline void DequantQ5_0(const kernels::BlockQ5_0* HWY_RESTRICT x, float* HWY_RESTRICT y, int64_t nb) {
  using namespace dequant_detail;
  const DF df;
  const size_t N = hn::Lanes(df);
  const auto sixteen = hn::Set(df, 16.0f);
  for (int64_t i = 0; i < nb; ++i, y += kernels::kQK) {
    const auto d = hn::Set(df, H2F(x[i].d));
    const uint32_t qh = Le32(x[i].qh);
    for (size_t j = 0; j < kHalf; j += N) {
      const auto lo = hn::Add(Nibbles<false>(x[i].qs, j), FifthBit(qh, j, 0));
      const auto hi = hn::Add(Nibbles<true>(x[i].qs, j), FifthBit(qh, j, 16));
      hn::StoreU(hn::Mul(hn::Sub(lo, sixteen), d), df, y + j);
      hn::StoreU(hn::Mul(hn::Sub(hi, sixteen), d), df, y + kHalf + j);
    }
  }
}

inline void DequantQ5_1(const kernels::BlockQ5_1* HWY_RESTRICT x, float* HWY_RESTRICT y, int64_t nb) {
  using namespace dequant_detail;
  const DF df;
  const size_t N = hn::Lanes(df);
  for (int64_t i = 0; i < nb; ++i, y += kernels::kQK) {
    const auto d = hn::Set(df, H2F(x[i].d)), m = hn::Set(df, H2F(x[i].m));
    const uint32_t qh = Le32(x[i].qh);
    for (size_t j = 0; j < kHalf; j += N) {
      const auto lo = hn::Add(Nibbles<false>(x[i].qs, j), FifthBit(qh, j, 0));
      const auto hi = hn::Add(Nibbles<true>(x[i].qs, j), FifthBit(qh, j, 16));
      hn::StoreU(hn::MulAdd(lo, d, m), df, y + j);
      hn::StoreU(hn::MulAdd(hi, d, m), df, y + kHalf + j);
    }
  }
}

inline void DequantQ8_0(const kernels::BlockQ8_0* HWY_RESTRICT x, float* HWY_RESTRICT y, int64_t nb) {
  using namespace dequant_detail;
  const DF df;
  const DI di;
  const DI8 d8;
  const size_t N = hn::Lanes(df);
  for (int64_t i = 0; i < nb; ++i, y += kernels::kQK) {
    const auto d = hn::Set(df, H2F(x[i].d));
    for (size_t j = 0; j < kBlock; j += N)
      hn::StoreU(hn::Mul(hn::ConvertTo(df, hn::PromoteTo(di, hn::LoadU(d8, x[i].qs + j))), d), df, y + j);
  }
}

}  // namespace HWY_NAMESPACE
}  // namespace strata
HWY_AFTER_NAMESPACE();

#endif  // STRATA_KERNELS_GGML_DEQUANT_SIMD_INL_H_

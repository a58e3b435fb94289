// Group-quantized weight times a few tokens (group_matmul.hpp), one source for every SIMD target
// (Google Highway). Included by group_matmul.cc for dynamic dispatch and by the per-target tests.
//
// Each block of codes is widened to float once and used for up to four tokens. Within a group the
// sums are of (code - zero) x, exact products of small integers and inputs, and the group's scale
// multiplies the group's sum once.
#if defined(STRATA_KERNELS_GROUP_MATMUL_INL_H_) == defined(HWY_TARGET_TOGGLE)
#ifdef STRATA_KERNELS_GROUP_MATMUL_INL_H_
#undef STRATA_KERNELS_GROUP_MATMUL_INL_H_
#else
#define STRATA_KERNELS_GROUP_MATMUL_INL_H_
#endif

#include <hwy/cache_control.h>
#include <hwy/highway.h>

#include <type_traits>

#include "kernels/cpu/group_matmul.hpp"

HWY_BEFORE_NAMESPACE();
namespace strata::kernels {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

// At most 16 lanes, so that a 4-bit block's 16 bytes are a whole number of loads.
using QuantTag = hn::CappedTag<float, 16>;

// How far ahead of the block in use the codes are prefetched. One row read front to back is a
// single stream, which the hardware prefetchers alone serve at a fraction of a core's bandwidth.
#ifndef STRATA_GROUP_PREFETCH_BYTES
#define STRATA_GROUP_PREFETCH_BYTES 2048
#endif
inline constexpr int64_t kGroupPrefetchBytes = STRATA_GROUP_PREFETCH_BYTES;

// T (1..4) tokens. With one token, odd blocks accumulate into the second token's slots: the sums
// then form four independent chains, enough to hide the latency of the multiply-adds.
template <int T, int kBits>
HWY_NOINLINE void GroupTile(const GroupQuant& w, const float* HWY_RESTRICT xp, float* HWY_RESTRICT y, int64_t r0,
                            int64_t r1) {
  static_assert(kBits == 4 || kBits == 8, "4-bit or 8-bit codes");
  const QuantTag d;
  const hn::RebindToSigned<QuantTag> di;
  const hn::RebindToUnsigned<QuantTag> du;
  const hn::Rebind<uint8_t, QuantTag> d8;
  const int64_t N = static_cast<int64_t>(hn::Lanes(d));
  const int64_t xs = w.padded_cols(), row_bytes = w.row_bytes(), blocks = w.padded_group / kQuantBlock;
  const float* HWY_RESTRICT x0 = xp;
  const float* HWY_RESTRICT x1 = T > 1 ? xp + xs : xp;
  const float* HWY_RESTRICT x2 = T > 2 ? xp + 2 * xs : xp;
  const float* HWY_RESTRICT x3 = T > 3 ? xp + 3 * xs : xp;
  const auto nibble = hn::Set(du, 15u);
  for (int64_t r = r0; r < r1; ++r) {
    const uint8_t* HWY_RESTRICT cr = w.codes + r * row_bytes;
    const float* HWY_RESTRICT pr = w.params + r * w.groups * 2;
    auto a0 = hn::Zero(d), a1 = hn::Zero(d), a2 = hn::Zero(d), a3 = hn::Zero(d);
    for (int64_t k = 0; k < w.groups; ++k) {
      const auto zero = hn::Set(d, pr[2 * k + 1]);
      auto g0 = hn::Zero(d), g1 = hn::Zero(d), g2 = hn::Zero(d), g3 = hn::Zero(d);
      auto h0 = hn::Zero(d), h1 = hn::Zero(d), h2 = hn::Zero(d), h3 = hn::Zero(d);
      // Adds wa x[pa] and wb x[pb] for every token; `odd` picks the spare slots when T is 1.
      const auto accumulate = [&](hn::Vec<QuantTag> wa, int64_t pa, hn::Vec<QuantTag> wb, int64_t pb, bool odd) {
        if constexpr (T == 1) {
          if (odd) {
            g1 = hn::MulAdd(wa, hn::LoadU(d, x0 + pa), g1);
            h1 = hn::MulAdd(wb, hn::LoadU(d, x0 + pb), h1);
            return;
          }
        }
        g0 = hn::MulAdd(wa, hn::LoadU(d, x0 + pa), g0);
        h0 = hn::MulAdd(wb, hn::LoadU(d, x0 + pb), h0);
        if constexpr (T > 1) {
          g1 = hn::MulAdd(wa, hn::LoadU(d, x1 + pa), g1);
          h1 = hn::MulAdd(wb, hn::LoadU(d, x1 + pb), h1);
        }
        if constexpr (T > 2) {
          g2 = hn::MulAdd(wa, hn::LoadU(d, x2 + pa), g2);
          h2 = hn::MulAdd(wb, hn::LoadU(d, x2 + pb), h2);
        }
        if constexpr (T > 3) {
          g3 = hn::MulAdd(wa, hn::LoadU(d, x3 + pa), g3);
          h3 = hn::MulAdd(wb, hn::LoadU(d, x3 + pb), h3);
        }
      };
      const auto widen = [&](hn::Vec<decltype(du)> c) { return hn::Sub(hn::ConvertTo(d, hn::BitCast(di, c)), zero); };
      for (int64_t b = 0; b < blocks; ++b) {
        const int64_t p = k * w.padded_group + b * kQuantBlock;
        const bool odd = (b & 1) != 0;
        if ((p * kBits / 8) % 64 == 0) hwy::Prefetch(cr + p * kBits / 8 + kGroupPrefetchBytes);
        if constexpr (kBits == 4) {
          const uint8_t* HWY_RESTRICT cb = cr + p / 2;
          for (int64_t o = 0; o < kQuantBlock / 2; o += N) {
            const auto c = hn::PromoteTo(du, hn::LoadU(d8, cb + o));
            accumulate(widen(hn::And(c, nibble)), p + o, widen(hn::ShiftRight<4>(c)), p + kQuantBlock / 2 + o, odd);
          }
        } else {
          for (int64_t o = 0; o < kQuantBlock; o += 2 * N) {
            const auto ca = hn::PromoteTo(du, hn::LoadU(d8, cr + p + o));
            const auto cb = hn::PromoteTo(du, hn::LoadU(d8, cr + p + o + N));
            accumulate(widen(ca), p + o, widen(cb), p + o + N, odd);
          }
        }
      }
      const auto scale = hn::Set(d, pr[2 * k]);
      if constexpr (T == 1) {
        a0 = hn::MulAdd(scale, hn::Add(hn::Add(g0, h0), hn::Add(g1, h1)), a0);
      } else {
        a0 = hn::MulAdd(scale, hn::Add(g0, h0), a0);
        a1 = hn::MulAdd(scale, hn::Add(g1, h1), a1);
        if constexpr (T > 2) a2 = hn::MulAdd(scale, hn::Add(g2, h2), a2);
        if constexpr (T > 3) a3 = hn::MulAdd(scale, hn::Add(g3, h3), a3);
      }
    }
    y[r] = hn::GetLane(hn::SumOfLanes(d, a0));
    if constexpr (T > 1) y[w.rows + r] = hn::GetLane(hn::SumOfLanes(d, a1));
    if constexpr (T > 2) y[2 * w.rows + r] = hn::GetLane(hn::SumOfLanes(d, a2));
    if constexpr (T > 3) y[3 * w.rows + r] = hn::GetLane(hn::SumOfLanes(d, a3));
  }
}

template <int kBits>
HWY_INLINE void GroupTokens(const GroupQuant& w, const float* xp, int64_t tokens, float* y, int64_t r0, int64_t r1) {
  const int64_t xs = w.padded_cols();
  int64_t t = 0;
  for (; t + 4 <= tokens; t += 4) GroupTile<4, kBits>(w, xp + t * xs, y + t * w.rows, r0, r1);
  switch (tokens - t) {
    case 3: GroupTile<3, kBits>(w, xp + t * xs, y + t * w.rows, r0, r1); break;
    case 2: GroupTile<2, kBits>(w, xp + t * xs, y + t * w.rows, r0, r1); break;
    case 1: GroupTile<1, kBits>(w, xp + t * xs, y + t * w.rows, r0, r1); break;
    default: break;
  }
}

inline void GroupMatmul(const GroupQuant& w, const float* xp, int64_t tokens, float* y, int64_t r0, int64_t r1) {
  if (w.bits == 4)
    GroupTokens<4>(w, xp, tokens, y, r0, r1);
  else
    GroupTokens<8>(w, xp, tokens, y, r0, r1);
}

}  // namespace HWY_NAMESPACE
}  // namespace strata::kernels
HWY_AFTER_NAMESPACE();

#endif  // STRATA_KERNELS_GROUP_MATMUL_INL_H_

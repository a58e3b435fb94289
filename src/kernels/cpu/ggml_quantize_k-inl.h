// Q2_K, Q4_K, Q5_K and Q6_K row quantizers, one source for every SIMD target (Google Highway). Included by
// ggml_quantize_k.cc for dynamic dispatch and by the per-target tests; the scalar quantizers of
// ggml_quantize.cc are the oracle these must match byte for byte.
//
// The time goes into the scale searches, which run the same float operations once per sub-block
// (32 elements in Q4_K, 16 in Q6_K) over many candidate scales, with sums whose rounding decides
// which candidate wins. So the searches are vectorized across sub-blocks: lane k follows sub-block
// k through exactly the scalar sequence of operations (every sum in the scalar order), with the
// sub-blocks' elements transposed so that element l of every lane is one load. Branches of the
// scalar code become per-lane selects. The elementwise steps (final quants against the stored
// scales, packing) run in natural order. Of the per-super-block steps, Q4_K's make_qp_quants (with
// importance) runs across N super-blocks the same way; the others (8 or 16 values, cheap) stay in
// the shared scalar code.
//
// Exactness needs the same roundings as the reference, which keeps every product separate from the
// following add (no FMA): here each product goes through Rounded(), which hides it from the
// compiler so that -ffp-contract cannot fuse it either.
#if defined(STRATA_KERNELS_GGML_QUANTIZE_K_INL_H_) == defined(HWY_TARGET_TOGGLE)
#ifdef STRATA_KERNELS_GGML_QUANTIZE_K_INL_H_
#undef STRATA_KERNELS_GGML_QUANTIZE_K_INL_H_
#else
#define STRATA_KERNELS_GGML_QUANTIZE_K_INL_H_
#endif

#include <hwy/aligned_allocator.h>
#include <hwy/highway.h>

#include <algorithm>
#include <cstddef>  // offsetof
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "kernels/cpu/ggml_rows.hpp"
#include "strata/core/dtype.hpp"
#include "strata/kernels/ggml_blocks.hpp"

HWY_BEFORE_NAMESPACE();
namespace strata {
namespace HWY_NAMESPACE {
namespace ggml_k {

namespace hn = hwy::HWY_NAMESPACE;
using DF = hn::ScalableTag<float>;
using DI = hn::RebindToSigned<DF>;
using DU = hn::RebindToUnsigned<DF>;
using VF = hn::Vec<DF>;
using VI = hn::Vec<DI>;

constexpr float kMagic = 12582912.f;  // 1.5 * 2^23, ggml's nearest_int constant
constexpr float kGroupMaxEps = 1e-15f;
constexpr int kQkxGroups = 2;  // lane groups the Q4_K search runs together (two halves)

// Lambdas the searches call in their loops, inlined so that their state stays in registers.
#if defined(__GNUC__)
#define STRATA_INLINE_LAMBDA __attribute__((always_inline))
#else
#define STRATA_INLINE_LAMBDA
#endif

// The vector as computed, opaque to the optimiser (see the file comment).
template <class V>
HWY_INLINE V Rounded(V v) {
#if HWY_ARCH_X86 && HWY_TARGET != HWY_EMU128 && defined(__GNUC__)
  asm("" : "+v"(v.raw));
#elif defined(__GNUC__)
  asm("" : "+m"(v));
#else
  v = hn::IfThenElse(hn::MaskFromVec(v), v, v);
#endif
  return v;
}
template <class V>
HWY_INLINE V MulR(V a, V b) {
  return Rounded(hn::Mul(a, b));
}
// Scalar products of the per-candidate constants, rounded like the reference's prod().
HWY_INLINE float ProdS(float a, float b) {
  volatile float p = a * b;
  return p;
}

// float(clamp(nearest_int(v), lo, hi)) with ggml's nearest_int, for every v: the mantissa bits of
// v + 1.5 * 2^23, read as the integer ggml reads them (a defined value even for huge, infinite or
// NaN v, which degenerate blocks produce), then clamped. OR-ing the bits into 2^23 and subtracting
// 1.5 * 2^23 gives that integer exactly, as a float.
HWY_INLINE VF NearestClamped(VF v, VF lo, VF hi) {
  const DF df;
  const DU du;
  const VF t = hn::Add(v, hn::Set(df, kMagic));
  const VF f = hn::BitCast(df, hn::OrAnd(hn::Set(du, 0x4B000000u), hn::BitCast(du, t), hn::Set(du, 0x007FFFFFu)));
  return hn::Min(hn::Max(hn::Sub(f, hn::Set(df, kMagic)), lo), hi);
}

// dst[l * N + k] = src[k * stride + l] for l < len, k < N: element l of sub-block k. Lanes past
// `valid` sub-blocks read sub-block valid - 1 again (their results are discarded). len is a
// multiple of 16. AVX-512 transposes 16 x 16 tiles in registers (gathers are several times slower
// on CPUs with the gather-data-sampling microcode fix); other targets copy element by element.
HWY_INLINE void Transpose(const float* HWY_RESTRICT src, int stride, int len, size_t valid, float* HWY_RESTRICT dst) {
#if HWY_ARCH_X86 && HWY_TARGET <= HWY_AVX3
  static_assert(hn::MaxLanes(DF()) == 16, "AVX-512 tiles are 16 x 16");
  const float* rows[16];
  for (size_t k = 0; k < 16; ++k) rows[k] = src + static_cast<std::ptrdiff_t>(std::min(k, valid - 1)) * stride;
  for (int c = 0; c < len; c += 16, dst += 16 * 16) {
    __m512 r[16], t[16];
    for (int k = 0; k < 16; ++k) r[k] = _mm512_loadu_ps(rows[k] + c);
    // Pairs of rows interleaved by element, then by element pair: u[4j + m] holds, in 128-bit block
    // b, element 4b + m of rows 4j .. 4j + 3.
    for (int k = 0; k < 16; k += 2) {
      t[k] = _mm512_unpacklo_ps(r[k], r[k + 1]);
      t[k + 1] = _mm512_unpackhi_ps(r[k], r[k + 1]);
    }
    for (int j = 0; j < 16; j += 4) {
      const __m512d a0 = _mm512_castps_pd(t[j]), a1 = _mm512_castps_pd(t[j + 1]);
      const __m512d a2 = _mm512_castps_pd(t[j + 2]), a3 = _mm512_castps_pd(t[j + 3]);
      r[j] = _mm512_castpd_ps(_mm512_unpacklo_pd(a0, a2));
      r[j + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a0, a2));
      r[j + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(a1, a3));
      r[j + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(a1, a3));
    }
    // Then 128-bit blocks: even blocks of rows 0-7 beside those of 8-15 give columns m and 8 + m.
    for (int m = 0; m < 4; ++m) {
      const __m512 v0 = _mm512_shuffle_f32x4(r[m], r[4 + m], 0x88), w0 = _mm512_shuffle_f32x4(r[m], r[4 + m], 0xDD);
      const __m512 v1 = _mm512_shuffle_f32x4(r[8 + m], r[12 + m], 0x88);
      const __m512 w1 = _mm512_shuffle_f32x4(r[8 + m], r[12 + m], 0xDD);
      _mm512_store_ps(dst + 16 * m, _mm512_shuffle_f32x4(v0, v1, 0x88));
      _mm512_store_ps(dst + 16 * (8 + m), _mm512_shuffle_f32x4(v0, v1, 0xDD));
      _mm512_store_ps(dst + 16 * (4 + m), _mm512_shuffle_f32x4(w0, w1, 0x88));
      _mm512_store_ps(dst + 16 * (12 + m), _mm512_shuffle_f32x4(w0, w1, 0xDD));
    }
  }
#else
  const size_t N = hn::Lanes(DF());
  for (size_t k = 0; k < N; ++k) {
    const float* row = src + static_cast<std::ptrdiff_t>(std::min(k, valid - 1)) * stride;
    for (int l = 0; l < len; ++l) dst[static_cast<size_t>(l) * N + k] = row[l];
  }
#endif
}

// ---- Q4_K -------------------------------------------------------------------------------------------

// Outputs of the asymmetric search, one value per sub-block: the scale and -min ggml's
// make_qkx2/3_quants return, and the (iscale, min) pair whose quants it kept, which rebuild them:
// clamp(nearest_int(iscale * (x - min)), 0, nmax).
struct KxOut {
  float* scale;
  float* the_min;
  float* l_iscale;
  float* l_min;
};

// Which clamps of clamp(nearest_int(v), 0, nmax) a candidate pass needs. v = iscale * (x - min) is
// monotonic in x (each rounding is), so every v of a lane lies between iscale * (low - min) and
// iscale * (max - min), and those bounds decide it for all of the lane's elements at once:
// - kQFull: some |v| may reach 2^21 (or a product is not finite): ggml's bit-level nearest_int;
// - otherwise adding and removing 1.5 * 2^23 rounds v exactly (half to even), and a clamp is idle
//   where the bounds allow: v >= -0.5 rounds to 0 or more (-0.5 ties to the even +0, which is what
//   nearest_int then the clamp give), v < nmax + 0.5 rounds to nmax or less.
enum QMode { kQFull, kQBoth, kQLow, kQHigh, kQNone };

template <int mode>
HWY_INLINE VF QuantizeK(VF v, VF zero, VF vnmax, VF magic) {
  if constexpr (mode == kQFull) {
    return NearestClamped(v, zero, vnmax);
  } else if constexpr (mode == kQBoth) {
    return hn::Sub(hn::Add(hn::Min(hn::Max(v, zero), vnmax), magic), magic);
  } else if constexpr (mode == kQLow) {
    return hn::Sub(hn::Add(hn::Max(v, zero), magic), magic);
  } else if constexpr (mode == kQHigh) {
    return hn::Sub(hn::Add(hn::Min(v, vnmax), magic), magic);
  } else {
    return hn::Sub(hn::Add(v, magic), magic);
  }
}

// The mode for K groups: iscale[k], min[k] the candidate's, low[k] and max[k] the sub-blocks'
// extremes; flat lanes (max == min) are left out, their results being discarded.
template <int K, int nmax>
HWY_INLINE QMode PassMode(const VF* iscale, const VF* min, const VF* low, const VF* max, const hn::Mask<DF>* flat) {
  const DF df;
  const VF limit = hn::Set(df, 2097152.f), neg_limit = hn::Set(df, -2097152.f);
  const VF top = hn::Set(df, static_cast<float>(nmax) + 0.5f), bottom = hn::Set(df, -0.5f);
  bool bounded = true, high_idle = true, low_idle = true;
  for (int k = 0; k < K; ++k) {
    // The two ends, in either order (iscale may be negative after a degenerate fit); a NaN fails
    // every test.
    const VF a = MulR(iscale[k], hn::Sub(max[k], min[k])), b = MulR(iscale[k], hn::Sub(low[k], min[k]));
    const auto in = [&](VF v, VF lo, VF hi) { return hn::And(hn::Gt(v, lo), hn::Lt(v, hi)); };
    bounded = bounded && hn::AllTrue(df, hn::Or(flat[k], hn::And(in(a, neg_limit, limit), in(b, neg_limit, limit))));
    high_idle = high_idle && hn::AllTrue(df, hn::Or(flat[k], hn::And(hn::Lt(a, top), hn::Lt(b, top))));
    low_idle = low_idle && hn::AllTrue(df, hn::Or(flat[k], hn::And(hn::Ge(a, bottom), hn::Ge(b, bottom))));
  }
  if (!bounded) return kQFull;
  if (high_idle) return low_idle ? kQNone : kQLow;
  return low_idle ? kQHigh : kQBoth;
}

// Calls f(std::integral_constant<int, mode>) for a mode known at run time.
template <class F>
HWY_INLINE void WithMode(QMode mode, const F& f) {
  switch (mode) {
    case kQFull: return f(std::integral_constant<int, kQFull>());
    case kQBoth: return f(std::integral_constant<int, kQBoth>());
    case kQLow: return f(std::integral_constant<int, kQLow>());
    case kQHigh: return f(std::integral_constant<int, kQHigh>());
    case kQNone: return f(std::integral_constant<int, kQNone>());
  }
}

// make_qkx_quants of ggml_quantize.cc (n 32 with nmax 15 for Q4_K or 31 for Q5_K; n 16 with nmax 3
// for Q2_K), lane k of group g on sub-block g * N + k of xt / wt (K groups, each transposed, n x N).
// lq: scratch of K x n x N. mad: the errors sum w |diff| (use_mad, Q2_K without importance) instead
// of w diff^2.
//
// Per candidate each group runs pass 1 (quants, three weighted sums), the fit (D and the fitted scale
// and min: divisions), the error pass and the choice, a chain in which every step waits for the one
// before (each accepted candidate moves the minimum the next one quantizes against). Run in
// lockstep, every group would wait at the same time for its divisions, which one divider serves.
// So an even K runs as two halves half a candidate apart: one loop over the elements runs the error
// pass of one half beside pass 1 of the other, and each half's divisions (its fit, its next
// candidate's iscale) overlap the other half's loop. The next candidate's iscale is divided out both
// ways (minimum kept, minimum replaced) during the error pass and picked by the comparison; the
// least-squares scale with the minimum clipped to 0 is divided out only where some lane clips.
template <int K, int nmax, int n = 32, bool mad = false>
HWY_INLINE void SearchQkx(const float* HWY_RESTRICT xt, const float* HWY_RESTRICT wt, float* HWY_RESTRICT lq,
                          float rmin, float rdelta, int nstep, const KxOut& out) {
  static_assert(K == 1 || K % 2 == 0, "one group, or two halves of K / 2");
  constexpr int halves = K == 1 ? 1 : 2, HK = K / halves;  // groups per half
  const DF df;
  const size_t N = hn::Lanes(df);
  using M = hn::Mask<DF>;
  const VF zero = hn::Zero(df), vnmax = hn::Set(df, static_cast<float>(nmax)), magic = hn::Set(df, kMagic);
  auto at = [&](int k, int l) { return (static_cast<size_t>(k) * n + static_cast<size_t>(l)) * N; };
  auto X = [&](int k, int l) { return hn::Load(df, xt + at(k, l)); };
  auto W = [&](int k, int l) { return hn::Load(df, wt + at(k, l)); };
  // The candidates' numerators (rmin + rdelta * is) + nmax, in the reference's order.
  auto num = [&](int is) { return hn::Set(df, (rmin + ProdS(rdelta, static_cast<float>(is))) + static_cast<float>(nmax)); };

  VF min[K], max[K], low[K], sum_w[K], sum_x[K], iscale[K], scale[K], best_error[K], l_iscale[K], l_min[K];
  M flat[K];
  for (int k = 0; k < K; ++k) {
    min[k] = max[k] = X(k, 0);
    sum_w[k] = W(k, 0);
    sum_x[k] = MulR(sum_w[k], X(k, 0));
  }
  for (int l = 1; l < n; ++l)
    for (int k = 0; k < K; ++k) {
      const VF x = X(k, l), w = W(k, l);
      min[k] = hn::IfThenElse(hn::Lt(x, min[k]), x, min[k]);
      max[k] = hn::IfThenElse(hn::Gt(x, max[k]), x, max[k]);
      sum_w[k] = hn::Add(sum_w[k], w);
      sum_x[k] = hn::Add(sum_x[k], MulR(w, x));
    }
  for (int k = 0; k < K; ++k) {
    low[k] = min[k];
    min[k] = hn::IfThenElse(hn::Gt(min[k], zero), zero, min[k]);
    flat[k] = hn::Eq(max[k], min[k]);
    iscale[k] = hn::Div(vnmax, hn::Sub(max[k], min[k]));
    scale[k] = hn::Div(hn::Set(df, 1.f), iscale[k]);
  }
  // The starting quants against nmax / (max - min), and their error.
  WithMode(PassMode<K, nmax>(iscale, min, low, max, flat), [&](auto mode) {
    // Locals, not the arrays above, so that the sums stay in registers.
    VF is_[K], mn[K], sc[K], err[K];
    for (int k = 0; k < K; ++k) is_[k] = iscale[k], mn[k] = min[k], sc[k] = scale[k], err[k] = zero;
    for (int l = 0; l < n; ++l)
      for (int k = 0; k < K; ++k) {
        const VF x = X(k, l);
        const VF q = QuantizeK<decltype(mode)::value>(MulR(is_[k], hn::Sub(x, mn[k])), zero, vnmax, magic);
        VF diff = hn::Sub(hn::Add(MulR(sc[k], q), mn[k]), x);
        diff = mad ? hn::Abs(diff) : MulR(diff, diff);
        err[k] = hn::Add(err[k], MulR(W(k, l), diff));
      }
    for (int k = 0; k < K; ++k) best_error[k] = err[k];
  });
  for (int k = 0; k < K; ++k) {
    l_iscale[k] = iscale[k];
    l_min[k] = min[k];
    iscale[k] = hn::Div(num(0), hn::Sub(max[k], min[k]));
  }

  // A candidate in flight, per group: pass 1's sums, the fit, the next candidate's two iscales.
  VF sum_l[K], sum_l2[K], sum_xl[K], this_scale[K], this_min[K], keep[K], take[K], cur_error[K];
  M solvable[K];
  // One loop over the elements: pass 1 of half P with the iscale and min in place (P < 0: none),
  // beside the error pass of half E against its fit (E < 0: none).
  auto pass = [&](auto mode, auto P_, auto E_) STRATA_INLINE_LAMBDA {
    constexpr int md = decltype(mode)::value, P = decltype(P_)::value, E = decltype(E_)::value;
    // Locals: stores through lq must not make the compiler reload what the closure refers to.
    const float* HWY_RESTRICT xs = xt;
    const float* HWY_RESTRICT ws = wt;
    float* HWY_RESTRICT qs = lq;
    const size_t lanes = N;
    auto off = [lanes](int g, int l) { return (static_cast<size_t>(g) * n + static_cast<size_t>(l)) * lanes; };
    VF is_[HK], mn[HK], sl[HK], sl2[HK], sxl[HK], sc[HK], tm[HK], err[HK];
    for (int k = 0; k < HK; ++k) {
      if constexpr (P >= 0) is_[k] = iscale[P * HK + k], mn[k] = min[P * HK + k], sl[k] = sl2[k] = sxl[k] = zero;
      if constexpr (E >= 0) sc[k] = this_scale[E * HK + k], tm[k] = this_min[E * HK + k], err[k] = zero;
    }
    for (int l = 0; l < n; ++l) {
      if constexpr (P >= 0)
        for (int k = 0; k < HK; ++k) {
          const int g = P * HK + k;
          const VF x = hn::Load(df, xs + off(g, l));
          const VF q = QuantizeK<md>(MulR(is_[k], hn::Sub(x, mn[k])), zero, vnmax, magic);
          hn::Store(q, df, qs + off(g, l));
          const VF wl = MulR(hn::Load(df, ws + off(g, l)), q);
          sl[k] = hn::Add(sl[k], wl);
          sl2[k] = hn::Add(sl2[k], MulR(wl, q));
          sxl[k] = hn::Add(sxl[k], MulR(wl, x));
        }
      if constexpr (E >= 0)
        for (int k = 0; k < HK; ++k) {
          const int g = E * HK + k;
          const VF q = hn::Load(df, qs + off(g, l));
          VF diff = hn::Sub(hn::Add(MulR(sc[k], q), tm[k]), hn::Load(df, xs + off(g, l)));
          diff = mad ? hn::Abs(diff) : MulR(diff, diff);
          err[k] = hn::Add(err[k], MulR(hn::Load(df, ws + off(g, l)), diff));
        }
    }
    for (int k = 0; k < HK; ++k) {
      if constexpr (P >= 0) sum_l[P * HK + k] = sl[k], sum_l2[P * HK + k] = sl2[k], sum_xl[P * HK + k] = sxl[k];
      if constexpr (E >= 0) cur_error[E * HK + k] = err[k];
    }
  };
  using None = std::integral_constant<int, -1>;
  // Pass 1 of half h beside the error pass of half e (e < 0: none).
  auto pass1 = [&](auto h_, auto e_) STRATA_INLINE_LAMBDA {
    constexpr int h = decltype(h_)::value;
    WithMode(PassMode<HK, nmax>(iscale + h * HK, min + h * HK, low + h * HK, max + h * HK, flat + h * HK),
             [&](auto mode) STRATA_INLINE_LAMBDA { pass(mode, h_, e_); });
  };
  auto error_only = [&](auto e_) STRATA_INLINE_LAMBDA { pass(std::integral_constant<int, kQNone>(), None(), e_); };
  // The fit of candidate is for half h, and the two iscales of candidate is + 1.
  auto fit = [&](int h, int is) STRATA_INLINE_LAMBDA {
    M clip[HK];
    bool any_clip = false;
    for (int k = 0; k < HK; ++k) {
      const int g = h * HK + k;
      const VF D = hn::Sub(MulR(sum_w[g], sum_l2[g]), MulR(sum_l[g], sum_l[g]));
      solvable[g] = hn::Gt(D, zero);
      this_scale[g] = hn::Div(hn::Sub(MulR(sum_w[g], sum_xl[g]), MulR(sum_x[g], sum_l[g])), D);
      const VF fitted_min = hn::Div(hn::Sub(MulR(sum_l2[g], sum_x[g]), MulR(sum_l[g], sum_xl[g])), D);
      clip[k] = hn::Gt(fitted_min, zero);
      any_clip = any_clip || !hn::AllFalse(df, clip[k]);
      this_min[g] = hn::IfThenElse(clip[k], zero, fitted_min);
    }
    if (any_clip)
      for (int k = 0; k < HK; ++k) {
        const int g = h * HK + k;
        this_scale[g] = hn::IfThenElse(clip[k], hn::Div(sum_xl[g], sum_l2[g]), this_scale[g]);
      }
    if (is < nstep)
      for (int k = 0; k < HK; ++k) {
        const int g = h * HK + k;
        keep[g] = hn::Div(num(is + 1), hn::Sub(max[g], min[g]));
        take[g] = hn::Div(num(is + 1), hn::Sub(max[g], this_min[g]));
      }
  };
  // The choice for half h after its error pass (an unsolvable lane, D <= 0, keeps its state).
  auto choose = [&](int h, int is) STRATA_INLINE_LAMBDA {
    for (int k = 0; k < HK; ++k) {
      const int g = h * HK + k;
      const M better = hn::And(solvable[g], hn::Lt(cur_error[g], best_error[g]));
      best_error[g] = hn::IfThenElse(better, cur_error[g], best_error[g]);
      scale[g] = hn::IfThenElse(better, this_scale[g], scale[g]);
      l_iscale[g] = hn::IfThenElse(better, iscale[g], l_iscale[g]);
      l_min[g] = hn::IfThenElse(better, min[g], l_min[g]);
      min[g] = hn::IfThenElse(better, this_min[g], min[g]);
      if (is < nstep) iscale[g] = hn::IfThenElse(better, take[g], keep[g]);
    }
  };
  using H0 = std::integral_constant<int, 0>;
  if constexpr (halves == 1) {
    for (int is = 0; is <= nstep; ++is) {
      pass1(H0(), None());
      fit(0, is);
      error_only(H0());
      choose(0, is);
    }
  } else {
    using H1 = std::integral_constant<int, 1>;
    pass1(H0(), None());
    fit(0, 0);
    for (int is = 0; is <= nstep; ++is) {
      pass1(H1(), H0());  // half 1's candidate is beside half 0's error pass
      choose(0, is);
      fit(1, is);
      if (is < nstep) {
        pass1(H0(), H1());  // half 0's candidate is + 1 beside half 1's error pass
        choose(1, is);
        fit(0, is + 1);
      } else {
        error_only(H1());
        choose(1, is);
      }
    }
  }
  // A flat sub-block keeps quants 0 (iscale 0 rebuilds them), scale 0 and its min.
  for (int k = 0; k < K; ++k) {
    const size_t o = static_cast<size_t>(k) * N;
    hn::Store(hn::IfThenZeroElse(flat[k], scale[k]), df, out.scale + o);
    hn::Store(hn::Neg(min[k]), df, out.the_min + o);
    hn::Store(hn::IfThenZeroElse(flat[k], l_iscale[k]), df, out.l_iscale + o);
    hn::Store(hn::IfThenZeroElse(flat[k], l_min[k]), df, out.l_min + o);
  }
}

// ggml's nearest_int as an integer, for every v: the low mantissa bits of v + 1.5 * 2^23.
HWY_INLINE VI GgmlNearestInt(VF v) {
  const DF df;
  const DI di;
  const VI b = hn::BitCast(di, hn::Add(v, hn::Set(df, kMagic)));
  return hn::Sub(hn::And(b, hn::Set(di, 0x007FFFFF)), hn::Set(di, 0x00400000));
}

// ggml's nearest_int of one float, for the few scalar steps (its argument already rounded).
HWY_INLINE int GgmlNearestIntScalar(float v) {
  const float t = v + kMagic;
  int32_t i;
  std::memcpy(&i, &t, sizeof i);
  return (i & 0x007FFFFF) - 0x00400000;
}

// The refinement tries of make_qp_quants and make_q3_quants, per lane: up to five passes over the n
// quants in order, each moving one quant to quant(x sl2 / slx) (the sums without it) where that
// raises sumlx^2 / suml2. make_qp_quants asks sl2 > 0 before the move and keeps its quants as bytes
// (q3 false); make_q3_quants asks it after the move and keeps them signed (q3 true). The tries stop
// when no lane outside `flat` changes: a lane that changed nothing in a try would change nothing in
// the next, so running on is exact.
template <int n, bool q3, class Quant>
HWY_INLINE void RefineQuants(const VF* x, const VF* w, const VF* wx, hn::Mask<DF> flat, const Quant& quant, VI* L,
                             VF& sumlx, VF& suml2) {
  const DF df;
  const DI di;
  using M = hn::Mask<DF>;
  const VF zero = hn::Zero(df);
  for (int itry = 0; itry < 5; ++itry) {
    M changed = hn::FirstN(df, 0);
    for (int i = 0; i < n; ++i) {
      const VF lo = hn::ConvertTo(df, L[i]);
      const VF slx = hn::Sub(sumlx, MulR(wx[i], lo));
      const VF sl2 = hn::Sub(suml2, MulR(MulR(w[i], lo), lo));
      const M usable = q3 ? hn::Gt(slx, zero) : hn::And(hn::Gt(slx, zero), hn::Gt(sl2, zero));
      const VI li = quant(hn::Div(MulR(x[i], sl2), slx));
      const M differs = hn::RebindMask(df, hn::Ne(li, L[i]));
      const VF l = hn::ConvertTo(df, li);
      const VF slx_new = hn::Add(slx, MulR(wx[i], l));
      const VF sl2_new = hn::Add(sl2, MulR(MulR(w[i], l), l));
      M gains = hn::Gt(MulR(MulR(slx_new, slx_new), suml2), MulR(MulR(sumlx, sumlx), sl2_new));
      if (q3) gains = hn::And(hn::Gt(sl2_new, zero), gains);
      const M accept = hn::And(hn::And(usable, differs), gains);
      L[i] = hn::IfThenElse(hn::RebindMask(di, accept), q3 ? li : hn::And(li, hn::Set(di, 0xFF)), L[i]);
      sumlx = hn::IfThenElse(accept, slx_new, sumlx);
      suml2 = hn::IfThenElse(accept, sl2_new, suml2);
      changed = hn::Or(changed, accept);
    }
    if (hn::AllFalse(df, hn::AndNot(flat, changed))) break;
  }
}

// make_qp_quants of ggml_quantize.cc (n 8 with nmax 63 for Q4_K and Q5_K; n 16 with nmax 15 for
// Q2_K) for N super-blocks at once: lane k fits the n values xt[i * N + k] (a super-block's
// sub-block scales or mins) with weights wt[i * N + k],
// through the scalar sequence of operations, each branch a per-lane select. Stores the quants as
// ggml keeps them (an int cast to uint8_t, so a negative quant wraps, as there) in L[i * N + k]
// and returns the fitted scale per lane. The refinement tries stop when no lane changes: a lane
// that changed nothing in a try would change nothing in the next, so running on is exact.
template <int n, int nmax>
HWY_INLINE VF QpQuants(const float* HWY_RESTRICT xt, const float* HWY_RESTRICT wt, int32_t* HWY_RESTRICT L_out) {
  const DF df;
  const DI di;
  const size_t N = hn::Lanes(df);
  using M = hn::Mask<DF>;
  const VF zero = hn::Zero(df), one = hn::Set(df, 1.f);
  const VI inmax = hn::Set(di, nmax), byte = hn::Set(di, 0xFF);
  VF x[n], w[n], wx[n];
  VF max = zero;
  for (int i = 0; i < n; ++i) {
    x[i] = hn::Load(df, xt + static_cast<size_t>(i) * N);
    w[i] = hn::Load(df, wt + static_cast<size_t>(i) * N);
    max = hn::IfThenElse(hn::Gt(max, x[i]), max, x[i]);
  }
  const M flat = hn::Lt(max, hn::Set(df, kGroupMaxEps));
  VF iscale = hn::Div(hn::Set(df, static_cast<float>(nmax)), max);
  VF best = zero;
  {
    const VF scale = hn::Div(one, iscale);
    for (int i = 0; i < n; ++i) {
      const VF l = hn::ConvertTo(df, hn::And(GgmlNearestInt(MulR(iscale, x[i])), byte));
      const VF diff = hn::Sub(x[i], MulR(scale, l));
      best = hn::Add(best, MulR(MulR(w[i], diff), diff));
    }
  }
  for (int is = -4; is <= 4; ++is) {
    if (is == 0) continue;
    const VF isc = hn::Div(hn::Set(df, ProdS(0.1f, static_cast<float>(is)) + static_cast<float>(nmax)), max);
    const VF sc = hn::Div(one, isc);
    VF mse = zero;
    for (int i = 0; i < n; ++i) {
      const VF l = hn::ConvertTo(df, hn::Min(GgmlNearestInt(MulR(isc, x[i])), inmax));
      const VF diff = hn::Sub(x[i], MulR(sc, l));
      mse = hn::Add(mse, MulR(MulR(w[i], diff), diff));
    }
    const M better = hn::Lt(mse, best);
    best = hn::IfThenElse(better, mse, best);
    iscale = hn::IfThenElse(better, isc, iscale);
  }
  VI L[n];
  VF sumlx = zero, suml2 = zero;
  for (int i = 0; i < n; ++i) {
    const VI li = hn::Min(GgmlNearestInt(MulR(iscale, x[i])), inmax);
    L[i] = hn::And(li, byte);
    const VF l = hn::ConvertTo(df, li);
    wx[i] = MulR(w[i], x[i]);
    sumlx = hn::Add(sumlx, MulR(wx[i], l));
    suml2 = hn::Add(suml2, MulR(MulR(w[i], l), l));
  }
  RefineQuants<n, false>(x, w, wx, flat, [&](VF v) { return hn::Min(GgmlNearestInt(v), inmax); }, L, sumlx, suml2);
  const auto iflat = hn::RebindMask(di, flat);
  for (int i = 0; i < n; ++i) hn::Store(hn::IfThenZeroElse(iflat, L[i]), di, L_out + static_cast<size_t>(i) * N);
  return hn::IfThenZeroElse(flat, hn::IfThenElseZero(hn::Gt(suml2, zero), hn::Div(sumlx, suml2)));
}

// The super-block step of the importance paths for the nsb super-blocks of a row, N at a time: each
// super-block's n sub-block scales and n mins (in order) fitted by make_qp_quants (nmax) with the
// sub-blocks' summed weights sw; then pack(i, Ls, Lm, d, m) receives super-block i's quants (as ggml
// keeps them: uint8_t) and the two fitted scales.
template <int n, int nmax, class Pack>
HWY_INLINE void FitScalesQp(const float* HWY_RESTRICT scales, const float* HWY_RESTRICT mins,
                            const float* HWY_RESTRICT sw, int64_t nsb, const Pack& pack) {
  const DF df;
  const size_t N = hn::Lanes(df);
  auto buf = hwy::AllocateAligned<float>(3 * n * N);
  auto ibuf = hwy::AllocateAligned<int32_t>(2 * n * N);
  float* st = buf.get();
  float* mt = st + n * N;
  float* wt = mt + n * N;
  int32_t* Ls = ibuf.get();
  int32_t* Lm = Ls + n * N;
  for (int64_t s0 = 0; s0 < nsb; s0 += static_cast<int64_t>(N)) {
    const auto valid = static_cast<size_t>(std::min<int64_t>(static_cast<int64_t>(N), nsb - s0));
    for (size_t k = 0; k < N; ++k) {
      const int64_t o = n * (s0 + static_cast<int64_t>(std::min(k, valid - 1)));
      for (int i = 0; i < n; ++i) {
        st[static_cast<size_t>(i) * N + k] = scales[o + i];
        mt[static_cast<size_t>(i) * N + k] = mins[o + i];
        wt[static_cast<size_t>(i) * N + k] = sw[o + i];
      }
    }
    HWY_ALIGN float d[hn::MaxLanes(df)], m[hn::MaxLanes(df)];
    hn::Store(QpQuants<n, nmax>(st, wt, Ls), df, d);
    hn::Store(QpQuants<n, nmax>(mt, wt, Lm), df, m);
    for (size_t k = 0; k < valid; ++k) {
      uint8_t ls[n], lm[n];
      for (int i = 0; i < n; ++i) {
        ls[i] = static_cast<uint8_t>(Ls[static_cast<size_t>(i) * N + k]);
        lm[i] = static_cast<uint8_t>(Lm[static_cast<size_t>(i) * N + k]);
      }
      pack(s0 + static_cast<int64_t>(k), ls, lm, d[k], m[k]);
    }
  }
}

// quantize_row_q4_K_impl's (and q5_K's) super-block step: the eight sub-block scales and mins per
// super-block, packed into y's d, dmin and scales as the reference packs them (Q5_K's clamps the
// quants to 63 first, Q4_K's does not).
HWY_INLINE void EncodeScalesQ4K(const float* HWY_RESTRICT scales, const float* HWY_RESTRICT mins,
                                const float* HWY_RESTRICT sw, int64_t nsb, bool clamp63,
                                kernels::BlockQ4_K* HWY_RESTRICT y) {
  FitScalesQp<8, 63>(scales, mins, sw, nsb, [&](int64_t i, uint8_t* ls, uint8_t* lm, float d, float m) {
    if (clamp63)
      for (int j = 0; j < 8; ++j) {
        ls[j] = std::min<uint8_t>(63, ls[j]);
        lm[j] = std::min<uint8_t>(63, lm[j]);
      }
    kernels::detail::pack_q4_k_scales(ls, lm, d, m, y[i]);
  });
}

// 2 * sum(x^2) / 256 over each super-block (quantize_row_q*_K_impl's sigma2; Q2_K's, not doubled:
// sum(x^2) / 256), the sum in element order, N super-blocks at a time.
HWY_INLINE void SuperBlockSigma2(const float* HWY_RESTRICT x, int64_t nsb, float* HWY_RESTRICT sigma2,
                                 bool doubled = true) {
  const DF df;
  const size_t N = hn::Lanes(df);
  auto t = hwy::AllocateAligned<float>(kernels::kQK_K * N);
  for (int64_t s0 = 0; s0 < nsb; s0 += static_cast<int64_t>(N)) {
    const auto valid = static_cast<size_t>(std::min<int64_t>(static_cast<int64_t>(N), nsb - s0));
    Transpose(x + s0 * kernels::kQK_K, kernels::kQK_K, kernels::kQK_K, valid, t.get());
    VF s = hn::Zero(df);
    for (int e = 0; e < kernels::kQK_K; ++e) {
      const VF v = hn::Load(df, t.get() + static_cast<size_t>(e) * N);
      s = hn::Add(s, MulR(v, v));
    }
    HWY_ALIGN float lanes[hn::MaxLanes(df)];
    if (doubled) s = MulR(hn::Set(df, 2.f), s);
    hn::Store(hn::Div(s, hn::Set(df, static_cast<float>(kernels::kQK_K))), df, lanes);
    for (size_t k = 0; k < valid; ++k) sigma2[s0 + static_cast<int64_t>(k)] = lanes[k];
  }
}

// quantize_row_q*_K_impl's weights of N sub-blocks of n (first .. first + valid - 1, transposed in
// xk): qw * sqrt(sigma2 + x^2), sigma2 of each lane's super-block, into wk (transposed), and each
// sub-block's sum of them, in element order, into sw (N values).
template <int n>
HWY_INLINE void ImportanceWeights(const float* HWY_RESTRICT importance, const float* HWY_RESTRICT sigma2,
                                  int64_t first, size_t valid, const float* HWY_RESTRICT xk, float* HWY_RESTRICT wk,
                                  float* HWY_RESTRICT sw) {
  const DF df;
  const size_t N = hn::Lanes(df);
  Transpose(importance + n * first, n, n, valid, wk);
  HWY_ALIGN float s2[hn::MaxLanes(df)];
  for (size_t j = 0; j < N; ++j)
    s2[j] = sigma2[(first + static_cast<int64_t>(std::min(j, valid - 1))) / (kernels::kQK_K / n)];
  const VF vs2 = hn::Load(df, s2);
  VF s = hn::Zero(df);
  for (int l = 0; l < n; ++l) {
    const VF v = hn::Load(df, xk + static_cast<size_t>(l) * N);
    const VF w = MulR(hn::Load(df, wk + static_cast<size_t>(l) * N), hn::Sqrt(hn::Add(vs2, MulR(v, v))));
    hn::Store(w, df, wk + static_cast<size_t>(l) * N);
    s = hn::Add(s, w);
  }
  hn::Store(s, df, sw);
}

// Quants of n elements (a multiple of N) into int32 q[]: against the stored scale d and min dm,
// clamp(nearest_int((x + dm) / d), 0, nmax); where d is 0, the search's own quants.
HWY_INLINE void RequantizeK4(const float* HWY_RESTRICT x, float d, float dm, float l_iscale, float l_min, int nmax,
                             int n, int32_t* HWY_RESTRICT q) {
  const DF df;
  const DI di;
  const size_t N = hn::Lanes(df);
  // ggml's integer nearest_int, clamped as integers (no float-to-int conversion).
  const VI izero = hn::Zero(di), inmax = hn::Set(di, nmax);
  auto clamped = [&](VF v) { return hn::Min(hn::Max(GgmlNearestInt(v), izero), inmax); };
  if (d != 0) {
    const VF vd = hn::Set(df, d), vdm = hn::Set(df, dm);
    for (int l = 0; l < n; l += static_cast<int>(N))
      hn::Store(clamped(hn::Div(hn::Add(hn::LoadU(df, x + l), vdm), vd)), di, q + l);
  } else {
    const VF vi = hn::Set(df, l_iscale), vm = hn::Set(df, l_min);
    for (int l = 0; l < n; l += static_cast<int>(N)) hn::Store(clamped(MulR(vi, hn::Sub(hn::LoadU(df, x + l), vm))), di, q + l);
  }
}

// A row's asymmetric search results, per sub-block (padded to whole batches): the scale, -min, the
// summed importance weights (with importance), and the (iscale, min) that rebuild the kept quants.
struct KxRow {
  hwy::AlignedFreeUniquePtr<float[]> buf;
  float* scales;
  float* mins;
  float* sw;
  float* l_iscale;
  float* l_min;
};

// The sub-blocks of len elements of a row of n, kQkxGroups x N at a time: each batch transposed, its
// weights set by weigh(xk, wk) per group without importance, or to quantize_row_q*_K_impl's with it
// (sigma2 of each super-block doubled or not, as the type's reference has it), then searched by
// search(xt, wt, lq, out).
template <int len, class Weigh, class Search>
HWY_INLINE KxRow SearchRowQkx(const float* HWY_RESTRICT x, int64_t n, const float* HWY_RESTRICT importance,
                              bool doubled_sigma2, const Weigh& weigh, const Search& search) {
  const DF df;
  const size_t N = hn::Lanes(df);
  const int64_t nsb = n / kernels::kQK_K, nsub = n / len;
  // Scratch: xt, wt, lq (len x G each), then the results, then sigma2.
  constexpr int K = kQkxGroups;
  const size_t G = K * N;
  const int64_t padded = (nsub + static_cast<int64_t>(G) - 1) / static_cast<int64_t>(G) * static_cast<int64_t>(G);
  KxRow r;
  r.buf = hwy::AllocateAligned<float>(3 * len * G + 5 * static_cast<size_t>(padded) + static_cast<size_t>(nsb));
  float* xt = r.buf.get();
  float* wt = xt + len * G;
  float* lq = wt + len * G;
  r.scales = lq + len * G;
  r.mins = r.scales + padded;
  r.sw = r.mins + padded;
  r.l_iscale = r.sw + padded;
  r.l_min = r.l_iscale + padded;
  float* sigma2 = r.l_min + padded;
  if (importance) SuperBlockSigma2(x, nsb, sigma2, doubled_sigma2);

  for (int64_t g = 0; g < nsub; g += static_cast<int64_t>(G)) {
    for (int k = 0; k < K; ++k) {
      // Past the row's end a group re-reads its last sub-block; those results are never read.
      const int64_t first = std::min(g + k * static_cast<int64_t>(N), nsub - 1);
      const size_t valid = static_cast<size_t>(std::min<int64_t>(static_cast<int64_t>(N), nsub - first));
      float* xk = xt + len * N * static_cast<size_t>(k);
      float* wk = wt + len * N * static_cast<size_t>(k);
      Transpose(x + len * first, len, len, valid, xk);
      if (!importance)
        weigh(xk, wk);
      else
        ImportanceWeights<len>(importance, sigma2, first, valid, xk, wk, r.sw + g + k * static_cast<int64_t>(N));
    }
    search(xt, wt, lq, KxOut{r.scales + g, r.mins + g, r.l_iscale + g, r.l_min + g});
  }
  return r;
}

// Q4_K (nmax 15) and Q5_K (nmax 31), which share the search, the scale encoding and the header
// layout (d, dmin, twelve bytes of scales: BlockQ4_K's first fields). Sub-blocks are searched N at a
// time across the row; then each super-block's scales are encoded and its quants recomputed against
// them, and put(i, q) packs super-block i's 256 quants.
template <int nmax, class Block, class Put>
HWY_INLINE void QuantizeRowK45(const float* HWY_RESTRICT x, int64_t n, Block* HWY_RESTRICT y,
                               const float* HWY_RESTRICT importance, const Put& put) {
  static_assert(offsetof(Block, scales) == offsetof(kernels::BlockQ4_K, scales) &&
                sizeof(Block::scales) == sizeof(kernels::BlockQ4_K::scales));
  using kernels::kQK_K;
  const DF df;
  const size_t N = hn::Lanes(df);
  const int64_t nsb = n / kQK_K;
  constexpr int K = kQkxGroups;
  const KxRow r = SearchRowQkx<32>(
      x, n, importance, true,
      [&](const float* HWY_RESTRICT xk, float* HWY_RESTRICT wk) {
        // quantize_row_q4_K_ref's weights: av_x + |x|, av_x = sqrt(sum(x^2) / 32).
        VF s = hn::Zero(df);
        for (int l = 0; l < 32; ++l) {
          const VF v = hn::Load(df, xk + static_cast<size_t>(l) * N);
          s = hn::Add(s, MulR(v, v));
        }
        const VF av_x = hn::Sqrt(hn::Div(s, hn::Set(df, 32.f)));
        for (int l = 0; l < 32; ++l)
          hn::Store(hn::Add(av_x, hn::Abs(hn::Load(df, xk + static_cast<size_t>(l) * N))), df,
                    wk + static_cast<size_t>(l) * N);
      },
      [&](const float* HWY_RESTRICT xt, const float* HWY_RESTRICT wt, float* HWY_RESTRICT lq, const KxOut& out) {
        if (importance)
          SearchQkx<K, nmax>(xt, wt, lq, -0.9f, 0.05f, 36, out);
        else if (nmax == 15)
          SearchQkx<K, nmax>(xt, wt, lq, -1.f, 0.1f, 20, out);
        else
          SearchQkx<K, nmax>(xt, wt, lq, -0.5f, 0.1f, 15, out);
      });

  // The headers: in place for Q4_K, staged for Q5_K.
  hwy::AlignedFreeUniquePtr<kernels::BlockQ4_K[]> staged;
  kernels::BlockQ4_K* heads;
  if constexpr (std::is_same_v<Block, kernels::BlockQ4_K>) {
    heads = y;
  } else {
    staged = hwy::AllocateAligned<kernels::BlockQ4_K>(static_cast<size_t>(nsb));
    heads = staged.get();
  }
  if (importance) EncodeScalesQ4K(r.scales, r.mins, r.sw, nsb, nmax == 31, heads);
  HWY_ALIGN int32_t q[kQK_K];
  for (int64_t i = 0; i < nsb; ++i, x += kQK_K) {
    kernels::BlockQ4_K& b = heads[i];
    const int64_t s0 = 8 * i;
    if (!importance) kernels::detail::encode_q4_k_scales(r.scales + s0, r.mins + s0, nullptr, b);
    if constexpr (!std::is_same_v<Block, kernels::BlockQ4_K>) {
      y[i].d = b.d;
      y[i].dmin = b.dmin;
      std::memcpy(y[i].scales, b.scales, sizeof b.scales);
    }
    const float d_all = f16_to_f32(f16{b.d}), m_all = f16_to_f32(f16{b.dmin});
    for (int j = 0; j < kQK_K / 32; ++j) {
      uint8_t sc, m;
      kernels::detail::unpack_scale_min_k4(j, b.scales, sc, m);
      const float d = ProdS(d_all, static_cast<float>(sc));
      const float dm = ProdS(m_all, static_cast<float>(m));
      RequantizeK4(x + 32 * j, d, dm, r.l_iscale[s0 + j], r.l_min[s0 + j], nmax, 32, q + 32 * j);
    }
    put(i, q);
  }
}

inline void QuantizeRowQ4K(const float* HWY_RESTRICT x, int64_t n, kernels::BlockQ4_K* HWY_RESTRICT y,
                           const float* HWY_RESTRICT importance) {
  const DI di;
  const size_t N = hn::Lanes(di);
  QuantizeRowK45<15>(x, n, y, importance, [&](int64_t i, const int32_t* HWY_RESTRICT q) {
    // Byte l of each 32-byte group: quant l of the even sub-block, quant l of the odd one above it.
    const hn::Rebind<uint8_t, DI> d8;
    for (int j = 0; j < kernels::kQK_K; j += 64)
      for (int l = 0; l < 32; l += static_cast<int>(N)) {
        const VI lo = hn::Load(di, q + j + l), hi = hn::Load(di, q + j + l + 32);
        hn::StoreU(hn::DemoteTo(d8, hn::Or(lo, hn::ShiftLeft<4>(hi))), d8, y[i].qs + j / 2 + l);
      }
  });
}

inline void QuantizeRowQ5K(const float* HWY_RESTRICT x, int64_t n, kernels::BlockQ5_K* HWY_RESTRICT y,
                           const float* HWY_RESTRICT importance) {
  QuantizeRowK45<31>(x, n, y, importance, [&](int64_t i, const int32_t* HWY_RESTRICT q) {
    uint8_t L[kernels::kQK_K];
    for (int l = 0; l < kernels::kQK_K; ++l) L[l] = static_cast<uint8_t>(q[l]);
    kernels::detail::pack_q5_k_quants(L, y[i]);
  });
}

// ---- Q2_K -------------------------------------------------------------------------------------------

// Q2_K's and Q3_K's 2-bit planes: byte l of each 32-byte quarter holds quants l, l + 32, l + 64 and
// l + 96 of its 128 (each 0 .. 3), two bits each.
HWY_INLINE void Pack2Bit(const int32_t* HWY_RESTRICT q, uint8_t* HWY_RESTRICT qs) {
  const DI di;
  const hn::Rebind<uint8_t, DI> d8;
  const size_t N = hn::Lanes(di);
  for (int j = 0; j < kernels::kQK_K; j += 128)
    for (int l = 0; l < 32; l += static_cast<int>(N)) {
      const VI q1 = hn::Load(di, q + j + l), q2 = hn::Load(di, q + j + l + 32);
      const VI q3 = hn::Load(di, q + j + l + 64), q4 = hn::Load(di, q + j + l + 96);
      const VI v = hn::Or(hn::Or(q1, hn::ShiftLeft<2>(q2)), hn::Or(hn::ShiftLeft<4>(q3), hn::ShiftLeft<6>(q4)));
      hn::StoreU(hn::DemoteTo(d8, v), d8, qs + j / 4 + l);
    }
}

// Q2_K: the sub-blocks of 16 searched by SearchQkx (nmax 3) N at a time across the row, with |x|
// weights and absolute errors (quantize_row_q2_K_ref) or importance weights (quantize_row_q2_K_impl);
// then each super-block's sixteen scales and mins to 4 bits (make_qp_quants across N super-blocks
// with importance, the shared scalar step without), the quants against them, and the 2-bit packing.
inline void QuantizeRowQ2K(const float* HWY_RESTRICT x, int64_t n, kernels::BlockQ2_K* HWY_RESTRICT y,
                           const float* HWY_RESTRICT importance) {
  using kernels::kQK_K;
  const DF df;
  const size_t N = hn::Lanes(df);
  const KxRow r = SearchRowQkx<16>(
      x, n, importance, false,
      [&](const float* HWY_RESTRICT xk, float* HWY_RESTRICT wk) {
        for (int l = 0; l < 16; ++l)
          hn::Store(hn::Abs(hn::Load(df, xk + static_cast<size_t>(l) * N)), df, wk + static_cast<size_t>(l) * N);
      },
      [&](const float* HWY_RESTRICT xt, const float* HWY_RESTRICT wt, float* HWY_RESTRICT lq, const KxOut& out) {
        if (importance)
          SearchQkx<kQkxGroups, 3, 16, false>(xt, wt, lq, -0.9f, 0.05f, 36, out);
        else
          SearchQkx<kQkxGroups, 3, 16, true>(xt, wt, lq, -0.5f, 0.1f, 15, out);
      });

  if (importance)
    FitScalesQp<16, 15>(r.scales, r.mins, r.sw, n / kQK_K,
                        [&](int64_t i, const uint8_t* ls, const uint8_t* lm, float d, float m) {
                          kernels::detail::pack_q2_k_scales(ls, lm, d, m, y[i]);
                        });
  HWY_ALIGN int32_t q[kQK_K];
  for (int64_t i = 0; i < n / kQK_K; ++i, x += kQK_K) {
    kernels::BlockQ2_K& b = y[i];
    const int64_t s0 = 16 * i;
    if (!importance) kernels::detail::encode_q2_k_scales(r.scales + s0, r.mins + s0, nullptr, b);
    const float d_all = f16_to_f32(f16{b.d}), m_all = f16_to_f32(f16{b.dmin});
    for (int j = 0; j < kQK_K / 16; ++j) {
      const float d = ProdS(d_all, static_cast<float>(b.scales[j] & 0xF));
      const float dm = ProdS(m_all, static_cast<float>(b.scales[j] >> 4));
      RequantizeK4(x + 16 * j, d, dm, r.l_iscale[s0 + j], r.l_min[s0 + j], 3, 16, q + 16 * j);
    }
    Pack2Bit(q, b.qs);
  }
}

// ---- Q6_K -------------------------------------------------------------------------------------------

// One step of ggml's signed absolute maximum: max takes x where |x| > amax (the first of equal ones).
HWY_INLINE void TakeAbsMax(VF x, VF& amax, VF& max) {
  const VF ax = hn::Abs(x);
  const auto gt = hn::Gt(ax, amax);
  amax = hn::IfThenElse(gt, ax, amax);
  max = hn::IfThenElse(gt, x, max);
}

// make_qx_quants of ggml_quantize.cc (n 16; nmax 32 for Q6_K and Q3_K's super-block scales, 4 for
// Q3_K's sub-blocks) for N sub-blocks: lane k on sub-block k of xt (transposed, 16 x N), with weights
// qt (transposed importance) or x^2. Per lane: the scale, the iscale whose quants were kept, and
// whether the sub-block is all zero (quants 0).
template <int nmax = 32>
HWY_INLINE void SearchQx(const float* HWY_RESTRICT xt, const float* HWY_RESTRICT qt, float* HWY_RESTRICT o_scale,
                         float* HWY_RESTRICT o_iscale, float* HWY_RESTRICT o_flat) {
  const DF df;
  const size_t N = hn::Lanes(df);
  constexpr int n = 16, n_cand = 19;
  const VF zero = hn::Zero(df);
  VF x[n], w[n], wx[n];
  VF amax = zero, max = zero, xlo = hn::Load(df, xt), xhi = xlo;
  for (int i = 0; i < n; ++i) {
    x[i] = hn::Load(df, xt + static_cast<size_t>(i) * N);
    TakeAbsMax(x[i], amax, max);
    xlo = hn::Min(xlo, x[i]);
    xhi = hn::Max(xhi, x[i]);
    w[i] = qt ? hn::Load(df, qt + static_cast<size_t>(i) * N) : MulR(x[i], x[i]);
    wx[i] = MulR(w[i], x[i]);
  }
  const auto flat = hn::Lt(amax, hn::Set(df, kGroupMaxEps));
  // Outside flat lanes |iscale * x| <= nmax + 0.9, so clamping before rounding gives what rounding then
  // clamping gives, and 1.5 * 2^23 added and taken away rounds exactly (half to even). A clamp is
  // left out where no lane needs it: iscale * x is monotonic in x (each rounding is), so a lane's
  // products lie between those at max (its lowest, near -num) and at the extreme of the other sign
  // (its highest); -nmax - 0.5 rounds to -nmax (half to even, nmax even) and nmax - 0.5 to nmax.
  // Flat lanes are discarded.
  const VF lo = hn::Set(df, static_cast<float>(-nmax)), hi = hn::Set(df, static_cast<float>(nmax - 1));
  static_assert(nmax % 2 == 0, "-nmax - 0.5 must tie to -nmax");
  const VF bottom = hn::Set(df, -static_cast<float>(nmax) - 0.5f), top = hn::Set(df, static_cast<float>(nmax) - 0.5f);
  const VF opposite = hn::IfThenElse(hn::Gt(max, zero), xlo, xhi);
  const VF magic = hn::Set(df, kMagic);
  VF scale = zero, best = zero, chosen = zero;
  for (int c = 0; c < n_cand; ++c) {
    // Candidate 0 is -nmax / max; then is = -9 .. 9 without 0.
    const int is = c == 0 ? 0 : (c <= 9 ? c - 10 : c - 9);
    const float num = c == 0 ? static_cast<float>(-nmax) : -(static_cast<float>(nmax) + ProdS(0.1f, static_cast<float>(is)));
    const VF iscale = hn::Div(hn::Set(df, num), max);
    const bool low_idle = hn::AllTrue(df, hn::Or(flat, hn::Ge(MulR(iscale, max), bottom)));
    const bool high_idle = hn::AllTrue(df, hn::Or(flat, hn::Lt(MulR(iscale, opposite), top)));
    VF sumlx = zero, suml2 = zero;
    auto sums = [&](auto low_, auto high_) STRATA_INLINE_LAMBDA {
      VF slx = zero, sl2 = zero;
      for (int i = 0; i < n; ++i) {
        VF v = MulR(iscale, x[i]);
        if constexpr (decltype(low_)::value) v = hn::Max(v, lo);
        if constexpr (decltype(high_)::value) v = hn::Min(v, hi);
        const VF l = hn::Sub(hn::Add(v, magic), magic);
        slx = hn::Add(slx, MulR(wx[i], l));
        sl2 = hn::Add(sl2, MulR(MulR(w[i], l), l));
      }
      sumlx = slx;
      suml2 = sl2;
    };
    using Yes = std::true_type;
    using No = std::false_type;
    if (low_idle)
      high_idle ? sums(No(), No()) : sums(No(), Yes());
    else
      high_idle ? sums(Yes(), No()) : sums(Yes(), Yes());
    if (c == 0) {
      scale = hn::IfThenElseZero(hn::Not(hn::Eq(suml2, zero)), hn::Div(sumlx, suml2));
      best = MulR(scale, sumlx);
      chosen = iscale;
    } else {
      const auto better = hn::And(hn::Gt(suml2, zero), hn::Gt(MulR(sumlx, sumlx), MulR(best, suml2)));
      const VF s = hn::Div(sumlx, suml2);
      scale = hn::IfThenElse(better, s, scale);
      best = hn::IfThenElse(better, MulR(s, sumlx), best);
      chosen = hn::IfThenElse(better, iscale, chosen);
    }
  }
  hn::Store(hn::IfThenZeroElse(flat, scale), df, o_scale);
  hn::Store(chosen, df, o_iscale);
  hn::Store(hn::IfThenElseZero(flat, hn::Set(df, 1.f)), df, o_flat);
}

inline void QuantizeRowQ6K(const float* HWY_RESTRICT x, int64_t n, kernels::BlockQ6_K* HWY_RESTRICT y,
                           const float* HWY_RESTRICT importance) {
  using kernels::kQK_K;
  const DF df;
  const DI di;
  const size_t N = hn::Lanes(df);
  const int64_t nsb = n / kQK_K, nsub = n / 16;
  const int64_t padded = (nsub + static_cast<int64_t>(N) - 1) / static_cast<int64_t>(N) * static_cast<int64_t>(N);
  auto buf = hwy::AllocateAligned<float>(2 * 16 * N + 3 * static_cast<size_t>(padded));
  float* xt = buf.get();
  float* qt = xt + 16 * N;
  float* scales = qt + 16 * N;
  float* l_iscale = scales + padded;
  float* flat = l_iscale + padded;
  for (int64_t g = 0; g < nsub; g += static_cast<int64_t>(N)) {
    const size_t valid = static_cast<size_t>(std::min<int64_t>(static_cast<int64_t>(N), nsub - g));
    Transpose(x + 16 * g, 16, 16, valid, xt);
    if (importance) Transpose(importance + 16 * g, 16, 16, valid, qt);
    SearchQx(xt, importance ? qt : nullptr, scales + g, l_iscale + g, flat + g);
  }

  // clamp(nearest_int(v), -32, 31) + 32 with ggml's integer nearest_int.
  const VI ilo = hn::Set(di, -32), ihi = hn::Set(di, 31), v32 = hn::Set(di, 32), low4 = hn::Set(di, 0xF);
  auto quant = [&](VF v) { return hn::Add(hn::Min(hn::Max(GgmlNearestInt(v), ilo), ihi), v32); };
  HWY_ALIGN int32_t L[kQK_K];
  for (int64_t i = 0; i < nsb; ++i, x += kQK_K) {
    kernels::BlockQ6_K& b = y[i];
    const int64_t s0 = 16 * i;
    if (!kernels::detail::encode_q6_k_scales(scales + s0, b)) continue;
    const float d_all = f16_to_f32(f16{b.d});
    for (int j = 0; j < kQK_K / 16; ++j) {
      const float d = ProdS(d_all, static_cast<float>(b.scales[j]));
      const float* xs = x + 16 * j;
      int32_t* Ls = L + 16 * j;
      if (d != 0) {
        const VF vd = hn::Set(df, d);
        for (int l = 0; l < 16; l += static_cast<int>(N)) hn::Store(quant(hn::Div(hn::LoadU(df, xs + l), vd)), di, Ls + l);
      } else if (flat[s0 + j] != 0) {
        for (int l = 0; l < 16; l += static_cast<int>(N)) hn::Store(hn::Zero(di), di, Ls + l);
      } else {
        const VF vi = hn::Set(df, l_iscale[s0 + j]);
        for (int l = 0; l < 16; l += static_cast<int>(N)) hn::Store(quant(MulR(vi, hn::LoadU(df, xs + l))), di, Ls + l);
      }
    }
    // ql: low nibbles of quants l and l + 64 (then l + 32 and l + 96) of each half; qh: their top
    // two bits, four quants to a byte.
    const hn::Rebind<uint8_t, DI> d8;
    for (int j = 0; j < kQK_K; j += 128)
      for (int l = 0; l < 32; l += static_cast<int>(N)) {
        const VI q1 = hn::Load(di, L + j + l), q2 = hn::Load(di, L + j + l + 32);
        const VI q3 = hn::Load(di, L + j + l + 64), q4 = hn::Load(di, L + j + l + 96);
        uint8_t* ql = b.ql + j / 2 + l;
        hn::StoreU(hn::DemoteTo(d8, hn::Or(hn::And(q1, low4), hn::ShiftLeft<4>(hn::And(q3, low4)))), d8, ql);
        hn::StoreU(hn::DemoteTo(d8, hn::Or(hn::And(q2, low4), hn::ShiftLeft<4>(hn::And(q4, low4)))), d8, ql + 32);
        const VI h = hn::Or(hn::Or(hn::ShiftRight<4>(q1), hn::ShiftLeft<2>(hn::ShiftRight<4>(q2))),
                            hn::Or(hn::ShiftLeft<4>(hn::ShiftRight<4>(q3)), hn::ShiftLeft<6>(hn::ShiftRight<4>(q4))));
        hn::StoreU(hn::DemoteTo(d8, h), d8, b.qh + j / 4 + l);
      }
  }
}

// ---- Q3_K -------------------------------------------------------------------------------------------

// make_q3_quants of ggml_quantize.cc (n 16, nmax 4, x^2 weights, then up to five tries of coordinate
// descent on single quants) for N sub-blocks: lane k on sub-block k of xt (transposed, 16 x N).
// Stores the quants plus 4 (0 in an all-zero sub-block, as the reference leaves them) in
// L_out[i * N + k] and returns the scale per lane.
HWY_INLINE VF Q3Quants(const float* HWY_RESTRICT xt, int32_t* HWY_RESTRICT L_out) {
  const DF df;
  const DI di;
  const size_t N = hn::Lanes(df);
  constexpr int n = 16, nmax = 4;
  using M = hn::Mask<DF>;
  const VF zero = hn::Zero(df);
  const VI ilo = hn::Set(di, -nmax), ihi = hn::Set(di, nmax - 1);
  auto quant = [&](VF v) { return hn::Min(hn::Max(GgmlNearestInt(v), ilo), ihi); };
  VF x[n], w[n], wx[n];
  VF amax = zero, max = zero;
  for (int i = 0; i < n; ++i) {
    x[i] = hn::Load(df, xt + static_cast<size_t>(i) * N);
    TakeAbsMax(x[i], amax, max);
    w[i] = MulR(x[i], x[i]);
    wx[i] = MulR(w[i], x[i]);
  }
  const M flat = hn::Lt(amax, hn::Set(df, kGroupMaxEps));
  const VF iscale = hn::Div(hn::Set(df, static_cast<float>(-nmax)), max);
  VI L[n];
  VF sumlx = zero, suml2 = zero;
  for (int i = 0; i < n; ++i) {
    L[i] = quant(MulR(iscale, x[i]));
    const VF l = hn::ConvertTo(df, L[i]);
    sumlx = hn::Add(sumlx, MulR(wx[i], l));
    suml2 = hn::Add(suml2, MulR(MulR(w[i], l), l));
  }
  RefineQuants<n, true>(x, w, wx, flat, quant, L, sumlx, suml2);
  const auto iflat = hn::RebindMask(di, flat);
  const VI vnmax = hn::Set(di, nmax);
  for (int i = 0; i < n; ++i) hn::Store(hn::IfThenZeroElse(iflat, hn::Add(L[i], vnmax)), di, L_out + static_cast<size_t>(i) * N);
  return hn::IfThenZeroElse(flat, hn::IfThenElseZero(hn::Gt(suml2, zero), hn::Div(sumlx, suml2)));
}

// Q3_K: the sub-blocks of 16 fitted N at a time across the row, by make_q3_quants without importance
// (quantize_row_q3_K_ref) or make_qx_quants (nmax 4) with importance weights (quantize_row_q3_K_impl,
// whose sixteen sub-block scales per super-block are then fitted by make_qx_quants (nmax 32) across N
// super-blocks); then the scale encoding (the reference's own without importance), the quants against
// the stored scales, the high-bit mask and the 2-bit planes.
inline void QuantizeRowQ3K(const float* HWY_RESTRICT x, int64_t n, kernels::BlockQ3_K* HWY_RESTRICT y,
                           const float* HWY_RESTRICT importance) {
  using kernels::kQK_K;
  const int64_t nsb = n / kQK_K, nsub = n / 16;
  const DF df;
  const size_t N = hn::Lanes(df);
  // Scratch: xt, wt (16 x N each), per sub-block scale, l_iscale, flat and summed weight, sigma2; the
  // quants of the row (16 per sub-block, in order).
  const int64_t padded = (nsub + static_cast<int64_t>(N) - 1) / static_cast<int64_t>(N) * static_cast<int64_t>(N);
  auto buf = hwy::AllocateAligned<float>(2 * 16 * N + 4 * static_cast<size_t>(padded) + static_cast<size_t>(nsb));
  auto ibuf = hwy::AllocateAligned<int32_t>(16 * N);
  auto Lrow = hwy::AllocateAligned<int8_t>(static_cast<size_t>(n));
  float* xt = buf.get();
  float* wt = xt + 16 * N;
  float* scales = wt + 16 * N;
  float* l_iscale = scales + padded;
  float* flat = l_iscale + padded;
  float* sw = flat + padded;
  float* sigma2 = sw + padded;
  int32_t* Lt = ibuf.get();
  if (importance) SuperBlockSigma2(x, nsb, sigma2);
  const DI di;
  const VI ilo = hn::Set(di, -4), ihi = hn::Set(di, 3), v4 = hn::Set(di, 4);
  for (int64_t g = 0; g < nsub; g += static_cast<int64_t>(N)) {
    const size_t valid = static_cast<size_t>(std::min<int64_t>(static_cast<int64_t>(N), nsub - g));
    Transpose(x + 16 * g, 16, 16, valid, xt);
    if (!importance) {
      hn::Store(Q3Quants(xt, Lt), df, scales + g);
    } else {
      ImportanceWeights<16>(importance, sigma2, g, valid, xt, wt, sw + g);
      SearchQx<4>(xt, wt, scales + g, l_iscale + g, flat + g);
      // The kept quants: 4 + clamp(nearest_int(iscale * x), -4, 3), 0 in an all-zero sub-block.
      const auto none = hn::RebindMask(di, hn::Ne(hn::Load(df, flat + g), hn::Zero(df)));
      const VF vi = hn::Load(df, l_iscale + g);
      for (int l = 0; l < 16; ++l) {
        const VI q = hn::Min(hn::Max(GgmlNearestInt(MulR(vi, hn::Load(df, xt + static_cast<size_t>(l) * N))), ilo), ihi);
        hn::Store(hn::IfThenZeroElse(none, hn::Add(q, v4)), di, Lt + static_cast<size_t>(l) * N);
      }
    }
    for (size_t k = 0; k < valid; ++k)
      for (int l = 0; l < 16; ++l)
        Lrow[(static_cast<size_t>(g) + k) * 16 + static_cast<size_t>(l)] = static_cast<int8_t>(Lt[static_cast<size_t>(l) * N + k]);
  }
  for (int64_t i = 0; i < nsb; ++i) std::memset(y[i].scales, 0, sizeof y[i].scales);
  if (importance) {
    // make_qx_quants (n 16, nmax 32) of each super-block's sixteen scales, weighted by the summed
    // weights, N super-blocks at a time.
    constexpr size_t kMax = hn::MaxLanes(DF());
    HWY_ALIGN float st[16 * kMax], swt[16 * kMax], d_block[kMax], d_iscale[kMax], d_flat[kMax];
    for (int64_t s0 = 0; s0 < nsb; s0 += static_cast<int64_t>(N)) {
      const auto valid = static_cast<size_t>(std::min<int64_t>(static_cast<int64_t>(N), nsb - s0));
      Transpose(scales + 16 * s0, 16, 16, valid, st);
      Transpose(sw + 16 * s0, 16, 16, valid, swt);
      SearchQx<32>(st, swt, d_block, d_iscale, d_flat);
      for (size_t k = 0; k < valid; ++k) {
        int8_t Ls[16];
        for (int j = 0; j < 16; ++j) {
          const int l = std::max(-32, std::min(31, GgmlNearestIntScalar(ProdS(d_iscale[k], st[static_cast<size_t>(j) * N + k]))));
          Ls[j] = d_flat[k] != 0 ? int8_t{0} : static_cast<int8_t>(32 + l);
        }
        kernels::detail::pack_q3_k_scales(Ls, d_block[k], y[s0 + static_cast<int64_t>(k)]);
      }
    }
  }
  // The quants against the stored scales (the search's own where a scale is 0), plus 4; the high-bit
  // mask (bit b of byte l: quant l + 32 b is 4 or more); the low two bits in planes.
  HWY_ALIGN int32_t q[kQK_K];
  const hn::Rebind<uint8_t, DI> d8;
  const VI three = hn::Set(di, 3), one = hn::Set(di, 1);
  for (int64_t i = 0; i < nsb; ++i, x += kQK_K) {
    kernels::BlockQ3_K& b = y[i];
    if (!importance) kernels::detail::encode_q3_k_scales(scales + 16 * i, b);
    const float d_all = f16_to_f32(f16{b.d});
    const int8_t* Ls = Lrow.get() + kQK_K * i;
    for (int j = 0; j < kQK_K / 16; ++j) {
      const float d = ProdS(d_all, static_cast<float>(kernels::detail::unpack_q3_k_scale(j, b.scales)));
      if (d != 0) {
        const VF vd = hn::Set(df, d);
        for (int l = 0; l < 16; l += static_cast<int>(N))
          hn::Store(hn::Add(hn::Min(hn::Max(GgmlNearestInt(hn::Div(hn::LoadU(df, x + 16 * j + l), vd)), ilo), ihi), v4), di,
                    q + 16 * j + l);
      } else {
        for (int l = 0; l < 16; ++l) q[16 * j + l] = Ls[16 * j + l];
      }
    }
    for (int l = 0; l < 32; l += static_cast<int>(N)) {
      VI h = hn::Zero(di);
      for (int k = 0; k < 8; ++k) {
        const VI v = hn::Load(di, q + 32 * k + l);
        h = hn::Or(h, hn::ShiftLeftSame(hn::And(hn::ShiftRight<2>(v), one), k));
        hn::Store(hn::And(v, three), di, q + 32 * k + l);
      }
      hn::StoreU(hn::DemoteTo(d8, h), d8, b.hmask + l);
    }
    Pack2Bit(q, b.qs);
  }
}

}  // namespace ggml_k

using ggml_k::QuantizeRowQ2K;
using ggml_k::QuantizeRowQ3K;
using ggml_k::QuantizeRowQ4K;
using ggml_k::QuantizeRowQ5K;
using ggml_k::QuantizeRowQ6K;

}  // namespace HWY_NAMESPACE
}  // namespace strata
HWY_AFTER_NAMESPACE();

#endif  // STRATA_KERNELS_GGML_QUANTIZE_K_INL_H_

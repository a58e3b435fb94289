// Q4_K and Q6_K row quantizers, one source for every SIMD target (Google Highway). Included by
// ggml_quantize_k.cc for dynamic dispatch and by the per-target tests; the scalar quantizers of
// ggml_quantize.cc are the oracle these must match byte for byte.
//
// The time goes into the scale searches, which run the same float operations once per sub-block
// (32 elements in Q4_K, 16 in Q6_K) over many candidate scales, with sums whose rounding decides
// which candidate wins. So the searches are vectorized across sub-blocks: lane k follows sub-block
// k through exactly the scalar sequence of operations (every sum in the scalar order), with the
// sub-blocks' elements transposed so that element l of every lane is one load. Branches of the
// scalar code become per-lane selects. The elementwise steps (final quants against the stored
// scales, packing) run in natural order, and the per-super-block steps (8 or 16 values) stay in
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
#include <cstdint>
#include <cstring>

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
// `valid` sub-blocks read sub-block valid - 1 again (their results are discarded).
HWY_INLINE void Transpose(const float* HWY_RESTRICT src, int stride, int len, size_t valid, float* HWY_RESTRICT dst) {
  const DF df;
  const DI di;
  const size_t N = hn::Lanes(df);
  const VI idx = hn::Mul(hn::Min(hn::Iota(di, 0), hn::Set(di, static_cast<int32_t>(valid) - 1)),
                         hn::Set(di, stride));
  for (int l = 0; l < len; ++l) hn::Store(hn::GatherIndex(df, src + l, idx), df, dst + static_cast<size_t>(l) * N);
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

// make_qkx_quants of ggml_quantize.cc (nmax 15, n 32), lane k on sub-block k of xt / wt (transposed,
// 32 x N). lq: scratch of 32 x N.
HWY_INLINE void SearchQkx(const float* HWY_RESTRICT xt, const float* HWY_RESTRICT wt, float* HWY_RESTRICT lq,
                          float rmin, float rdelta, int nstep, const KxOut& out) {
  const DF df;
  const size_t N = hn::Lanes(df);
  constexpr int n = 32, nmax = 15;
  const VF zero = hn::Zero(df), vnmax = hn::Set(df, static_cast<float>(nmax));
  auto X = [&](int l) { return hn::Load(df, xt + static_cast<size_t>(l) * N); };
  auto W = [&](int l) { return hn::Load(df, wt + static_cast<size_t>(l) * N); };

  VF min = X(0), max = X(0);
  VF sum_w = W(0);
  VF sum_x = MulR(sum_w, X(0));
  for (int l = 1; l < n; ++l) {
    const VF x = X(l), w = W(l);
    min = hn::IfThenElse(hn::Lt(x, min), x, min);
    max = hn::IfThenElse(hn::Gt(x, max), x, max);
    sum_w = hn::Add(sum_w, w);
    sum_x = hn::Add(sum_x, MulR(w, x));
  }
  min = hn::IfThenElse(hn::Gt(min, zero), zero, min);
  const auto flat = hn::Eq(max, min);
  VF iscale = hn::Div(vnmax, hn::Sub(max, min));
  VF scale = hn::Div(hn::Set(df, 1.f), iscale);
  VF best_error = zero;
  for (int l = 0; l < n; ++l) {
    const VF x = X(l);
    const VF q = NearestClamped(MulR(iscale, hn::Sub(x, min)), zero, vnmax);
    VF diff = hn::Sub(hn::Add(MulR(scale, q), min), x);
    diff = MulR(diff, diff);
    best_error = hn::Add(best_error, MulR(W(l), diff));
  }
  VF l_iscale = iscale, l_min = min;
  for (int is = 0; is <= nstep; ++is) {
    const float num = (rmin + ProdS(rdelta, static_cast<float>(is))) + static_cast<float>(nmax);
    iscale = hn::Div(hn::Set(df, num), hn::Sub(max, min));  // min as updated by the candidates so far
    VF sum_l = zero, sum_l2 = zero, sum_xl = zero;
    for (int l = 0; l < n; ++l) {
      const VF x = X(l);
      const VF q = NearestClamped(MulR(iscale, hn::Sub(x, min)), zero, vnmax);
      hn::Store(q, df, lq + static_cast<size_t>(l) * N);
      const VF wl = MulR(W(l), q);
      sum_l = hn::Add(sum_l, wl);
      sum_l2 = hn::Add(sum_l2, MulR(wl, q));
      sum_xl = hn::Add(sum_xl, MulR(wl, x));
    }
    const VF D = hn::Sub(MulR(sum_w, sum_l2), MulR(sum_l, sum_l));
    const auto solvable = hn::Gt(D, zero);
    if (hn::AllFalse(df, solvable)) continue;
    VF this_scale = hn::Div(hn::Sub(MulR(sum_w, sum_xl), MulR(sum_x, sum_l)), D);
    VF this_min = hn::Div(hn::Sub(MulR(sum_l2, sum_x), MulR(sum_l, sum_xl)), D);
    const auto clip = hn::Gt(this_min, zero);
    this_min = hn::IfThenElse(clip, zero, this_min);
    this_scale = hn::IfThenElse(clip, hn::Div(sum_xl, sum_l2), this_scale);
    VF cur_error = zero;
    for (int l = 0; l < n; ++l) {
      const VF q = hn::Load(df, lq + static_cast<size_t>(l) * N);
      VF diff = hn::Sub(hn::Add(MulR(this_scale, q), this_min), X(l));
      diff = MulR(diff, diff);
      cur_error = hn::Add(cur_error, MulR(W(l), diff));
    }
    const auto better = hn::And(solvable, hn::Lt(cur_error, best_error));
    best_error = hn::IfThenElse(better, cur_error, best_error);
    scale = hn::IfThenElse(better, this_scale, scale);
    l_iscale = hn::IfThenElse(better, iscale, l_iscale);
    l_min = hn::IfThenElse(better, min, l_min);
    min = hn::IfThenElse(better, this_min, min);
  }
  // A flat sub-block keeps quants 0 (iscale 0 rebuilds them), scale 0 and its min.
  hn::Store(hn::IfThenZeroElse(flat, scale), df, out.scale);
  hn::Store(hn::Neg(min), df, out.the_min);
  hn::Store(hn::IfThenZeroElse(flat, l_iscale), df, out.l_iscale);
  hn::Store(hn::IfThenZeroElse(flat, l_min), df, out.l_min);
}

// 2 * sum(x^2) / 256 over each super-block (quantize_row_q*_K_impl's sigma2), the sum in element
// order, N super-blocks at a time.
HWY_INLINE void SuperBlockSigma2(const float* HWY_RESTRICT x, int64_t nsb, float* HWY_RESTRICT sigma2) {
  const DF df;
  const DI di;
  const size_t N = hn::Lanes(df);
  for (int64_t s0 = 0; s0 < nsb; s0 += static_cast<int64_t>(N)) {
    const int64_t valid = std::min<int64_t>(static_cast<int64_t>(N), nsb - s0);
    const VI idx = hn::Mul(hn::Min(hn::Iota(di, 0), hn::Set(di, static_cast<int32_t>(valid - 1))),
                           hn::Set(di, kernels::kQK_K));
    const float* base = x + s0 * kernels::kQK_K;
    VF s = hn::Zero(df);
    for (int e = 0; e < kernels::kQK_K; ++e) {
      const VF v = hn::GatherIndex(df, base + e, idx);
      s = hn::Add(s, MulR(v, v));
    }
    HWY_ALIGN float lanes[hn::MaxLanes(df)];
    hn::Store(hn::Div(MulR(hn::Set(df, 2.f), s), hn::Set(df, static_cast<float>(kernels::kQK_K))), df, lanes);
    for (int64_t k = 0; k < valid; ++k) sigma2[s0 + k] = lanes[k];
  }
}

// Quants of n elements (a multiple of N) into int32 q[]: against the stored scale d and min dm,
// clamp(nearest_int((x + dm) / d), 0, nmax); where d is 0, the search's own quants.
HWY_INLINE void RequantizeK4(const float* HWY_RESTRICT x, float d, float dm, float l_iscale, float l_min, int nmax,
                             int n, int32_t* HWY_RESTRICT q) {
  const DF df;
  const DI di;
  const size_t N = hn::Lanes(df);
  const VF zero = hn::Zero(df), vnmax = hn::Set(df, static_cast<float>(nmax));
  if (d != 0) {
    const VF vd = hn::Set(df, d), vdm = hn::Set(df, dm);
    for (int l = 0; l < n; l += static_cast<int>(N))
      hn::Store(hn::ConvertTo(di, NearestClamped(hn::Div(hn::Add(hn::LoadU(df, x + l), vdm), vd), zero, vnmax)), di,
                q + l);
  } else {
    const VF vi = hn::Set(df, l_iscale), vm = hn::Set(df, l_min);
    for (int l = 0; l < n; l += static_cast<int>(N))
      hn::Store(hn::ConvertTo(di, NearestClamped(MulR(vi, hn::Sub(hn::LoadU(df, x + l), vm)), zero, vnmax)), di,
                q + l);
  }
}

// Sub-blocks are searched N at a time across the row; then each super-block's scales are encoded
// (scalar, shared with the reference) and its quants recomputed against them.
inline void QuantizeRowQ4K(const float* HWY_RESTRICT x, int64_t n, kernels::BlockQ4_K* HWY_RESTRICT y,
                           const float* HWY_RESTRICT importance) {
  using kernels::kQK_K;
  const DF df;
  const DI di;
  const size_t N = hn::Lanes(df);
  const int64_t nsb = n / kQK_K, nsub = n / 32;
  const int64_t padded = (nsub + static_cast<int64_t>(N) - 1) / static_cast<int64_t>(N) * static_cast<int64_t>(N);
  // Scratch: xt, wt, lq (32 x N each), then per sub-block scale, -min, sw, l_iscale, l_min, then sigma2.
  auto buf = hwy::AllocateAligned<float>(3 * 32 * N + 5 * static_cast<size_t>(padded) + static_cast<size_t>(nsb));
  float* xt = buf.get();
  float* wt = xt + 32 * N;
  float* lq = wt + 32 * N;
  float* scales = lq + 32 * N;
  float* mins = scales + padded;
  float* sw = mins + padded;
  float* l_iscale = sw + padded;
  float* l_min = l_iscale + padded;
  float* sigma2 = l_min + padded;
  if (importance) SuperBlockSigma2(x, nsb, sigma2);

  for (int64_t g = 0; g < nsub; g += static_cast<int64_t>(N)) {
    const size_t valid = static_cast<size_t>(std::min<int64_t>(static_cast<int64_t>(N), nsub - g));
    Transpose(x + 32 * g, 32, 32, valid, xt);
    if (!importance) {
      // quantize_row_q4_K_ref's weights: av_x + |x|, av_x = sqrt(sum(x^2) / 32).
      VF s = hn::Zero(df);
      for (int l = 0; l < 32; ++l) {
        const VF v = hn::Load(df, xt + static_cast<size_t>(l) * N);
        s = hn::Add(s, MulR(v, v));
      }
      const VF av_x = hn::Sqrt(hn::Div(s, hn::Set(df, 32.f)));
      for (int l = 0; l < 32; ++l)
        hn::Store(hn::Add(av_x, hn::Abs(hn::Load(df, xt + static_cast<size_t>(l) * N))), df,
                  wt + static_cast<size_t>(l) * N);
      SearchQkx(xt, wt, lq, -1.f, 0.1f, 20, {scales + g, mins + g, l_iscale + g, l_min + g});
    } else {
      // quantize_row_q4_K_impl's weights: qw * sqrt(sigma2 + x^2), sigma2 of the lane's super-block.
      Transpose(importance + 32 * g, 32, 32, valid, wt);
      HWY_ALIGN float s2[hn::MaxLanes(df)];
      for (size_t k = 0; k < N; ++k) s2[k] = sigma2[(g + static_cast<int64_t>(std::min(k, valid - 1))) / 8];
      const VF vs2 = hn::Load(df, s2);
      VF s = hn::Zero(df);
      for (int l = 0; l < 32; ++l) {
        const VF v = hn::Load(df, xt + static_cast<size_t>(l) * N);
        const VF w = MulR(hn::Load(df, wt + static_cast<size_t>(l) * N), hn::Sqrt(hn::Add(vs2, MulR(v, v))));
        hn::Store(w, df, wt + static_cast<size_t>(l) * N);
        s = hn::Add(s, w);
      }
      hn::Store(s, df, sw + g);
      SearchQkx(xt, wt, lq, -0.9f, 0.05f, 36, {scales + g, mins + g, l_iscale + g, l_min + g});
    }
  }

  HWY_ALIGN int32_t q[kQK_K];
  for (int64_t i = 0; i < nsb; ++i, x += kQK_K) {
    kernels::BlockQ4_K& b = y[i];
    const int64_t s0 = 8 * i;
    kernels::detail::encode_q4_k_scales(scales + s0, mins + s0, importance ? sw + s0 : nullptr, b);
    const float d_all = f16_to_f32(f16{b.d}), m_all = f16_to_f32(f16{b.dmin});
    for (int j = 0; j < kQK_K / 32; ++j) {
      uint8_t sc, m;
      kernels::detail::unpack_scale_min_k4(j, b.scales, sc, m);
      const float d = ProdS(d_all, static_cast<float>(sc));
      const float dm = ProdS(m_all, static_cast<float>(m));
      RequantizeK4(x + 32 * j, d, dm, l_iscale[s0 + j], l_min[s0 + j], 15, 32, q + 32 * j);
    }
    // Byte l of each 32-byte group: quant l of the even sub-block, quant l of the odd one above it.
    const hn::Rebind<uint8_t, DI> d8;
    for (int j = 0; j < kQK_K; j += 64)
      for (int l = 0; l < 32; l += static_cast<int>(N)) {
        const VI lo = hn::Load(di, q + j + l), hi = hn::Load(di, q + j + l + 32);
        hn::StoreU(hn::DemoteTo(d8, hn::Or(lo, hn::ShiftLeft<4>(hi))), d8, b.qs + j / 2 + l);
      }
  }
}

// ---- Q6_K -------------------------------------------------------------------------------------------

// make_qx_quants of ggml_quantize.cc (n 16, nmax 32) for N sub-blocks: lane k on sub-block k of xt
// (transposed, 16 x N), with weights qt (transposed importance) or x^2. Per lane: the scale, the
// iscale whose quants were kept, and whether the sub-block is all zero (quants 0).
HWY_INLINE void SearchQx(const float* HWY_RESTRICT xt, const float* HWY_RESTRICT qt, float* HWY_RESTRICT o_scale,
                         float* HWY_RESTRICT o_iscale, float* HWY_RESTRICT o_flat) {
  const DF df;
  const size_t N = hn::Lanes(df);
  constexpr int n = 16, nmax = 32, n_cand = 19;
  const VF zero = hn::Zero(df);
  VF x[n], w[n], wx[n];
  VF amax = zero, max = zero;
  for (int i = 0; i < n; ++i) {
    x[i] = hn::Load(df, xt + static_cast<size_t>(i) * N);
    const VF ax = hn::Abs(x[i]);
    const auto gt = hn::Gt(ax, amax);
    amax = hn::IfThenElse(gt, ax, amax);
    max = hn::IfThenElse(gt, x[i], max);
    w[i] = qt ? hn::Load(df, qt + static_cast<size_t>(i) * N) : MulR(x[i], x[i]);
    wx[i] = MulR(w[i], x[i]);
  }
  const auto flat = hn::Lt(amax, hn::Set(df, kGroupMaxEps));
  // Outside flat lanes |iscale * x| <= 32.9, so clamping before rounding gives what rounding then
  // clamping gives, and 1.5 * 2^23 added and taken away rounds exactly (half to even).
  const VF lo = hn::Set(df, static_cast<float>(-nmax)), hi = hn::Set(df, static_cast<float>(nmax - 1));
  const VF magic = hn::Set(df, kMagic);
  VF scale = zero, best = zero, chosen = zero;
  for (int c = 0; c < n_cand; ++c) {
    // Candidate 0 is -nmax / max; then is = -9 .. 9 without 0.
    const int is = c == 0 ? 0 : (c <= 9 ? c - 10 : c - 9);
    const float num = c == 0 ? static_cast<float>(-nmax) : -(static_cast<float>(nmax) + ProdS(0.1f, static_cast<float>(is)));
    const VF iscale = hn::Div(hn::Set(df, num), max);
    VF sumlx = zero, suml2 = zero;
    for (int i = 0; i < n; ++i) {
      const VF l = hn::Sub(hn::Add(hn::Min(hn::Max(MulR(iscale, x[i]), lo), hi), magic), magic);
      sumlx = hn::Add(sumlx, MulR(wx[i], l));
      suml2 = hn::Add(suml2, MulR(MulR(w[i], l), l));
    }
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

  const VF lo = hn::Set(df, -32.f), hi = hn::Set(df, 31.f);
  const VI v32 = hn::Set(di, 32), low4 = hn::Set(di, 0xF);
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
        for (int l = 0; l < 16; l += static_cast<int>(N))
          hn::Store(hn::Add(hn::ConvertTo(di, NearestClamped(hn::Div(hn::LoadU(df, xs + l), vd), lo, hi)), v32), di,
                    Ls + l);
      } else if (flat[s0 + j] != 0) {
        for (int l = 0; l < 16; l += static_cast<int>(N)) hn::Store(hn::Zero(di), di, Ls + l);
      } else {
        const VF vi = hn::Set(df, l_iscale[s0 + j]);
        for (int l = 0; l < 16; l += static_cast<int>(N))
          hn::Store(hn::Add(hn::ConvertTo(di, NearestClamped(MulR(vi, hn::LoadU(df, xs + l)), lo, hi)), v32), di,
                    Ls + l);
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

}  // namespace ggml_k

using ggml_k::QuantizeRowQ4K;
using ggml_k::QuantizeRowQ6K;

}  // namespace HWY_NAMESPACE
}  // namespace strata
HWY_AFTER_NAMESPACE();

#endif  // STRATA_KERNELS_GGML_QUANTIZE_K_INL_H_

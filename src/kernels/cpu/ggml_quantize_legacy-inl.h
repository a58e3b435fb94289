// Row quantizers of ggml's 32-element block types, one source for every SIMD target (Google
// Highway): Q4_0 and Q5_0 (make_qx_quants) and Q4_1 and Q5_1 (make_qkx_quants) with an importance
// vector, and IQ4_NL with or without one. Included by ggml_quantize_legacy.cc for dynamic dispatch
// and by the per-target tests; the scalar quantizers of ggml_quantize.cc are the oracle these must
// match byte for byte.
//
// The scheme is that of ggml_quantize_k-inl.h, whose helpers (Transpose, MulR, NearestClamped) and
// asymmetric search (SearchQkx, which Q4_1 and Q5_1 run unchanged with the 32-element block as the
// sub-block) serve here too: lane k follows block k through exactly the scalar sequence of float
// operations, every sum in the scalar order and no product fused into an add; the blocks are
// transposed so that element l of every lane is one load, and branches become per-lane selects.
// The final quants are computed in the same transposed layout and packed per block.
#if defined(STRATA_KERNELS_GGML_QUANTIZE_LEGACY_INL_H_) == defined(HWY_TARGET_TOGGLE)
#ifdef STRATA_KERNELS_GGML_QUANTIZE_LEGACY_INL_H_
#undef STRATA_KERNELS_GGML_QUANTIZE_LEGACY_INL_H_
#else
#define STRATA_KERNELS_GGML_QUANTIZE_LEGACY_INL_H_
#endif

#include <hwy/aligned_allocator.h>
#include <hwy/highway.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>

#include "kernels/cpu/ggml_quantize_k-inl.h"
#include "kernels/cpu/ggml_rows.hpp"
#include "strata/core/dtype.hpp"
#include "strata/kernels/ggml_blocks.hpp"

HWY_BEFORE_NAMESPACE();
namespace strata {
namespace HWY_NAMESPACE {
namespace ggml_legacy {

namespace hn = hwy::HWY_NAMESPACE;
using ggml_k::DF;
using ggml_k::DI;
using ggml_k::MulR;
using ggml_k::ProdS;
using ggml_k::VF;
using ggml_k::VI;

constexpr int kBlock = kernels::kQK;  // elements per block
constexpr float kGroupMaxEps = 1e-15f;  // ggml's GROUP_MAX_EPS

inline uint16_t ToHalf(float f) { return f32_to_f16(f).bits; }

// A row's blocks in groups of `width` lanes (a multiple of N): for each group, load(first, valid,
// lane0) transposes `valid` blocks from block `first` into lanes lane0 .. lane0 + N (lanes past them
// repeat the last block; their results are never read), once per N lanes that hold a block (and
// for the first N), then finish(g, count) runs on the group of `count` blocks from block g.
template <class Load, class Finish>
HWY_INLINE void ForEachGroup(int64_t nb, size_t width, const Load& load, const Finish& finish) {
  const size_t N = hn::Lanes(DF());
  for (int64_t g = 0; g < nb; g += static_cast<int64_t>(width)) {
    for (size_t lane0 = 0; lane0 < width && (lane0 == 0 || g + static_cast<int64_t>(lane0) < nb); lane0 += N) {
      const int64_t first = std::min(g + static_cast<int64_t>(lane0), nb - 1);
      load(first, static_cast<size_t>(std::min<int64_t>(static_cast<int64_t>(N), nb - first)), lane0);
    }
    finish(g, static_cast<size_t>(std::min<int64_t>(static_cast<int64_t>(width), nb - g)));
  }
}

// wt[l] = qw * sqrt(sigma2 + x^2), ggml's *_impl weights, with wt holding the transposed
// importance qw on entry and xt the transposed block (32 x N).
HWY_INLINE void ImatrixWeights(const float* HWY_RESTRICT xt, VF sigma2, float* HWY_RESTRICT wt) {
  const DF df;
  const size_t N = hn::Lanes(df);
  for (int l = 0; l < kBlock; ++l) {
    const VF x = hn::Load(df, xt + static_cast<size_t>(l) * N);
    hn::Store(MulR(hn::Load(df, wt + static_cast<size_t>(l) * N), hn::Sqrt(hn::Add(sigma2, MulR(x, x)))), df,
              wt + static_cast<size_t>(l) * N);
  }
}

// The first block-wide maximum of |x| and the signed value that has it (ggml's loops: a later
// value replaces only a strictly larger one).
HWY_INLINE void SignedAbsMax(const float* HWY_RESTRICT xt, VF& amax, VF& max) {
  const DF df;
  const size_t N = hn::Lanes(df);
  amax = max = hn::Zero(df);
  for (int l = 0; l < kBlock; ++l) {
    const VF x = hn::Load(df, xt + static_cast<size_t>(l) * N);
    const VF ax = hn::Abs(x);
    const auto gt = hn::Gt(ax, amax);
    amax = hn::IfThenElse(gt, ax, amax);
    max = hn::IfThenElse(gt, x, max);
  }
}

// Q5's layout from 32 quants (element l at q[l * stride]): low nibbles of elements j and j + 16 in
// qs[j], fifth bits in qh (bit j for element j, little-endian).
HWY_INLINE void Pack5(const int32_t* HWY_RESTRICT q, size_t stride, uint8_t* qs, uint8_t* qh_out) {
  uint32_t qh = 0;
  for (int j = 0; j < kBlock / 2; ++j) {
    const auto lo = static_cast<uint32_t>(q[static_cast<size_t>(j) * stride]);
    const auto hi = static_cast<uint32_t>(q[static_cast<size_t>(j + kBlock / 2) * stride]);
    qs[j] = static_cast<uint8_t>((lo & 0xF) | ((hi & 0xF) << 4));
    qh |= ((lo >> 4) & 1) << j;
    qh |= ((hi >> 4) & 1) << (j + kBlock / 2);
  }
  for (int b = 0; b < 4; ++b) qh_out[b] = static_cast<uint8_t>(qh >> (8 * b));
}

// Q4's layout: elements j and j + 16 in the low and high nibbles of qs[j].
HWY_INLINE void Pack4(const int32_t* HWY_RESTRICT q, size_t stride, uint8_t* qs) {
  for (int j = 0; j < kBlock / 2; ++j)
    qs[j] = static_cast<uint8_t>(q[static_cast<size_t>(j) * stride] |
                                 (q[static_cast<size_t>(j + kBlock / 2) * stride] << 4));
}

// ggml's choice among candidate scales, per lane: PickFirst takes the first candidate's
// sumlx / suml2 (`fallback` where `usable` fails), PickNext each later candidate whose suml2 > 0
// and sumlx^2 > best * suml2, in candidate order, and reports where it won.
HWY_INLINE void PickFirst(VF& scale, VF& best, hn::Mask<DF> usable, VF sumlx, VF suml2, VF fallback) {
  scale = hn::IfThenElse(usable, hn::Div(sumlx, suml2), fallback);
  best = MulR(scale, sumlx);
}
HWY_INLINE hn::Mask<DF> PickNext(VF& scale, VF& best, VF sumlx, VF suml2) {
  const VF zero = hn::Zero(DF());
  const auto better = hn::And(hn::Gt(suml2, zero), hn::Gt(MulR(sumlx, sumlx), MulR(best, suml2)));
  const VF s = hn::Div(sumlx, suml2);
  scale = hn::IfThenElse(better, s, scale);
  best = hn::IfThenElse(better, MulR(s, sumlx), best);
  return better;
}

// ---- Q4_1 and Q5_1: make_qkx_quants (nmax 15 or 31, rmin -0.9, rdelta 0.05, nstep 36) -----------

// put(block, q, stride) packs one block's 32 quants (element l at q[l * stride]) into y[block] and
// sets d and m from set_dm(block, scale, min).
template <int nmax, class Block, class Put>
HWY_INLINE void QuantizeRowAsym(const float* HWY_RESTRICT x, int64_t n, Block* HWY_RESTRICT y,
                                const float* HWY_RESTRICT importance, const Put& put) {
  const DF df;
  const DI di;
  const size_t N = hn::Lanes(df);
  constexpr int K = ggml_k::kQkxGroups;
  const size_t G = K * N;
  const int64_t nb = n / kBlock;
  // xt, wt, lq: 32 x G each; then per lane scale, -min, and the (iscale, min) that rebuild the quants.
  auto buf = hwy::AllocateAligned<float>(3 * kBlock * G + 4 * G);
  float* xt = buf.get();
  float* wt = xt + kBlock * G;
  float* lq = wt + kBlock * G;
  const ggml_k::KxOut out{lq + kBlock * G, lq + kBlock * G + G, lq + kBlock * G + 2 * G, lq + kBlock * G + 3 * G};
  auto q = hwy::AllocateAligned<int32_t>(kBlock * G);
  const VF sigma2 = hn::Set(df, kernels::detail::legacy_row_sigma2(x, n));
  const VF zero = hn::Zero(df), vnmax = hn::Set(df, static_cast<float>(nmax));
  ForEachGroup(
      nb, G,
      [&](int64_t first, size_t valid, size_t lane0) {
        float* xk = xt + kBlock * lane0;
        float* wk = wt + kBlock * lane0;
        ggml_k::Transpose(x + kBlock * first, kBlock, kBlock, valid, xk);
        ggml_k::Transpose(importance + kBlock * first, kBlock, kBlock, valid, wk);
        ImatrixWeights(xk, sigma2, wk);
      },
      [&](int64_t g, size_t count) {
        // A last group of N blocks or fewer (a row of 48 blocks ends in one) runs one lane group.
        if (count <= N)
          ggml_k::SearchQkx<1, nmax>(xt, wt, lq, -0.9f, 0.05f, 36, out);
        else
          ggml_k::SearchQkx<K, nmax>(xt, wt, lq, -0.9f, 0.05f, 36, out);
        // The kept quants: clamp(nearest_int(iscale * (x - min)), 0, nmax) with the kept pair.
        for (size_t lane0 = 0; lane0 < count; lane0 += N) {
          const VF li = hn::Load(df, out.l_iscale + lane0), lm = hn::Load(df, out.l_min + lane0);
          for (int l = 0; l < kBlock; ++l) {
            const size_t at = (kBlock * lane0) + static_cast<size_t>(l) * N;
            hn::Store(hn::ConvertTo(di, ggml_k::NearestClamped(MulR(li, hn::Sub(hn::Load(df, xt + at), lm)), zero, vnmax)),
                      di, q.get() + at);
          }
        }
        for (size_t i = 0; i < count; ++i) {
          const size_t lane0 = i / N * N, lane = i % N;
          Block& b = y[g + static_cast<int64_t>(i)];
          b.d = ToHalf(out.scale[i]);
          b.m = ToHalf(-out.the_min[i]);
          put(b, q.get() + kBlock * lane0 + lane, N);
        }
      });
}

inline void QuantizeRowQ41(const float* HWY_RESTRICT x, int64_t n, kernels::BlockQ4_1* HWY_RESTRICT y,
                           const float* HWY_RESTRICT importance) {
  QuantizeRowAsym<15>(x, n, y, importance,
                      [](kernels::BlockQ4_1& b, const int32_t* q, size_t stride) { Pack4(q, stride, b.qs); });
}

inline void QuantizeRowQ51(const float* HWY_RESTRICT x, int64_t n, kernels::BlockQ5_1* HWY_RESTRICT y,
                           const float* HWY_RESTRICT importance) {
  QuantizeRowAsym<31>(x, n, y, importance,
                      [](kernels::BlockQ5_1& b, const int32_t* q, size_t stride) { Pack5(q, stride, b.qs, b.qh); });
}

// ---- Q4_0 and Q5_0: make_qx_quants (nmax 8 or 16) with importance weights -----------------------

// make_qx_quants of ggml_quantize.cc (n 32) for N blocks: lane k on block k of xt, weights wt (both
// 32 x N; wxt: scratch of the same size). Stores per lane the scale, and the quants nmax + l
// (l = clamp(nearest_int(iscale * x), -nmax, nmax - 1) for the chosen iscale; 0 in an all-zero
// block) into q (32 x N).
template <int nmax>
HWY_INLINE void SearchQx(const float* HWY_RESTRICT xt, const float* HWY_RESTRICT wt, float* HWY_RESTRICT wxt,
                         float* HWY_RESTRICT o_scale, int32_t* HWY_RESTRICT q) {
  const DF df;
  const DI di;
  const size_t N = hn::Lanes(df);
  constexpr int n_cand = 19;
  auto at = [&](int l) { return static_cast<size_t>(l) * N; };
  const VF zero = hn::Zero(df);
  VF amax, max;
  SignedAbsMax(xt, amax, max);
  for (int l = 0; l < kBlock; ++l) hn::Store(MulR(hn::Load(df, wt + at(l)), hn::Load(df, xt + at(l))), df, wxt + at(l));
  const auto flat = hn::Lt(amax, hn::Set(df, kGroupMaxEps));
  // Outside all-zero lanes |iscale * x| <= nmax + 0.9 (to a few ulps), so clamping before rounding
  // gives what rounding then clamping gives, and adding and removing 1.5 * 2^23 rounds exactly
  // (half to even) as ggml's nearest_int does.
  const VF lo = hn::Set(df, static_cast<float>(-nmax)), hi = hn::Set(df, static_cast<float>(nmax - 1));
  const VF magic = hn::Set(df, ggml_k::kMagic);
  auto quant = [&](VF iscale, VF x) { return hn::Sub(hn::Add(hn::Min(hn::Max(MulR(iscale, x), lo), hi), magic), magic); };
  VF scale = zero, best = zero, chosen = zero;
  for (int c = 0; c < n_cand; ++c) {
    // Candidate 0 is -nmax / max; then is = -9 .. 9 without 0.
    const int is = c == 0 ? 0 : (c <= 9 ? c - 10 : c - 9);
    const float num =
        c == 0 ? static_cast<float>(-nmax) : -(static_cast<float>(nmax) + ProdS(0.1f, static_cast<float>(is)));
    const VF iscale = hn::Div(hn::Set(df, num), max);
    VF sumlx = zero, suml2 = zero;
    for (int l = 0; l < kBlock; ++l) {
      const VF ql = quant(iscale, hn::Load(df, xt + at(l)));
      sumlx = hn::Add(sumlx, MulR(hn::Load(df, wxt + at(l)), ql));
      suml2 = hn::Add(suml2, MulR(MulR(hn::Load(df, wt + at(l)), ql), ql));
    }
    if (c == 0) {
      PickFirst(scale, best, hn::Not(hn::Eq(suml2, zero)), sumlx, suml2, zero);
      chosen = iscale;
    } else {
      chosen = hn::IfThenElse(PickNext(scale, best, sumlx, suml2), iscale, chosen);
    }
  }
  hn::Store(hn::IfThenZeroElse(flat, scale), df, o_scale);
  const VF vnmax = hn::Set(df, static_cast<float>(nmax));
  for (int l = 0; l < kBlock; ++l)
    hn::Store(hn::ConvertTo(di, hn::IfThenZeroElse(flat, hn::Add(quant(chosen, hn::Load(df, xt + at(l))), vnmax))), di,
              q + at(l));
}

template <int nmax, class Block, class Put>
HWY_INLINE void QuantizeRowSym(const float* HWY_RESTRICT x, int64_t n, Block* HWY_RESTRICT y,
                               const float* HWY_RESTRICT importance, const Put& put) {
  const DF df;
  const size_t N = hn::Lanes(df);
  const int64_t nb = n / kBlock;
  auto buf = hwy::AllocateAligned<float>(3 * kBlock * N + N);
  float* xt = buf.get();
  float* wt = xt + kBlock * N;
  float* wxt = wt + kBlock * N;
  float* scale = wxt + kBlock * N;
  auto q = hwy::AllocateAligned<int32_t>(kBlock * N);
  const VF sigma2 = hn::Set(df, kernels::detail::legacy_row_sigma2(x, n));
  ForEachGroup(
      nb, N,
      [&](int64_t first, size_t valid, size_t) {
        ggml_k::Transpose(x + kBlock * first, kBlock, kBlock, valid, xt);
        ggml_k::Transpose(importance + kBlock * first, kBlock, kBlock, valid, wt);
        ImatrixWeights(xt, sigma2, wt);
      },
      [&](int64_t g, size_t count) {
        SearchQx<nmax>(xt, wt, wxt, scale, q.get());
        for (size_t i = 0; i < count; ++i) {
          Block& b = y[g + static_cast<int64_t>(i)];
          b.d = ToHalf(scale[i]);
          put(b, q.get() + i, N);
        }
      });
}

inline void QuantizeRowQ40(const float* HWY_RESTRICT x, int64_t n, kernels::BlockQ4_0* HWY_RESTRICT y,
                           const float* HWY_RESTRICT importance) {
  QuantizeRowSym<8>(x, n, y, importance,
                    [](kernels::BlockQ4_0& b, const int32_t* q, size_t stride) { Pack4(q, stride, b.qs); });
}

inline void QuantizeRowQ50(const float* HWY_RESTRICT x, int64_t n, kernels::BlockQ5_0* HWY_RESTRICT y,
                           const float* HWY_RESTRICT importance) {
  QuantizeRowSym<16>(x, n, y, importance,
                     [](kernels::BlockQ5_0& b, const int32_t* q, size_t stride) { Pack5(q, stride, b.qs, b.qh); });
}

// ---- IQ4_NL ---------------------------------------------------------------------------------------

// The IQ4_NL level nearest to v as ggml's best_index_int8 picks it, for v not NaN: the bracketing
// pair a = L[k] <= v < b = L[k + 1] (a = L[0] below the range, a = b = L[15] above it), found by a
// four-step binary search of selects, then `v - a < b - v ? a : b` in float, ties going up. Below
// the range that comparison keeps L[0], above it L[15], as ggml's range checks do. *index receives
// k plus one where b wins (at most 15).
HWY_INLINE VF Iq4nlLevel(int k) { return hn::Set(DF(), static_cast<float>(kernels::kIq4nlValues[k])); }

template <bool kIndex>
HWY_INLINE VF Iq4nlNearest(VF v, VI* index = nullptr) {
  const auto L = [](int k) { return Iq4nlLevel(k); };
  const auto m8 = hn::Ge(v, L(8));
  const VF t4 = hn::IfThenElse(m8, L(12), L(4));
  const auto m4 = hn::Ge(v, t4);
  const VF t2 = hn::IfThenElse(m8, hn::IfThenElse(m4, L(14), L(10)), hn::IfThenElse(m4, L(6), L(2)));
  const auto m2 = hn::Ge(v, t2);
  const VF t1 = hn::IfThenElse(
      m8, hn::IfThenElse(m4, hn::IfThenElse(m2, L(15), L(13)), hn::IfThenElse(m2, L(11), L(9))),
      hn::IfThenElse(m4, hn::IfThenElse(m2, L(7), L(5)), hn::IfThenElse(m2, L(3), L(1))));
  const auto m1 = hn::Ge(v, t1);
  // a: the last threshold passed (L(0) if none); b: the last one failed (L(15) if none).
  VF a = hn::IfThenElse(m8, L(8), L(0));
  a = hn::IfThenElse(m4, t4, a);
  a = hn::IfThenElse(m2, t2, a);
  a = hn::IfThenElse(m1, t1, a);
  VF b = hn::IfThenElse(m8, L(15), L(8));
  b = hn::IfThenElse(m4, b, t4);
  b = hn::IfThenElse(m2, b, t2);
  b = hn::IfThenElse(m1, b, t1);
  const auto down = hn::Lt(hn::Sub(v, a), hn::Sub(b, v));
  if constexpr (kIndex) {
    const DI di;
    const auto bit = [&](hn::Mask<DF> m, int w) { return hn::IfThenElseZero(hn::RebindMask(di, m), hn::Set(di, w)); };
    const VI k = hn::Add(hn::Add(bit(m8, 8), bit(m4, 4)), hn::Add(bit(m2, 2), bit(m1, 1)));
    *index = hn::Min(hn::Add(k, bit(hn::Not(down), 1)), hn::Set(di, 15));
  }
  return hn::IfThenElse(down, a, b);
}

// quantize_row_iq4_nl_impl (one block per super-block, ntry 7) for N blocks: lane k on block k of
// xt (32 x N), with weights wt. Stores per lane the scale (0 for an all-zero block), and the quants'
// level indices into q (32 x N).
HWY_INLINE void SearchIq4nl(const float* HWY_RESTRICT xt, const float* HWY_RESTRICT wt,
                            float* HWY_RESTRICT o_scale, int32_t* HWY_RESTRICT q) {
  const DF df;
  const DI di;
  const size_t N = hn::Lanes(df);
  constexpr int ntry = 7, n_cand = 2 * ntry + 2;
  auto at = [&](int l) { return static_cast<size_t>(l) * N; };
  const VF zero = hn::Zero(df), one = hn::Set(df, 1.f);
  VF amax, max;
  SignedAbsMax(xt, amax, max);
  const auto flat = hn::Not(hn::Ge(amax, hn::Set(df, kGroupMaxEps)));
  // Candidate 0 maps the extreme value onto the extreme level; then ggml's itry = -7 .. 7. Outside
  // all-zero lanes every product id * x is finite (|max| >= 1e-15), never NaN.
  VF d = zero, best = zero;
  for (int c = 0; c < n_cand; ++c) {
    const VF id = c == 0 ? hn::Div(one, hn::Div(hn::Neg(max), Iq4nlLevel(0)))
                         : hn::Div(hn::Set(df, static_cast<float>(c - 1 - ntry + kernels::kIq4nlValues[0])), max);
    VF sumqx = zero, sumq2 = zero;
    for (int l = 0; l < kBlock; ++l) {
      const VF x = hn::Load(df, xt + at(l));
      const VF ql = Iq4nlNearest<false>(MulR(id, x));
      const VF wq = MulR(hn::Load(df, wt + at(l)), ql);
      sumqx = hn::Add(sumqx, MulR(wq, x));
      sumq2 = hn::Add(sumq2, MulR(wq, ql));
    }
    // ggml divides unguarded; the reference stores a finite scale where the first sum is zero.
    if (c == 0)
      PickFirst(d, best, hn::Gt(sumq2, zero), sumqx, sumq2, hn::Div(hn::Neg(max), Iq4nlLevel(0)));
    else
      PickNext(d, best, sumqx, sumq2);
  }
  const VF scale = hn::IfThenZeroElse(flat, d);
  hn::Store(scale, df, o_scale);
  // The quants against 1 / scale (0 where the scale is 0); a NaN scale makes every product NaN,
  // which ggml's search ends at index 15.
  const VF id = hn::IfThenElseZero(hn::Not(hn::Eq(scale, zero)), hn::Div(one, scale));
  const VI top = hn::Set(di, 15);
  for (int l = 0; l < kBlock; ++l) {
    const VF v = MulR(id, hn::Load(df, xt + at(l)));
    VI k;
    Iq4nlNearest<true>(v, &k);
    hn::Store(hn::IfThenElse(hn::RebindMask(di, hn::IsNaN(v)), top, k), di, q + at(l));
  }
}

inline void QuantizeRowIQ4NL(const float* HWY_RESTRICT x, int64_t n, kernels::BlockIQ4_NL* HWY_RESTRICT y,
                             const float* HWY_RESTRICT importance) {
  const DF df;
  const size_t N = hn::Lanes(df);
  const int64_t nb = n / kBlock;
  auto buf = hwy::AllocateAligned<float>(2 * kBlock * N + N);
  float* xt = buf.get();
  float* wt = xt + kBlock * N;
  float* scale = wt + kBlock * N;
  auto q = hwy::AllocateAligned<int32_t>(kBlock * N);
  ForEachGroup(
      nb, N,
      [&](int64_t first, size_t valid, size_t) {
        ggml_k::Transpose(x + kBlock * first, kBlock, kBlock, valid, xt);
        // sigma2 = 2 * sum(x^2) / 32 over the block (the sum in element order, then scaled), and the
        // weights qw * sqrt(sigma2 + x^2), or x^2 without importance.
        if (importance) {
          VF s = hn::Zero(df);
          for (int l = 0; l < kBlock; ++l) {
            const VF v = hn::Load(df, xt + static_cast<size_t>(l) * N);
            s = hn::Add(s, MulR(v, v));
          }
          ggml_k::Transpose(importance + kBlock * first, kBlock, kBlock, valid, wt);
          ImatrixWeights(xt, MulR(s, hn::Set(df, 2.f / kBlock)), wt);
        } else {
          for (int l = 0; l < kBlock; ++l) {
            const VF v = hn::Load(df, xt + static_cast<size_t>(l) * N);
            hn::Store(MulR(v, v), df, wt + static_cast<size_t>(l) * N);
          }
        }
      },
      [&](int64_t g, size_t count) {
        SearchIq4nl(xt, wt, scale, q.get());
        for (size_t i = 0; i < count; ++i) {
          kernels::BlockIQ4_NL& b = y[g + static_cast<int64_t>(i)];
          b.d = ToHalf(scale[i]);
          Pack4(q.get() + i, N, b.qs);
        }
      });
}

}  // namespace ggml_legacy

using ggml_legacy::QuantizeRowIQ4NL;
using ggml_legacy::QuantizeRowQ40;
using ggml_legacy::QuantizeRowQ41;
using ggml_legacy::QuantizeRowQ50;
using ggml_legacy::QuantizeRowQ51;

}  // namespace HWY_NAMESPACE
}  // namespace strata
HWY_AFTER_NAMESPACE();

#endif  // STRATA_KERNELS_GGML_QUANTIZE_LEGACY_INL_H_

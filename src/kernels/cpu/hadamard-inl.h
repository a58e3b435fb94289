// The fast Walsh-Hadamard transform, one source for every SIMD target (Google Highway). Included
// by hadamard.cc for dynamic dispatch and by the per-target tests; fwht_reference() in hadamard.cc
// is the oracle.
//
// Butterflies of stride h >= lanes pair whole vectors (a, b -> a + b, a - b). Strides below the
// vector length pair lanes of one vector: lane i's partner is lane i ^ h (a table lookup), and
// y = partner + s x with s = +1 where bit h of i is clear (x[i] + x[i + h]) and -1 where it is set
// (x[i - h] - x[i]). A multiply-add by +-1 is exact, so every lane gets the additions the scalar
// loop does, in the same order: the results agree bit for bit.
#if defined(STRATA_KERNELS_HADAMARD_INL_H_) == defined(HWY_TARGET_TOGGLE)
#ifdef STRATA_KERNELS_HADAMARD_INL_H_
#undef STRATA_KERNELS_HADAMARD_INL_H_
#else
#define STRATA_KERNELS_HADAMARD_INL_H_
#endif

#include <hwy/highway.h>

#include <cstdint>

HWY_BEFORE_NAMESPACE();
namespace strata {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

// One row of n floats (n a power of two), scalar: the stages the vector code cannot fill.
inline void FwhtRowScalar(float* HWY_RESTRICT x, int64_t n) {
  for (int64_t h = 1; h < n; h *= 2)
    for (int64_t i = 0; i < n; i += 2 * h)
      for (int64_t j = i; j < i + h; ++j) {
        const float a = x[j], b = x[j + h];
        x[j] = a + b;
        x[j + h] = a - b;
      }
}

// x <- scale * post . (H (pre . x)) per row: `pre` (n values or null) multiplies every row before
// the transform, `post` (n values or null) after it, then `scale`. Rows `stride` floats apart.
inline void FwhtRows(float* HWY_RESTRICT x, int64_t rows, int64_t n, int64_t stride, const float* HWY_RESTRICT pre,
                     const float* HWY_RESTRICT post, float scale) {
  const hn::ScalableTag<float> df;
  const hn::RebindToUnsigned<decltype(df)> du;
  const int64_t N = static_cast<int64_t>(hn::Lanes(df));
  constexpr int kMaxStages = 12;  // in-vector strides: vectors of up to 4096 lanes
  if (n < N || N > (int64_t{1} << kMaxStages)) {
    for (int64_t r = 0; r < rows; ++r) {
      float* row = x + r * stride;
      if (pre)
        for (int64_t i = 0; i < n; ++i) row[i] *= pre[i];
      FwhtRowScalar(row, n);
      for (int64_t i = 0; i < n; ++i) row[i] = post ? row[i] * post[i] * scale : row[i] * scale;
    }
    return;
  }
  // In-vector stages: the partner index and the sign per stride h < N.
  using Idx = decltype(hn::IndicesFromVec(df, hn::Zero(du)));
  Idx partner[kMaxStages];
  decltype(hn::Zero(df)) sign[kMaxStages];
  int stages = 0;
  const auto iota = hn::Iota(du, 0);
  for (int64_t h = 1; h < N && stages < kMaxStages; h *= 2, ++stages) {
    const auto hv = hn::Set(du, static_cast<uint32_t>(h));
    partner[stages] = hn::IndicesFromVec(df, hn::Xor(iota, hv));
    sign[stages] = hn::IfThenElse(hn::RebindMask(df, hn::TestBit(iota, hv)), hn::Set(df, -1.0f), hn::Set(df, 1.0f));
  }
  const auto vscale = hn::Set(df, scale);
  for (int64_t r = 0; r < rows; ++r) {
    float* HWY_RESTRICT row = x + r * stride;
    for (int64_t i = 0; i < n; i += N) {
      auto v = hn::LoadU(df, row + i);
      if (pre) v = hn::Mul(v, hn::LoadU(df, pre + i));
      for (int s = 0; s < stages; ++s) v = hn::MulAdd(sign[s], v, hn::TableLookupLanes(v, partner[s]));
      hn::StoreU(v, df, row + i);
    }
    for (int64_t h = N; h < n; h *= 2)
      for (int64_t i = 0; i < n; i += 2 * h)
        for (int64_t j = i; j < i + h; j += N) {
          const auto a = hn::LoadU(df, row + j), b = hn::LoadU(df, row + j + h);
          hn::StoreU(hn::Add(a, b), df, row + j);
          hn::StoreU(hn::Sub(a, b), df, row + j + h);
        }
    for (int64_t i = 0; i < n; i += N) {
      auto v = hn::LoadU(df, row + i);
      if (post) v = hn::Mul(v, hn::LoadU(df, post + i));
      hn::StoreU(hn::Mul(v, vscale), df, row + i);
    }
  }
}

}  // namespace HWY_NAMESPACE
}  // namespace strata
HWY_AFTER_NAMESPACE();

#endif  // STRATA_KERNELS_HADAMARD_INL_H_

// Exponential sums over long rows, one source for every SIMD target (Google Highway). Included by
// softmax.cc for dynamic dispatch and by the per-target tests; the `_reference` functions in
// softmax.cc are the oracles.
//
// Each lane accumulates float terms for at most kFlushVectors vectors, then the vector's lanes are
// added into a double total, so a row of 50,000 terms never sums more than 64 floats in float.
#if defined(STRATA_KERNELS_SOFTMAX_INL_H_) == defined(HWY_TARGET_TOGGLE)
#ifdef STRATA_KERNELS_SOFTMAX_INL_H_
#undef STRATA_KERNELS_SOFTMAX_INL_H_
#else
#define STRATA_KERNELS_SOFTMAX_INL_H_
#endif

#include <hwy/contrib/math/math-inl.h>
#include <hwy/highway.h>

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstdint>

HWY_BEFORE_NAMESPACE();
namespace strata {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

namespace softmax_detail {
constexpr int64_t kFlushVectors = 64;

// exp(v) for v in [-inf, 104]: -inf (and anything below -FLT_MAX) gives 0, as exp does.
template <class D, class V>
HWY_INLINE V ExpOrZero(D d, V v) {
  return hn::Exp(d, hn::Max(v, hn::Set(d, -FLT_MAX)));
}

template <class D, class V>
HWY_INLINE double SumLanes(D d, V v) {
  HWY_ALIGN float lanes[hn::MaxLanes(d)];
  hn::Store(v, d, lanes);
  double s = 0;
  for (size_t i = 0; i < hn::Lanes(d); ++i) s += lanes[i];
  return s;
}
}  // namespace softmax_detail

inline float RowMax(const float* HWY_RESTRICT x, int64_t n) {
  const hn::ScalableTag<float> d;
  const int64_t N = static_cast<int64_t>(hn::Lanes(d));
  float mx = x[0];
  int64_t i = 0;
  if (n >= N) {
    auto v = hn::LoadU(d, x);
    for (i = N; i + N <= n; i += N) v = hn::Max(v, hn::LoadU(d, x + i));
    mx = hn::GetLane(hn::MaxOfLanes(d, v));
  }
  for (; i < n; ++i) mx = x[i] > mx ? x[i] : mx;
  return mx;
}

// sum_i exp(x_i - shift); with `out`, also out_i = exp(x_i - shift) (out may equal x).
inline double SumExp(const float* x, int64_t n, float shift, float* out) {
  using namespace softmax_detail;
  const hn::ScalableTag<float> d;
  const int64_t N = static_cast<int64_t>(hn::Lanes(d));
  const auto vshift = hn::Set(d, shift);
  double total = 0;
  auto acc = hn::Zero(d);
  int64_t pending = 0, i = 0;
  for (; i + N <= n; i += N) {
    const auto e = ExpOrZero(d, hn::Sub(hn::LoadU(d, x + i), vshift));
    if (out) hn::StoreU(e, d, out + i);
    acc = hn::Add(acc, e);
    if (++pending == kFlushVectors) {
      total += SumLanes(d, acc);
      acc = hn::Zero(d);
      pending = 0;
    }
  }
  if (i < n) {  // the tail through a vector-sized buffer padded with -inf (exp gives 0 there)
    const size_t rest = static_cast<size_t>(n - i);
    HWY_ALIGN float tail[hn::MaxLanes(d)];
    for (size_t k = 0; k < hn::Lanes(d); ++k) tail[k] = k < rest ? x[i + static_cast<int64_t>(k)] : -HUGE_VALF;
    const auto e = ExpOrZero(d, hn::Sub(hn::Load(d, tail), vshift));
    if (out) {
      hn::Store(e, d, tail);
      for (size_t k = 0; k < rest; ++k) out[i + static_cast<int64_t>(k)] = tail[k];
    }
    acc = hn::Add(acc, e);
  }
  return total + SumLanes(d, acc);
}

// x_i <- x_i - offset.
inline void SubtractAll(float* x, int64_t n, float offset) {
  const hn::ScalableTag<float> d;
  const int64_t N = static_cast<int64_t>(hn::Lanes(d));
  const auto v = hn::Set(d, offset);
  int64_t i = 0;
  for (; i + N <= n; i += N) hn::StoreU(hn::Sub(hn::LoadU(d, x + i), v), d, x + i);
  for (; i < n; ++i) x[i] -= offset;
}

// gate_i <- gate_i / (1 + exp(-gate_i)) * up_i; the exponent is capped at 88 (exp stays finite).
inline void SiluMul(float* HWY_RESTRICT gate, const float* HWY_RESTRICT up, int64_t n) {
  const hn::ScalableTag<float> d;
  const int64_t N = static_cast<int64_t>(hn::Lanes(d));
  const auto one = hn::Set(d, 1.0f), cap = hn::Set(d, 88.0f);
  int64_t i = 0;
  for (; i + N <= n; i += N) {
    const auto g = hn::LoadU(d, gate + i);
    const auto e = hn::Exp(d, hn::Min(hn::Neg(g), cap));
    hn::StoreU(hn::Mul(hn::Div(g, hn::Add(one, e)), hn::LoadU(d, up + i)), d, gate + i);
  }
  for (; i < n; ++i) gate[i] = gate[i] / (1.0f + std::exp(std::min(-gate[i], 88.0f))) * up[i];
}

// sum_i exp(lp_i) (lp_i - lq_i).
inline double KlFromLogProbs(const float* HWY_RESTRICT lp, const float* HWY_RESTRICT lq, int64_t n) {
  using namespace softmax_detail;
  const hn::ScalableTag<float> d;
  const int64_t N = static_cast<int64_t>(hn::Lanes(d));
  double total = 0;
  auto acc = hn::Zero(d);
  int64_t pending = 0, i = 0;
  for (; i + N <= n; i += N) {
    const auto p = hn::LoadU(d, lp + i);
    const auto diff = hn::Sub(p, hn::LoadU(d, lq + i));
    // A term whose probability is 0 adds 0, whatever lq holds (as exp(-inf) * x is taken to be).
    const auto e = ExpOrZero(d, p);
    acc = hn::Add(acc, hn::IfThenZeroElse(hn::Eq(e, hn::Zero(d)), hn::Mul(e, diff)));
    if (++pending == kFlushVectors) {
      total += SumLanes(d, acc);
      acc = hn::Zero(d);
      pending = 0;
    }
  }
  total += SumLanes(d, acc);
  for (; i < n; ++i) {
    const double p = lp[i];
    const double e = std::exp(p);
    if (e != 0) total += e * (p - static_cast<double>(lq[i]));
  }
  return total;
}

}  // namespace HWY_NAMESPACE
}  // namespace strata
HWY_AFTER_NAMESPACE();

#endif  // STRATA_KERNELS_SOFTMAX_INL_H_

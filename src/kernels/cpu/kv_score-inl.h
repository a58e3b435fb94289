// KV-cache scoring loops, one source for every SIMD target (Google Highway). Included by
// kv_score.cc for dynamic dispatch and by the per-target tests; the references in kv_score.cc are
// the oracle (kv_score.hpp says what each computes).
#if defined(STRATA_KERNELS_KV_SCORE_INL_H_) == defined(HWY_TARGET_TOGGLE)
#ifdef STRATA_KERNELS_KV_SCORE_INL_H_
#undef STRATA_KERNELS_KV_SCORE_INL_H_
#else
#define STRATA_KERNELS_KV_SCORE_INL_H_
#endif

#include <hwy/highway.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <limits>
#include <vector>

HWY_BEFORE_NAMESPACE();
namespace strata {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

// sum_i a[i] b[i] in float: two accumulators so that consecutive FMAs do not wait on each other.
inline float KvDot(const float* HWY_RESTRICT a, const float* HWY_RESTRICT b, int64_t d) {
  const hn::ScalableTag<float> df;
  const int64_t N = static_cast<int64_t>(hn::Lanes(df));
  auto s0 = hn::Zero(df), s1 = hn::Zero(df);
  int64_t i = 0;
  for (; i + 2 * N <= d; i += 2 * N) {
    s0 = hn::MulAdd(hn::LoadU(df, a + i), hn::LoadU(df, b + i), s0);
    s1 = hn::MulAdd(hn::LoadU(df, a + i + N), hn::LoadU(df, b + i + N), s1);
  }
  if (i + N <= d) {
    s0 = hn::MulAdd(hn::LoadU(df, a + i), hn::LoadU(df, b + i), s0);
    i += N;
  }
  float s = hn::GetLane(hn::SumOfLanes(df, hn::Add(s0, s1)));
  for (; i < d; ++i) s += a[i] * b[i];
  return s;
}

inline void KvRowDots(const float* HWY_RESTRICT q, const float* HWY_RESTRICT k, int64_t n, int64_t d, int64_t stride,
                      float* HWY_RESTRICT scores) {
  for (int64_t j = 0; j < n; ++j) scores[j] = KvDot(q, k + j * stride, d);
}

inline void KvRowNorms(const float* HWY_RESTRICT k, int64_t n, int64_t d, int64_t stride, float* HWY_RESTRICT norms) {
  for (int64_t j = 0; j < n; ++j) norms[j] = std::sqrt(KvDot(k + j * stride, k + j * stride, d));
}

inline void KvAccumulateRows(const float* HWY_RESTRICT rows, int64_t m, int64_t n, int64_t stride,
                             float* HWY_RESTRICT acc) {
  if (m <= 0) return;
  const hn::ScalableTag<float> df;
  const int64_t N = static_cast<int64_t>(hn::Lanes(df));
  int64_t j = 0;
  for (; j + N <= n; j += N) {
    auto s = hn::LoadU(df, rows + j);
    for (int64_t i = 1; i < m; ++i) s = hn::Add(s, hn::LoadU(df, rows + i * stride + j));
    hn::StoreU(hn::Add(hn::LoadU(df, acc + j), s), df, acc + j);
  }
  for (; j < n; ++j) {
    float s = rows[j];
    for (int64_t i = 1; i < m; ++i) s += rows[i * stride + j];
    acc[j] += s;
  }
}

// ---- top-k ---------------------------------------------------------------------------------------
//
// Two steps: find the k-th largest value t and how many of the values equal to t belong to the
// top k (the values above t all do), then one compare-and-compress pass over the scores writes the
// indices of the values above t and of the first `take_equal` values equal to t, in index order.
// Finding t is a selection over a copy for short inputs; for long ones a sample brackets t between
// two values, one pass counts the values above the bracket and compresses those inside it, and the
// selection runs over that (small) bracket only. A sample that misses t falls back to the copy.

struct KvThreshold {
  float t;
  int64_t take_equal;  // values equal to t that are in the top k (the lowest indices first)
};

// The k-th largest (1 <= k <= v.size()) of v, which it reorders.
inline KvThreshold KvSelectThreshold(std::vector<float>& v, int64_t k) {
  std::nth_element(v.begin(), v.begin() + (k - 1), v.end(), std::greater<float>());
  const float t = v[static_cast<size_t>(k - 1)];
  // nth_element leaves values >= t in front of position k - 1 and values <= t behind it.
  const auto greater = std::count_if(v.begin(), v.begin() + (k - 1), [t](float x) { return x > t; });
  return {t, k - static_cast<int64_t>(greater)};
}

inline KvThreshold KvExactThreshold(const float* HWY_RESTRICT s, int64_t n, int64_t k) {
  std::vector<float> v(s, s + n);
  return KvSelectThreshold(v, k);
}

// Inputs up to this long are selected over a copy: a bracket saves little there.
inline constexpr int64_t kKvTopKExactBelow = 1024;
inline constexpr int64_t kKvTopKSample = 2048;  // at most; an eighth of the input below 16K

inline KvThreshold KvThresholdOf(const float* HWY_RESTRICT s, int64_t n, int64_t k) {
  if (n <= kKvTopKExactBelow) return KvExactThreshold(s, n, k);
  // One sample per stretch of n / m scores, at a hashed offset inside it, so that periodic inputs
  // do not alias with the stride.
  const int64_t m = std::min(kKvTopKSample, n / 8), stretch = n / m;
  std::vector<float> sample(static_cast<size_t>(m));
  uint32_t h = 0x9e3779b9u;
  for (int64_t i = 0; i < m; ++i) {
    h = h * 1664525u + 1013904223u;
    sample[static_cast<size_t>(i)] = s[i * stretch + static_cast<int64_t>((h >> 8) % static_cast<uint32_t>(stretch))];
  }
  // The k-th largest of n sits near rank k m / n of the sample; four standard deviations of that
  // rank (binomial) either side make a miss rare, and a miss only costs the exact path.
  const double f = static_cast<double>(k) / static_cast<double>(n);
  const double rank = f * static_cast<double>(m), margin = 4 * std::sqrt(rank * (1 - f)) + 2;
  const int64_t r_hi = static_cast<int64_t>(std::floor(rank - margin));  // 0-based, from the top
  const int64_t r_lo = static_cast<int64_t>(std::ceil(rank + margin));
  auto by_rank = [&](int64_t r) {
    std::nth_element(sample.begin(), sample.begin() + r, sample.end(), std::greater<float>());
    return sample[static_cast<size_t>(r)];
  };
  const float inf = std::numeric_limits<float>::infinity();
  const float hi = r_hi < 0 ? inf : by_rank(r_hi);
  const float lo = r_lo >= m ? -inf : by_rank(r_lo);

  const hn::ScalableTag<float> df;
  const int64_t N = static_cast<int64_t>(hn::Lanes(df));
  std::vector<float> band(static_cast<size_t>(n + N));
  const auto vhi = hn::Set(df, hi), vlo = hn::Set(df, lo);
  int64_t above = 0, nb = 0, i = 0;
  for (; i + N <= n; i += N) {
    const auto v = hn::LoadU(df, s + i);
    above += static_cast<int64_t>(hn::CountTrue(df, hn::Gt(v, vhi)));
    nb += static_cast<int64_t>(hn::CompressStore(v, hn::And(hn::Le(v, vhi), hn::Ge(v, vlo)), df, band.data() + nb));
  }
  for (; i < n; ++i) {
    above += s[i] > hi;
    if (s[i] <= hi && s[i] >= lo) band[static_cast<size_t>(nb++)] = s[i];
  }
  const int64_t need = k - above;
  if (need < 1 || need > nb) return KvExactThreshold(s, n, k);
  // The values above the bracket are above t too: the band's own count of equal values to take is
  // the whole array's.
  band.resize(static_cast<size_t>(nb));
  return KvSelectThreshold(band, need);
}

inline int64_t KvTopK(const float* HWY_RESTRICT s, int64_t n, int64_t k, int64_t* HWY_RESTRICT out) {
  k = std::clamp<int64_t>(k, 0, std::max<int64_t>(n, 0));
  if (k == 0) return 0;
  if (k == n) {
    for (int64_t j = 0; j < n; ++j) out[j] = j;
    return n;
  }
  const KvThreshold th = KvThresholdOf(s, n, k);
  const hn::ScalableTag<float> df;
  const hn::RebindToUnsigned<decltype(df)> du;
  const int64_t N = static_cast<int64_t>(hn::Lanes(df));
  // Indices go through a 32-bit buffer (compressed with the float lanes' masks) in blocks, then
  // widen; n above 2^32 takes the scalar tail loop for the part past it.
  constexpr int64_t kBlock = 1024;
  HWY_ALIGN uint32_t idx[kBlock + HWY_MAX_BYTES / sizeof(uint32_t)];
  const auto vt = hn::Set(df, th.t);
  const int64_t simd_end = std::min<int64_t>(n, int64_t{1} << 32);
  int64_t equal_left = th.take_equal, written = 0, i = 0;
  auto kept = [&](float x) {
    if (x > th.t) return true;
    if (x != th.t || equal_left == 0) return false;
    --equal_left;
    return true;
  };
  while (i + N <= simd_end) {
    const int64_t block_end = std::min(simd_end, i + kBlock);
    int64_t nb = 0;
    auto vi = hn::Iota(du, static_cast<uint32_t>(i));
    const auto step = hn::Set(du, static_cast<uint32_t>(N));
    for (; i + N <= block_end; i += N, vi = hn::Add(vi, step)) {
      const auto v = hn::LoadU(df, s + i);
      auto keep = hn::Gt(v, vt);
      if (equal_left > 0) {
        const auto eq = hn::Eq(v, vt);
        const auto ne = static_cast<int64_t>(hn::CountTrue(df, eq));
        if (ne <= equal_left) {
          keep = hn::Or(keep, eq);
          equal_left -= ne;
        } else {
          // The last equal values to take lie in this vector: lane by lane, in index order.
          for (int64_t l = 0; l < N; ++l)
            if (kept(s[i + l])) idx[nb++] = static_cast<uint32_t>(i + l);
          continue;
        }
      }
      nb += static_cast<int64_t>(hn::CompressStore(vi, hn::RebindMask(du, keep), du, idx + nb));
    }
    for (int64_t j = 0; j < nb; ++j) out[written + j] = idx[j];
    written += nb;
  }
  for (; i < n; ++i)
    if (kept(s[i])) out[written++] = i;
  return written;
}

}  // namespace HWY_NAMESPACE
}  // namespace strata
HWY_AFTER_NAMESPACE();

#endif  // STRATA_KERNELS_KV_SCORE_INL_H_

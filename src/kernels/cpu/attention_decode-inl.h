// Attention products over a few queries, one source for every SIMD target (Google Highway).
// Included by attention_decode.cc for dynamic dispatch; attention_decode.hpp says what each computes.
//
// Scores: two key rows at a time against a block of up to four queries, so that up to eight
// independent FMA chains hide the FMA latency; each row's vectors are loaded once for the block.
// Values: a block of up to three queries holds its outputs in registers four vectors wide (half a
// row of 64 floats on AVX2), one pass over the rows per such column slice. With slices of one cache
// line (two vectors) decode attention took 12% more CPU time than the per-query-head Eigen products
// it replaces on SmolLM2's shapes at 4K; with half rows, 16% less (bench_kv,
// FormatDecode/attention_only, docs/kv-cache.md).
#if defined(STRATA_KERNELS_ATTENTION_DECODE_INL_H_) == defined(HWY_TARGET_TOGGLE)
#ifdef STRATA_KERNELS_ATTENTION_DECODE_INL_H_
#undef STRATA_KERNELS_ATTENTION_DECODE_INL_H_
#else
#define STRATA_KERNELS_ATTENTION_DECODE_INL_H_
#endif

#include <hwy/highway.h>

#include <algorithm>
#include <cstdint>

HWY_BEFORE_NAMESPACE();
namespace strata {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

namespace attention_detail {

constexpr int64_t kQueryBlock = 4;   // scores: 2 rows x 4 queries = 8 accumulators
constexpr int64_t kValueBlock = 3;   // values: 3 queries x 4 vectors = 12 accumulators

template <int M>
HWY_INLINE void ScoresBlock(const float* HWY_RESTRICT q, int64_t q_stride, const float* HWY_RESTRICT k, int64_t n,
                            int64_t k_stride, int64_t d, float scale, float* HWY_RESTRICT scores,
                            int64_t score_stride) {
  const hn::ScalableTag<float> df;
  using V = hn::Vec<decltype(df)>;
  const int64_t N = static_cast<int64_t>(hn::Lanes(df));
  const int64_t dv = d / N * N;
  auto tail = [&](int i, const float* row) {
    float s = 0;
    for (int64_t c = dv; c < d; ++c) s += q[i * q_stride + c] * row[c];
    return s;
  };
  int64_t j = 0;
  for (; j + 2 <= n; j += 2) {
    const float* k0 = k + j * k_stride;
    const float* k1 = k0 + k_stride;
    V a0[M], a1[M];
    for (int i = 0; i < M; ++i) a0[i] = a1[i] = hn::Zero(df);
    for (int64_t c = 0; c < dv; c += N) {
      const V x0 = hn::LoadU(df, k0 + c), x1 = hn::LoadU(df, k1 + c);
      for (int i = 0; i < M; ++i) {
        const V qv = hn::LoadU(df, q + i * q_stride + c);
        a0[i] = hn::MulAdd(qv, x0, a0[i]);
        a1[i] = hn::MulAdd(qv, x1, a1[i]);
      }
    }
    for (int i = 0; i < M; ++i) {
      scores[i * score_stride + j] = (hn::GetLane(hn::SumOfLanes(df, a0[i])) + tail(i, k0)) * scale;
      scores[i * score_stride + j + 1] = (hn::GetLane(hn::SumOfLanes(df, a1[i])) + tail(i, k1)) * scale;
    }
  }
  if (j < n) {
    const float* k0 = k + j * k_stride;
    V a0[M];
    for (int i = 0; i < M; ++i) a0[i] = hn::Zero(df);
    for (int64_t c = 0; c < dv; c += N) {
      const V x0 = hn::LoadU(df, k0 + c);
      for (int i = 0; i < M; ++i) a0[i] = hn::MulAdd(hn::LoadU(df, q + i * q_stride + c), x0, a0[i]);
    }
    for (int i = 0; i < M; ++i)
      scores[i * score_stride + j] = (hn::GetLane(hn::SumOfLanes(df, a0[i])) + tail(i, k0)) * scale;
  }
}

// Columns [c0, c0 + W * N) of the block's outputs, W vectors wide, over all n rows.
template <int M, int W>
HWY_INLINE void ValuesSlice(const float* HWY_RESTRICT p, int64_t p_stride, const float* HWY_RESTRICT v, int64_t n,
                            int64_t v_stride, int64_t c0, float* HWY_RESTRICT out, int64_t out_stride) {
  const hn::ScalableTag<float> df;
  using V = hn::Vec<decltype(df)>;
  const int64_t N = static_cast<int64_t>(hn::Lanes(df));
  V acc[M][W];
  for (int i = 0; i < M; ++i)
    for (int w = 0; w < W; ++w) acc[i][w] = hn::Zero(df);
  for (int64_t j = 0; j < n; ++j) {
    const float* row = v + j * v_stride + c0;
    V x[W];
    for (int w = 0; w < W; ++w) x[w] = hn::LoadU(df, row + w * N);
    for (int i = 0; i < M; ++i) {
      const V pv = hn::Set(df, p[i * p_stride + j]);
      for (int w = 0; w < W; ++w) acc[i][w] = hn::MulAdd(pv, x[w], acc[i][w]);
    }
  }
  for (int i = 0; i < M; ++i)
    for (int w = 0; w < W; ++w) {
      float* o = out + i * out_stride + c0 + w * N;
      hn::StoreU(hn::Add(hn::LoadU(df, o), acc[i][w]), df, o);
    }
}

template <int M>
HWY_INLINE void ValuesBlock(const float* HWY_RESTRICT p, int64_t p_stride, const float* HWY_RESTRICT v, int64_t n,
                            int64_t v_stride, int64_t d, float* HWY_RESTRICT out, int64_t out_stride) {
  const hn::ScalableTag<float> df;
  const int64_t N = static_cast<int64_t>(hn::Lanes(df));
  int64_t c = 0;
  for (; c + 4 * N <= d; c += 4 * N) ValuesSlice<M, 4>(p, p_stride, v, n, v_stride, c, out, out_stride);
  if (c + 2 * N <= d) {
    ValuesSlice<M, 2>(p, p_stride, v, n, v_stride, c, out, out_stride);
    c += 2 * N;
  }
  if (c + N <= d) {
    ValuesSlice<M, 1>(p, p_stride, v, n, v_stride, c, out, out_stride);
    c += N;
  }
  for (; c < d; ++c)
    for (int i = 0; i < M; ++i) {
      float s = 0;
      for (int64_t j = 0; j < n; ++j) s += p[i * p_stride + j] * v[j * v_stride + c];
      out[i * out_stride + c] += s;
    }
}

}  // namespace attention_detail

inline void AttentionScores(const float* HWY_RESTRICT q, int64_t m, int64_t q_stride, const float* HWY_RESTRICT k,
                            int64_t n, int64_t k_stride, int64_t d, float scale, float* HWY_RESTRICT scores,
                            int64_t score_stride) {
  using namespace attention_detail;
  for (int64_t i0 = 0; i0 < m; i0 += kQueryBlock) {
    const float* qb = q + i0 * q_stride;
    float* sb = scores + i0 * score_stride;
    switch (std::min(kQueryBlock, m - i0)) {
      case 1: ScoresBlock<1>(qb, q_stride, k, n, k_stride, d, scale, sb, score_stride); break;
      case 2: ScoresBlock<2>(qb, q_stride, k, n, k_stride, d, scale, sb, score_stride); break;
      case 3: ScoresBlock<3>(qb, q_stride, k, n, k_stride, d, scale, sb, score_stride); break;
      default: ScoresBlock<4>(qb, q_stride, k, n, k_stride, d, scale, sb, score_stride); break;
    }
  }
}

inline void AttentionValues(const float* HWY_RESTRICT p, int64_t m, int64_t p_stride, const float* HWY_RESTRICT v,
                            int64_t n, int64_t v_stride, int64_t d, float* HWY_RESTRICT out, int64_t out_stride) {
  using namespace attention_detail;
  for (int64_t i0 = 0; i0 < m; i0 += kValueBlock) {
    const float* pb = p + i0 * p_stride;
    float* ob = out + i0 * out_stride;
    switch (std::min(kValueBlock, m - i0)) {
      case 1: ValuesBlock<1>(pb, p_stride, v, n, v_stride, d, ob, out_stride); break;
      case 2: ValuesBlock<2>(pb, p_stride, v, n, v_stride, d, ob, out_stride); break;
      default: ValuesBlock<3>(pb, p_stride, v, n, v_stride, d, ob, out_stride); break;
    }
  }
}

}  // namespace HWY_NAMESPACE
}  // namespace strata
HWY_AFTER_NAMESPACE();

#endif  // STRATA_KERNELS_ATTENTION_DECODE_INL_H_

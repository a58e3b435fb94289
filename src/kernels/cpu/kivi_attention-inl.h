// Decode attention from KIVI codes, one source for every SIMD target (Google Highway). Included by
// kivi_attention.cc for dynamic dispatch and by the per-target tests; kivi_attention.hpp says what
// each computes.
//
// Unpacking: N bytes of codes (N = float lanes) are widened to 32-bit lanes in one load, and code h
// of every byte (bits h * bits ..) becomes float vector h of the chunk: lane l of vector h is the
// code of element per * (chunk * N + l) + h. Nothing is shuffled back into element order on the way:
// what meets the codes is kept in the same order instead, the scaled queries (written once per key
// group) and the value accumulators (scattered to element order once per call). Elements past the
// last whole chunk stay in element order and go through scalar code.
//
// Scores: two rows at a time against a block of up to four queries (eight FMA chains), as the float
// kernel in attention_decode-inl.h. Values: column slices of two code vectors for a block of up to
// three queries (six accumulators), one pass over the rows per slice; per row and query the products
// p * scale of each channel group are computed once before the slices, and the minimums' share,
// sum_j p_j min_jg, once per channel group rather than per channel.
#if defined(STRATA_KERNELS_KIVI_ATTENTION_INL_H_) == defined(HWY_TARGET_TOGGLE)
#ifdef STRATA_KERNELS_KIVI_ATTENTION_INL_H_
#undef STRATA_KERNELS_KIVI_ATTENTION_INL_H_
#else
#define STRATA_KERNELS_KIVI_ATTENTION_INL_H_
#endif

#include <hwy/highway.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "kernels/cpu/kv_score-inl.h"
#include "strata/core/dtype.hpp"

HWY_BEFORE_NAMESPACE();
namespace strata {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

namespace kivi_detail {

constexpr int64_t kKeyBlock = 4;    // scores: 2 rows x 4 queries = 8 accumulators
constexpr int64_t kValueBlock = 3;  // values: 3 queries x 4 vectors = 12 accumulators
constexpr int64_t kRowBlock = 256;  // value rows whose per-row products are held at a time

// Per-thread scratch, grown and never shrunk: once warm, a decode step allocates nothing.
template <class T, int kSlot>
T* Scratch(size_t n) {
  static thread_local std::vector<T> buf;
  if (buf.size() < n) buf.resize(n);
  return buf.data();
}

// The N bytes at p, each in its own 32-bit lane.
template <class DF>
HWY_INLINE hn::Vec<hn::RebindToSigned<DF>> LoadBytes(DF df, const uint8_t* HWY_RESTRICT p) {
  const hn::RebindToSigned<DF> di;
  const hn::Rebind<uint8_t, DF> d8;
  return hn::PromoteTo(di, hn::LoadU(d8, p));
}

// Code h of each byte, as floats.
template <int kBits, class DF, class VI>
HWY_INLINE hn::Vec<DF> CodesAt(DF df, VI bytes, int h) {
  const hn::RebindToSigned<DF> di;
  constexpr int per = 8 / kBits;
  const VI shifted = hn::ShiftRightSame(bytes, h * kBits);
  // The top code of a byte needs no mask: the shift leaves nothing above it.
  return hn::ConvertTo(df, h == per - 1 ? shifted : hn::And(shifted, hn::Set(di, (1 << kBits) - 1)));
}

template <int kBits>
HWY_INLINE float CodeOf(const uint8_t* row, int64_t c) {
  constexpr int per = 8 / kBits;
  return static_cast<float>((row[c / per] >> (c % per * kBits)) & ((1 << kBits) - 1));
}

template <int kBits, int M>
HWY_INLINE void KeyScoresBlock(const float* HWY_RESTRICT qs, const float* HWY_RESTRICT cst, int64_t d,
                               const uint8_t* HWY_RESTRICT codes, int64_t n, int64_t row_bytes, float scale,
                               float* HWY_RESTRICT scores, int64_t score_stride) {
  const hn::ScalableTag<float> df;
  using V = hn::Vec<decltype(df)>;
  const int64_t N = static_cast<int64_t>(hn::Lanes(df));
  constexpr int per = 8 / kBits;
  const int64_t chunks = d * kBits / 8 / N, tail0 = chunks * N * per;
  auto tail = [&](int i, const uint8_t* row) {
    float s = 0;
    for (int64_t c = tail0; c < d; ++c) s += qs[i * d + c] * CodeOf<kBits>(row, c);
    return s;
  };
  int64_t j = 0;
  for (; j + 2 <= n; j += 2) {
    const uint8_t* r0 = codes + j * row_bytes;
    const uint8_t* r1 = r0 + row_bytes;
    V a0[M], a1[M];
    for (int i = 0; i < M; ++i) a0[i] = a1[i] = hn::Zero(df);
    for (int64_t k = 0; k < chunks; ++k) {
      const auto b0 = LoadBytes(df, r0 + k * N), b1 = LoadBytes(df, r1 + k * N);
      for (int h = 0; h < per; ++h) {
        const V x0 = CodesAt<kBits>(df, b0, h), x1 = CodesAt<kBits>(df, b1, h);
        const float* qk = qs + (k * per + h) * N;
        for (int i = 0; i < M; ++i) {
          const V qv = hn::LoadU(df, qk + i * d);
          a0[i] = hn::MulAdd(qv, x0, a0[i]);
          a1[i] = hn::MulAdd(qv, x1, a1[i]);
        }
      }
    }
    for (int i = 0; i < M; ++i) {
      scores[i * score_stride + j] = (cst[i] + (hn::GetLane(hn::SumOfLanes(df, a0[i])) + tail(i, r0))) * scale;
      scores[i * score_stride + j + 1] = (cst[i] + (hn::GetLane(hn::SumOfLanes(df, a1[i])) + tail(i, r1))) * scale;
    }
  }
  if (j < n) {
    const uint8_t* r0 = codes + j * row_bytes;
    V a0[M];
    for (int i = 0; i < M; ++i) a0[i] = hn::Zero(df);
    for (int64_t k = 0; k < chunks; ++k) {
      const auto b0 = LoadBytes(df, r0 + k * N);
      for (int h = 0; h < per; ++h) {
        const V x0 = CodesAt<kBits>(df, b0, h);
        for (int i = 0; i < M; ++i) a0[i] = hn::MulAdd(hn::LoadU(df, qs + (k * per + h) * N + i * d), x0, a0[i]);
      }
    }
    for (int i = 0; i < M; ++i)
      scores[i * score_stride + j] = (cst[i] + (hn::GetLane(hn::SumOfLanes(df, a0[i])) + tail(i, r0))) * scale;
  }
}

template <int kBits>
HWY_INLINE void KeyScores(const float* HWY_RESTRICT q, int64_t m, int64_t q_stride, const uint8_t* HWY_RESTRICT codes,
                          int64_t n, int64_t row_bytes, int64_t d, const uint16_t* HWY_RESTRICT params, float scale,
                          float* HWY_RESTRICT scores, int64_t score_stride) {
  const hn::ScalableTag<float> df;
  const int64_t N = static_cast<int64_t>(hn::Lanes(df));
  constexpr int per = 8 / kBits;
  const int64_t chunks = d * kBits / 8 / N, tail0 = chunks * N * per;
  using V = hn::Vec<decltype(df)>;
  f16* half = Scratch<f16, 0>(static_cast<size_t>(2 * d));
  float* ws = Scratch<float, 0>(static_cast<size_t>(4 * d + kKeyBlock * (d + 1)));
  float* sm = ws;          // per channel: scale, minimum
  float* sc = ws + 2 * d;  // per channel: scale
  float* mn = sc + d;      // per channel: minimum
  float* qs = mn + d;
  float* cst = qs + kKeyBlock * d;
  std::memcpy(static_cast<void*>(half), params, static_cast<size_t>(2 * d) * sizeof(uint16_t));
  convert_f16_to_f32(half, sm, static_cast<uint64_t>(2 * d));
  const int64_t dv = d / N * N;
  for (int64_t c = 0; c < dv; c += N) {
    V s, mi;
    hn::LoadInterleaved2(df, sm + 2 * c, s, mi);
    hn::StoreU(s, df, sc + c);
    hn::StoreU(mi, df, mn + c);
  }
  for (int64_t c = dv; c < d; ++c) {
    sc[c] = sm[2 * c];
    mn[c] = sm[2 * c + 1];
  }
  for (int64_t i0 = 0; i0 < m; i0 += kKeyBlock) {
    const int64_t mb = std::min(kKeyBlock, m - i0);
    for (int64_t i = 0; i < mb; ++i) {
      const float* qi = q + (i0 + i) * q_stride;
      float* qsi = qs + i * d;
      cst[i] = KvDot(qi, mn, d);
      // q .* scale in the order the codes unpack to: vector h of chunk k holds the elements
      // per * (k * N + l) + h, one interleaved load apart.
      for (int64_t k = 0; k < chunks; ++k) {
        const float* qk = qi + k * per * N;
        const float* sk = sc + k * per * N;
        float* out = qsi + k * per * N;
        if constexpr (per == 2) {
          V q0, q1, s0, s1;
          hn::LoadInterleaved2(df, qk, q0, q1);
          hn::LoadInterleaved2(df, sk, s0, s1);
          hn::StoreU(hn::Mul(q0, s0), df, out);
          hn::StoreU(hn::Mul(q1, s1), df, out + N);
        } else {
          V q0, q1, q2, q3, s0, s1, s2, s3;
          hn::LoadInterleaved4(df, qk, q0, q1, q2, q3);
          hn::LoadInterleaved4(df, sk, s0, s1, s2, s3);
          hn::StoreU(hn::Mul(q0, s0), df, out);
          hn::StoreU(hn::Mul(q1, s1), df, out + N);
          hn::StoreU(hn::Mul(q2, s2), df, out + 2 * N);
          hn::StoreU(hn::Mul(q3, s3), df, out + 3 * N);
        }
      }
      for (int64_t c = tail0; c < d; ++c) qsi[c] = qi[c] * sc[c];
    }
    float* sb = scores + i0 * score_stride;
    switch (mb) {
      case 1: KeyScoresBlock<kBits, 1>(qs, cst, d, codes, n, row_bytes, scale, sb, score_stride); break;
      case 2: KeyScoresBlock<kBits, 2>(qs, cst, d, codes, n, row_bytes, scale, sb, score_stride); break;
      case 3: KeyScoresBlock<kBits, 3>(qs, cst, d, codes, n, row_bytes, scale, sb, score_stride); break;
      default: KeyScoresBlock<kBits, 4>(qs, cst, d, codes, n, row_bytes, scale, sb, score_stride); break;
    }
  }
}

// What the value slices share: per row j, query i and channel group g, ps[(j * M + i) * ng + g] =
// p_ij scale_jg; the channel group of each whole chunk, or -1 when the chunk spans groups, and then
// in lane_group each lane's group (in the chunk's lane order).
struct ValueRows {
  const uint8_t* rows;
  int64_t n, row_bytes, ng;
  const float* ps;
  const int32_t* chunk_group;
  const int32_t* lane_group;
};

// Codes h0 and h0 + 1 of chunk k (two vectors of the block's outputs) over all rows, added to out
// in element order. Two vectors, not a whole chunk: three queries' accumulators, their broadcasts
// and the codes then fit in AVX2's sixteen registers, where a chunk of four vectors spilled
// accumulators to the stack and the row loop waited on them (the value kernel took 2.2x the float
// kernel's time over rows in cache, bench_kv KvHelper/kivi4_values).
template <int kBits, int M, bool kMixed>
HWY_INLINE void ValuesSlice(const ValueRows& vr, int64_t k, int h0, float* HWY_RESTRICT out, int64_t out_stride) {
  const hn::ScalableTag<float> df;
  const hn::RebindToSigned<decltype(df)> di;
  using V = hn::Vec<decltype(df)>;
  const int64_t N = static_cast<int64_t>(hn::Lanes(df));
  constexpr int per = 8 / kBits;
  V acc0[M], acc1[M];
  for (int i = 0; i < M; ++i) acc0[i] = acc1[i] = hn::Zero(df);
  const int64_t group = vr.chunk_group[k];
  const uint8_t* row = vr.rows + k * N;
  for (int64_t j = 0; j < vr.n; ++j, row += vr.row_bytes) {
    const float* ps = vr.ps + j * M * vr.ng;
    const auto b = LoadBytes(df, row);
    const V x0 = CodesAt<kBits>(df, b, h0), x1 = CodesAt<kBits>(df, b, h0 + 1);
    if constexpr (!kMixed) {
      for (int i = 0; i < M; ++i) {
        const V a = hn::Set(df, ps[i * vr.ng + group]);
        acc0[i] = hn::MulAdd(a, x0, acc0[i]);
        acc1[i] = hn::MulAdd(a, x1, acc1[i]);
      }
    } else {
      const auto idx0 = hn::LoadU(di, vr.lane_group + (k * per + h0) * N);
      const auto idx1 = hn::LoadU(di, vr.lane_group + (k * per + h0 + 1) * N);
      for (int i = 0; i < M; ++i) {
        acc0[i] = hn::MulAdd(hn::GatherIndex(df, ps + i * vr.ng, idx0), x0, acc0[i]);
        acc1[i] = hn::MulAdd(hn::GatherIndex(df, ps + i * vr.ng, idx1), x1, acc1[i]);
      }
    }
  }
  HWY_ALIGN float lanes[2][HWY_MAX_BYTES / sizeof(float)];
  for (int i = 0; i < M; ++i) {
    hn::Store(acc0[i], df, lanes[0]);
    hn::Store(acc1[i], df, lanes[1]);
    float* o = out + i * out_stride + per * k * N + h0;
    for (int64_t l = 0; l < N; ++l) {
      o[per * l] += lanes[0][l];
      o[per * l + 1] += lanes[1][l];
    }
  }
}

template <int kBits, int M>
HWY_INLINE void ValuesBlock(const float* HWY_RESTRICT p, int64_t p_stride, const uint8_t* HWY_RESTRICT rows, int64_t n,
                            int64_t row_bytes, int64_t d, int64_t group, const int32_t* chunk_group,
                            const int32_t* lane_group, float* HWY_RESTRICT out, int64_t out_stride) {
  const hn::ScalableTag<float> df;
  const int64_t N = static_cast<int64_t>(hn::Lanes(df));
  constexpr int per = 8 / kBits;
  const int64_t code_bytes = d * kBits / 8, chunks = code_bytes / N, tail0 = chunks * N * per;
  const int64_t ng = (d + group - 1) / group;
  f16* half = Scratch<f16, 1>(static_cast<size_t>(kRowBlock * 2 * ng));
  float* ws = Scratch<float, 1>(static_cast<size_t>(kRowBlock * 2 * ng + kRowBlock * M * ng));
  float* sm = ws;                       // per group and row: scales, then minimums
  float* ps = sm + kRowBlock * 2 * ng;  // per row, query and group: p * scale
  // Per query and group sum_j p_j min_jg, then per query the elements past the last whole chunk,
  // summed in double across row blocks (and the tail's rows).
  const int64_t nt = d - tail0;
  double* msum = Scratch<double, 0>(static_cast<size_t>(M * (ng + nt)));
  double* tsum = msum + M * ng;
  std::fill(msum, msum + M * (ng + nt), 0.0);
  for (int64_t j0 = 0; j0 < n; j0 += kRowBlock) {
    const int64_t nb = std::min(kRowBlock, n - j0);
    const uint8_t* rb = rows + j0 * row_bytes;
    // Scales and minimums group by group, rows contiguous: the minimums' share is then a dot
    // product of p with each group's minimums.
    for (int64_t j = 0; j < nb; ++j)
      for (int64_t g = 0; g < ng; ++g) {
        uint16_t prm[2];
        std::memcpy(prm, rb + j * row_bytes + code_bytes + g * 4, 4);
        half[g * nb + j] = f16{prm[0]};
        half[(ng + g) * nb + j] = f16{prm[1]};
      }
    convert_f16_to_f32(half, sm, static_cast<uint64_t>(nb * 2 * ng));
    for (int64_t g = 0; g < ng; ++g) {
      const float* sg = sm + g * nb;
      const float* mg = sm + (ng + g) * nb;
      for (int i = 0; i < M; ++i) {
        const float* pi = p + i * p_stride + j0;
        for (int64_t j = 0; j < nb; ++j) ps[(j * M + i) * ng + g] = pi[j] * sg[j];
        msum[i * ng + g] += KvDot(pi, mg, nb);
      }
    }
    const ValueRows vr{rb, nb, row_bytes, ng, ps, chunk_group, lane_group};
    for (int64_t k = 0; k < chunks; ++k)
      for (int h0 = 0; h0 < per; h0 += 2) {
        if (chunk_group[k] >= 0)
          ValuesSlice<kBits, M, false>(vr, k, h0, out, out_stride);
        else
          ValuesSlice<kBits, M, true>(vr, k, h0, out, out_stride);
      }
    for (int64_t j = 0; j < nb && tail0 < d; ++j) {
      const uint8_t* row = rb + j * row_bytes;
      for (int i = 0; i < M; ++i)
        for (int64_t c = tail0; c < d; ++c)
          tsum[i * nt + c - tail0] += static_cast<double>(ps[(j * M + i) * ng + c / group]) * CodeOf<kBits>(row, c);
    }
  }
  for (int i = 0; i < M; ++i)
    for (int64_t g = 0; g < ng; ++g)
      for (int64_t c = g * group; c < std::min(d, (g + 1) * group); ++c)
        out[i * out_stride + c] += static_cast<float>(msum[i * ng + g] + (c >= tail0 ? tsum[i * nt + c - tail0] : 0.0));
}

template <int kBits>
HWY_INLINE void Values(const float* HWY_RESTRICT p, int64_t m, int64_t p_stride, const uint8_t* HWY_RESTRICT rows,
                       int64_t n, int64_t row_bytes, int64_t d, int64_t group, float* HWY_RESTRICT out,
                       int64_t out_stride) {
  const hn::ScalableTag<float> df;
  const int64_t N = static_cast<int64_t>(hn::Lanes(df));
  constexpr int per = 8 / kBits;
  group = std::min(group, d);
  const int64_t chunks = d * kBits / 8 / N, span = N * per;
  int32_t* chunk_group = Scratch<int32_t, 0>(static_cast<size_t>(chunks + chunks * span));
  int32_t* lane_group = chunk_group + chunks;
  for (int64_t k = 0; k < chunks; ++k) {
    const int64_t first = k * span / group, last = ((k + 1) * span - 1) / group;
    chunk_group[k] = first == last ? static_cast<int32_t>(first) : -1;
    if (first != last)
      for (int h = 0; h < per; ++h)
        for (int64_t l = 0; l < N; ++l)
          lane_group[(k * per + h) * N + l] = static_cast<int32_t>((per * (k * N + l) + h) / group);
  }
  for (int64_t i0 = 0; i0 < m; i0 += kValueBlock) {
    const float* pb = p + i0 * p_stride;
    float* ob = out + i0 * out_stride;
    switch (std::min(kValueBlock, m - i0)) {
      case 1: ValuesBlock<kBits, 1>(pb, p_stride, rows, n, row_bytes, d, group, chunk_group, lane_group, ob, out_stride); break;
      case 2: ValuesBlock<kBits, 2>(pb, p_stride, rows, n, row_bytes, d, group, chunk_group, lane_group, ob, out_stride); break;
      default: ValuesBlock<kBits, 3>(pb, p_stride, rows, n, row_bytes, d, group, chunk_group, lane_group, ob, out_stride); break;
    }
  }
}

}  // namespace kivi_detail

inline void KiviKeyScores(const float* HWY_RESTRICT q, int64_t m, int64_t q_stride, const uint8_t* HWY_RESTRICT codes,
                          int64_t n, int64_t row_bytes, int64_t d, int bits, const uint16_t* HWY_RESTRICT params,
                          float scale, float* HWY_RESTRICT scores, int64_t score_stride) {
  if (bits == 2)
    kivi_detail::KeyScores<2>(q, m, q_stride, codes, n, row_bytes, d, params, scale, scores, score_stride);
  else
    kivi_detail::KeyScores<4>(q, m, q_stride, codes, n, row_bytes, d, params, scale, scores, score_stride);
}

inline void KiviValues(const float* HWY_RESTRICT p, int64_t m, int64_t p_stride, const uint8_t* HWY_RESTRICT rows,
                       int64_t n, int64_t row_bytes, int64_t d, int bits, int64_t group, float* HWY_RESTRICT out,
                       int64_t out_stride) {
  if (bits == 2)
    kivi_detail::Values<2>(p, m, p_stride, rows, n, row_bytes, d, group, out, out_stride);
  else
    kivi_detail::Values<4>(p, m, p_stride, rows, n, row_bytes, d, group, out, out_stride);
}

}  // namespace HWY_NAMESPACE
}  // namespace strata
HWY_AFTER_NAMESPACE();

#endif  // STRATA_KERNELS_KIVI_ATTENTION_INL_H_

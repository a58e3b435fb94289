// Sparse weight times a few tokens (sparse_matmul.hpp), one source for every SIMD target (Google
// Highway). Included by sparse_matmul.cc for dynamic dispatch and by the per-target tests.
//
// Decoding where the kept values sit is the costly part, so each chunk is decoded once and then
// used for up to four tokens; more tokens take further passes over the row.
#if defined(STRATA_KERNELS_SPARSE_MATMUL_INL_H_) == defined(HWY_TARGET_TOGGLE)
#ifdef STRATA_KERNELS_SPARSE_MATMUL_INL_H_
#undef STRATA_KERNELS_SPARSE_MATMUL_INL_H_
#else
#define STRATA_KERNELS_SPARSE_MATMUL_INL_H_
#endif

#include <hwy/cache_control.h>
#include <hwy/highway.h>

#include <bit>
#include <cstring>
#include <type_traits>

#include "kernels/cpu/sparse_matmul.hpp"

HWY_BEFORE_NAMESPACE();
namespace strata::kernels {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

// At most 16 lanes: the 2:4 chunk's positions then fit one 32-bit word and a bitmask chunk's bits
// two bytes, whatever the vector length.
using SparseTag = hn::CappedTag<float, 16>;

// How far ahead of the chunk in use the values are prefetched (their index streams, smaller, in
// proportion). One row read front to back is a single stream, which the hardware prefetchers alone
// serve at a fraction of a core's bandwidth.
inline constexpr int64_t kSparsePrefetchBytes = 4096;

template <typename V>
HWY_INLINE void PrefetchAhead(const V* p) {
  hwy::Prefetch(reinterpret_cast<const uint8_t*>(p) + kSparsePrefetchBytes);
}

template <class D>
HWY_INLINE hn::Vec<D> LoadWidened(D d, const float* HWY_RESTRICT p) {
  return hn::LoadU(d, p);
}
template <class D>
HWY_INLINE hn::Vec<D> LoadWidened(D d, const hwy::float16_t* HWY_RESTRICT p) {
  const hn::Rebind<hwy::float16_t, D> dh;
  return hn::PromoteTo(d, hn::LoadU(dh, p));
}

inline float ScalarValue(const float* p, int64_t k) { return p[k]; }
inline float ScalarValue(const hwy::float16_t* p, int64_t k) {
  return f16_to_f32(reinterpret_cast<const f16*>(p)[k]);
}

// Adds w * x[t] to the accumulator of token t for the T (1..4) tokens of a tile.
#define STRATA_SPARSE_ACCUMULATE(w, load_x) \
  a0 = hn::MulAdd(w, load_x(x0), a0);       \
  if constexpr (T > 1) a1 = hn::MulAdd(w, load_x(x1), a1); \
  if constexpr (T > 2) a2 = hn::MulAdd(w, load_x(x2), a2); \
  if constexpr (T > 3) a3 = hn::MulAdd(w, load_x(x3), a3)

// Sums the accumulators, adds the scalar tails and stores y[t, r].
#define STRATA_SPARSE_STORE(r)                                                    \
  y0[r] = hn::GetLane(hn::SumOfLanes(d, a0)) + s[0];                             \
  if constexpr (T > 1) y1[r] = hn::GetLane(hn::SumOfLanes(d, a1)) + s[1];        \
  if constexpr (T > 2) y2[r] = hn::GetLane(hn::SumOfLanes(d, a2)) + s[2];        \
  if constexpr (T > 3) y3[r] = hn::GetLane(hn::SumOfLanes(d, a3)) + s[3]

#define STRATA_SPARSE_TILE_POINTERS(x, cols, y, rows)                              \
  const float* HWY_RESTRICT x0 = x;                                              \
  const float* HWY_RESTRICT x1 = T > 1 ? x + (cols) : x;                         \
  const float* HWY_RESTRICT x2 = T > 2 ? x + 2 * (cols) : x;                     \
  const float* HWY_RESTRICT x3 = T > 3 ? x + 3 * (cols) : x;                     \
  float* HWY_RESTRICT y0 = y;                                                    \
  float* HWY_RESTRICT y1 = T > 1 ? y + (rows) : y;                               \
  float* HWY_RESTRICT y2 = T > 2 ? y + 2 * (rows) : y;                           \
  float* HWY_RESTRICT y3 = T > 3 ? y + 3 * (rows) : y;                           \
  const float* const xt[4] = {x0, x1, x2, x3}

// The 2:4 lookup needs N / 2 to be a whole number of groups (N >= 4), and the scalar target has
// one lane and no lane permutations: it runs the references.
#if HWY_TARGET != HWY_SCALAR
// ---------------------------------------------------------------------------------------- 2:4
// A chunk is N kept values, i.e. N / 2 groups of four, i.e. 2N inputs loaded as two vectors xa, xb.
// Lane l keeps a value of group l / 2, which sits in xa for the first N / 2 lanes and in xb for the
// others, at 4 ((l mod N/2) / 2) + its 2-bit position: one index vector serves both lookups, and
// the lower half of one with the upper half of the other is x at the kept inputs, in value order.
template <int T, typename V>
HWY_NOINLINE void Sparse24Tile(const Sparse24& w, const float* HWY_RESTRICT x, float* HWY_RESTRICT y, int64_t r0,
                               int64_t r1) {
  const SparseTag d;
  const hn::RebindToUnsigned<SparseTag> du;
  const hn::RebindToSigned<SparseTag> di;
  const int64_t N = static_cast<int64_t>(hn::Lanes(d));
  const int64_t cols = w.cols, kept = cols / 2, full = kept - kept % N;
  uint32_t base_lanes[16] = {};
  for (int64_t l = 0; l < N; ++l) base_lanes[l] = static_cast<uint32_t>(4 * ((l % (N / 2)) / 2));
  const auto base = hn::LoadU(du, base_lanes);
  const auto shifts = hn::ShiftLeft<1>(hn::Iota(du, 0));
  const auto three = hn::Set(du, 3u);
  const V* HWY_RESTRICT values = static_cast<const V*>(w.values);
  STRATA_SPARSE_TILE_POINTERS(x, cols, y, w.rows);
  for (int64_t r = r0; r < r1; ++r) {
    const V* HWY_RESTRICT vr = values + r * kept;
    const uint8_t* HWY_RESTRICT pr = w.positions + r * w.position_stride;
    auto a0 = hn::Zero(d), a1 = hn::Zero(d), a2 = hn::Zero(d), a3 = hn::Zero(d);
    const auto indices = [&](int64_t k) {
      PrefetchAhead(vr + k);
      if (k % 256 == 0) hwy::Prefetch(pr + k / 4 + kSparsePrefetchBytes / 8);
      uint32_t word;
      std::memcpy(&word, pr + k / 4, sizeof(word));
      const auto lane = hn::Add(hn::And(hn::Set(du, word) >> shifts, three), base);
      return hn::IndicesFromVec(d, hn::BitCast(di, lane));
    };
    const auto gather = [&](const float* HWY_RESTRICT xr, int64_t k, const auto& idx) {
      return hn::ConcatUpperLower(d, hn::TableLookupLanes(hn::LoadU(d, xr + 2 * k + N), idx),
                                  hn::TableLookupLanes(hn::LoadU(d, xr + 2 * k), idx));
    };
    int64_t k = 0;
    if constexpr (T == 1) {
      // Two chunks a step into two sums: one chain of multiply-adds would wait on its own latency.
      for (; k + 2 * N <= full; k += 2 * N) {
        const auto i0 = indices(k), i1 = indices(k + N);
        a0 = hn::MulAdd(LoadWidened(d, vr + k), gather(x0, k, i0), a0);
        a1 = hn::MulAdd(LoadWidened(d, vr + k + N), gather(x0, k + N, i1), a1);
      }
    }
    for (; k < full; k += N) {
      const auto idx = indices(k);
      const auto wv = LoadWidened(d, vr + k);
      const auto load = [&](const float* HWY_RESTRICT xr) { return gather(xr, k, idx); };
      STRATA_SPARSE_ACCUMULATE(wv, load);
    }
    if constexpr (T == 1) a0 = hn::Add(a0, a1);
    float s[4] = {0, 0, 0, 0};
    for (int64_t k = full; k < kept; ++k) {
      const int64_t bit = 2 * k;
      const int64_t j = 4 * (k / 2) + (pr[bit / 8] >> (bit % 8) & 3);
      const float v = ScalarValue(vr, k);
      for (int t = 0; t < T; ++t) s[t] += v * xt[t][j];
    }
    STRATA_SPARSE_STORE(r);
  }
}

// ------------------------------------------------------------------------------------- bitmask
// A chunk is N inputs. Its kept values sit contiguously in the value array; lane l's is number
// popcount(bits below l), so one table lookup spreads them onto their inputs and the mask zeroes
// the lanes that keep nothing.
template <int T, typename V>
HWY_NOINLINE void SparseBitmaskTile(const SparseBitmask& w, const float* HWY_RESTRICT x, float* HWY_RESTRICT y,
                                    int64_t r0, int64_t r1) {
  const SparseTag d;
  const hn::RebindToUnsigned<SparseTag> du;
  const hn::RebindToSigned<SparseTag> di;
  const int64_t N = static_cast<int64_t>(hn::Lanes(d));
  const int64_t cols = w.cols, full = cols - cols % N;
  const uint32_t chunk_mask = static_cast<uint32_t>((uint64_t{1} << N) - 1);
  const auto lane_bit = hn::Set(du, 1u) << hn::Iota(du, 0);
  const auto below = hn::Sub(lane_bit, hn::Set(du, 1u));
  const V* HWY_RESTRICT values = static_cast<const V*>(w.values);
  STRATA_SPARSE_TILE_POINTERS(x, cols, y, w.rows);
  for (int64_t r = r0; r < r1; ++r) {
    const uint8_t* HWY_RESTRICT mr = w.mask + r * w.mask_stride;
    int64_t at = w.row_start[r];
    auto a0 = hn::Zero(d), a1 = hn::Zero(d), a2 = hn::Zero(d), a3 = hn::Zero(d);
    for (int64_t j = 0; j < full; j += N) {
      PrefetchAhead(values + at);
      if (j % 512 == 0) hwy::Prefetch(mr + j / 8 + kSparsePrefetchBytes / 8);
      uint32_t word;
      std::memcpy(&word, mr + j / 8, sizeof(word));
      const uint32_t bits = word >> (j % 8) & chunk_mask;
      if (bits == 0) continue;
      const auto vbits = hn::Set(du, bits);
      const auto idx = hn::IndicesFromVec(d, hn::BitCast(di, hn::PopulationCount(hn::And(vbits, below))));
      const auto kept = hn::RebindMask(d, hn::TestBit(vbits, lane_bit));
      const auto wv = hn::IfThenElseZero(kept, hn::TableLookupLanes(LoadWidened(d, values + at), idx));
      at += std::popcount(bits);
      const auto load = [&](const float* HWY_RESTRICT xr) { return hn::LoadU(d, xr + j); };
      STRATA_SPARSE_ACCUMULATE(wv, load);
    }
    float s[4] = {0, 0, 0, 0};
    for (int64_t j = full; j < cols; ++j) {
      if (!(mr[j / 8] >> (j % 8) & 1)) continue;
      const float v = ScalarValue(values, at++);
      for (int t = 0; t < T; ++t) s[t] += v * xt[t][j];
    }
    STRATA_SPARSE_STORE(r);
  }
}

// ----------------------------------------------------------------------------------------- CSR
template <class D>
HWY_INLINE hn::Vec<hn::RebindToSigned<D>> LoadColumns(D d, const uint16_t* HWY_RESTRICT p) {
  const hn::Rebind<uint16_t, D> d16;
  return hn::BitCast(hn::RebindToSigned<D>(), hn::PromoteTo(hn::RebindToUnsigned<D>(), hn::LoadU(d16, p)));
}
template <class D>
HWY_INLINE hn::Vec<hn::RebindToSigned<D>> LoadColumns(D d, const uint32_t* HWY_RESTRICT p) {
  return hn::BitCast(hn::RebindToSigned<D>(), hn::LoadU(hn::RebindToUnsigned<D>(), p));
}

template <int T, typename V, typename C>
HWY_NOINLINE void SparseCsrTile(const SparseCsr& w, const C* HWY_RESTRICT col, const float* HWY_RESTRICT x,
                                float* HWY_RESTRICT y, int64_t r0, int64_t r1) {
  const SparseTag d;
  const int64_t N = static_cast<int64_t>(hn::Lanes(d));
  const V* HWY_RESTRICT values = static_cast<const V*>(w.values);
  STRATA_SPARSE_TILE_POINTERS(x, w.cols, y, w.rows);
  for (int64_t r = r0; r < r1; ++r) {
    const int64_t b = w.row_start[r], e = w.row_start[r + 1], full = b + (e - b) - (e - b) % N;
    auto a0 = hn::Zero(d), a1 = hn::Zero(d), a2 = hn::Zero(d), a3 = hn::Zero(d);
    for (int64_t k = b; k < full; k += N) {
      PrefetchAhead(values + k);
      PrefetchAhead(col + k);
      const auto idx = LoadColumns(d, col + k);
      const auto wv = LoadWidened(d, values + k);
      const auto gather = [&](const float* HWY_RESTRICT xr) { return hn::GatherIndex(d, xr, idx); };
      STRATA_SPARSE_ACCUMULATE(wv, gather);
    }
    float s[4] = {0, 0, 0, 0};
    for (int64_t k = full; k < e; ++k) {
      const float v = ScalarValue(values, k);
      for (int t = 0; t < T; ++t) s[t] += v * xt[t][col[k]];
    }
    STRATA_SPARSE_STORE(r);
  }
}

#endif  // HWY_TARGET != HWY_SCALAR

#undef STRATA_SPARSE_ACCUMULATE
#undef STRATA_SPARSE_STORE
#undef STRATA_SPARSE_TILE_POINTERS

// Runs tile(T, x_tile, y_tile) over the tokens, four at a time.
template <class Tile>
HWY_INLINE void ForTokenTiles(int64_t tokens, int64_t cols, int64_t rows, const float* x, float* y, const Tile& tile) {
  int64_t t = 0;
  for (; t + 4 <= tokens; t += 4) tile(std::integral_constant<int, 4>(), x + t * cols, y + t * rows);
  switch (tokens - t) {
    case 3: tile(std::integral_constant<int, 3>(), x + t * cols, y + t * rows); break;
    case 2: tile(std::integral_constant<int, 2>(), x + t * cols, y + t * rows); break;
    case 1: tile(std::integral_constant<int, 1>(), x + t * cols, y + t * rows); break;
    default: break;
  }
}

#if HWY_TARGET == HWY_SCALAR
inline void Sparse24Matmul(const Sparse24& w, const float* x, int64_t tokens, float* y, int64_t r0, int64_t r1) {
  sparse24_matmul_reference(w, x, tokens, y, r0, r1);
}
inline void SparseBitmaskMatmul(const SparseBitmask& w, const float* x, int64_t tokens, float* y, int64_t r0,
                                int64_t r1) {
  sparse_bitmask_matmul_reference(w, x, tokens, y, r0, r1);
}
inline void SparseCsrMatmul(const SparseCsr& w, const float* x, int64_t tokens, float* y, int64_t r0, int64_t r1) {
  sparse_csr_matmul_reference(w, x, tokens, y, r0, r1);
}
#else
inline void Sparse24Matmul(const Sparse24& w, const float* x, int64_t tokens, float* y, int64_t r0, int64_t r1) {
  ForTokenTiles(tokens, w.cols, w.rows, x, y, [&](auto T, const float* xt, float* yt) {
    if (w.half)
      Sparse24Tile<decltype(T)::value, hwy::float16_t>(w, xt, yt, r0, r1);
    else
      Sparse24Tile<decltype(T)::value, float>(w, xt, yt, r0, r1);
  });
}

inline void SparseBitmaskMatmul(const SparseBitmask& w, const float* x, int64_t tokens, float* y, int64_t r0,
                                int64_t r1) {
  ForTokenTiles(tokens, w.cols, w.rows, x, y, [&](auto T, const float* xt, float* yt) {
    if (w.half)
      SparseBitmaskTile<decltype(T)::value, hwy::float16_t>(w, xt, yt, r0, r1);
    else
      SparseBitmaskTile<decltype(T)::value, float>(w, xt, yt, r0, r1);
  });
}

inline void SparseCsrMatmul(const SparseCsr& w, const float* x, int64_t tokens, float* y, int64_t r0, int64_t r1) {
  ForTokenTiles(tokens, w.cols, w.rows, x, y, [&](auto T, const float* xt, float* yt) {
    constexpr int kT = decltype(T)::value;
    if (w.col16 != nullptr) {
      if (w.half)
        SparseCsrTile<kT, hwy::float16_t>(w, w.col16, xt, yt, r0, r1);
      else
        SparseCsrTile<kT, float>(w, w.col16, xt, yt, r0, r1);
    } else {
      if (w.half)
        SparseCsrTile<kT, hwy::float16_t>(w, w.col32, xt, yt, r0, r1);
      else
        SparseCsrTile<kT, float>(w, w.col32, xt, yt, r0, r1);
    }
  });
}
#endif

}  // namespace HWY_NAMESPACE
}  // namespace strata::kernels
HWY_AFTER_NAMESPACE();

#endif  // STRATA_KERNELS_SPARSE_MATMUL_INL_H_

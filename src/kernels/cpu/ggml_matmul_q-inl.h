// y = W x for weights in ggml's 32-element block formats (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, IQ4_NL),
// one source for every SIMD target (Google Highway). Included by ggml_matmul_q.cc for dynamic
// dispatch and by the per-target tests, which hold it to kernels::ggml_matmul_reference.
//
// Each weight is rebuilt in a float lane with the dequantizer's own arithmetic (ggml_dequant.cc), so
// it is the same float, bit for bit; only the order of the float additions differs from the oracle.
// The arithmetic is exact before its last rounding (an f16 scale times a quant of at most 8 bits), so
// a product looked up in a 16-entry table of scale * level equals the one computed per element.
#if defined(STRATA_KERNELS_GGML_MATMUL_Q_INL_H_) == defined(HWY_TARGET_TOGGLE)
#ifdef STRATA_KERNELS_GGML_MATMUL_Q_INL_H_
#undef STRATA_KERNELS_GGML_MATMUL_Q_INL_H_
#else
#define STRATA_KERNELS_GGML_MATMUL_Q_INL_H_
#endif

#include <array>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <utility>
#include <vector>

#include <hwy/cache_control.h>
#include <hwy/highway.h>

#include "strata/core/dtype.hpp"
#include "strata/kernels/ggml_blocks.hpp"
#include "strata/kernels/ggml_codec.hpp"

HWY_BEFORE_NAMESPACE();
namespace strata::kernels {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

// Targets without fixed-size vectors (SVE, RVV) cannot hold vectors in arrays, and HWY_SCALAR has one
// lane: both take the oracle's path, a dequantized row and a scalar dot product.
#undef STRATA_GGML_MATMUL_Q_SIMD
#if HWY_TARGET == HWY_SCALAR || HWY_HAVE_SCALABLE
#define STRATA_GGML_MATMUL_Q_SIMD 0
#else
#define STRATA_GGML_MATMUL_Q_SIMD 1
#endif

#if STRATA_GGML_MATMUL_Q_SIMD

// At most 16 lanes, so that a whole number of vectors tiles a 32-element block.
using DF = hn::CappedTag<float, 16>;
using VF = hn::Vec<DF>;
inline constexpr size_t kLanes = hn::MaxLanes(DF());
inline constexpr int kChunks = kQK / static_cast<int>(kLanes);
// With 16 lanes one register holds a lookup table of all 16 levels of a nibble.
inline constexpr bool kTableLookup = kLanes == 16;
// Accumulators the register file holds next to the unpacked weights and the constants.
#if HWY_ARCH_X86 && HWY_TARGET <= HWY_AVX3
inline constexpr int kAccRegs = 16;
#else
inline constexpr int kAccRegs = 8;
#endif

// Lambdas passed to StaticFor: without the attribute GCC leaves them out of line, one call per
// chunk of a block.
#ifndef STRATA_LAMBDA_INLINE
#if defined(__GNUC__) || defined(__clang__)
#define STRATA_LAMBDA_INLINE __attribute__((always_inline))
#else
#define STRATA_LAMBDA_INLINE
#endif
#endif

template <int... K, class F>
HWY_INLINE void StaticForImpl(std::integer_sequence<int, K...>, F&& f) {
  (f(std::integral_constant<int, K>()), ...);
}
template <int N, class F>
HWY_INLINE void StaticFor(F&& f) {
  StaticForImpl(std::make_integer_sequence<int, N>(), f);
}

// A block's binary16 scale, broadcast. Highway 1.0 emulates the f16 conversion on targets without
// F16C and flushes the smallest subnormals there, so those use strata's exact scalar conversion.
HWY_INLINE VF LoadScale(const uint8_t* p) {
  const DF df;
  uint16_t bits;
  std::memcpy(&bits, p, sizeof(bits));
#if HWY_TARGET == HWY_EMU128 || (HWY_ARCH_X86 && (HWY_TARGET == HWY_SSE4 || HWY_TARGET == HWY_SSSE3))
  return hn::Set(df, f16_to_f32(f16{bits}));
#else
  const hn::Rebind<uint16_t, DF> du16;
  const hn::Rebind<hwy::float16_t, DF> dh;
  return hn::PromoteTo(df, hn::BitCast(dh, hn::Set(du16, bits)));
#endif
}

// The 16 bytes of a block's nibbles as u32 lanes: element j's quant is in the low nibble of byte j,
// element j + 16's in the high nibble. Chunk k covers elements [k * kLanes, (k + 1) * kLanes).
template <int K>
HWY_INLINE hn::Vec<hn::RebindToUnsigned<DF>> Nibbles(const uint8_t* qs) {
  const hn::RebindToUnsigned<DF> du;
  const hn::Rebind<uint8_t, DF> du8;
  constexpr int kFirst = K * static_cast<int>(kLanes);
  const auto bytes = hn::PromoteTo(du, hn::LoadU(du8, qs + kFirst % (kQK / 2)));
  if constexpr (kFirst < kQK / 2) {
    return hn::And(bytes, hn::Set(du, 0xFu));
  } else {
    return hn::ShiftRight<4>(bytes);
  }
}

// Table lookup by nibble: chunk K's weights from a 16-entry table. AVX-512's vpermps reads only the
// low four bits of each index, so the low nibbles need no mask there; Highway's contract for
// TableLookupLanes wants indices in range, which the other targets get.
template <int K>
HWY_INLINE VF LookupNibbles(VF table, const uint8_t* qs) {
#if HWY_ARCH_X86 && HWY_TARGET <= HWY_AVX3
  const hn::RebindToUnsigned<DF> du;
  const hn::Rebind<uint8_t, DF> du8;
  constexpr int kFirst = K * static_cast<int>(kLanes);
  auto idx = hn::PromoteTo(du, hn::LoadU(du8, qs + kFirst % (kQK / 2)));
  if constexpr (kFirst >= kQK / 2) idx = hn::ShiftRight<4>(idx);
  return VF{_mm512_permutexvar_ps(idx.raw, table.raw)};
#else
  return hn::TableLookupLanes(table, hn::IndicesFromVec(DF(), Nibbles<K>(qs)));
#endif
}

// Every chunk of a block of 4-bit quants, from a table of the weights of its 16 levels.
HWY_INLINE void LookupBlock(VF table, const uint8_t* qs, VF* w) {
  StaticFor<kChunks>([&](auto k) STRATA_LAMBDA_INLINE { w[k] = LookupNibbles<decltype(k)::value>(table, qs); });
}

// The fifth bit of Q5_0/Q5_1 (bit e of the little-endian qh word for element e), as 0 or 16.
template <int K>
HWY_INLINE hn::Vec<hn::RebindToUnsigned<DF>> HighBits(uint32_t qh) {
  const hn::RebindToUnsigned<DF> du;
  constexpr uint32_t kFirst = static_cast<uint32_t>(K) * kLanes;
  alignas(64) static constexpr uint32_t kBits[kQK] = {
      1u << 0,  1u << 1,  1u << 2,  1u << 3,  1u << 4,  1u << 5,  1u << 6,  1u << 7,  1u << 8,  1u << 9,  1u << 10,
      1u << 11, 1u << 12, 1u << 13, 1u << 14, 1u << 15, 1u << 16, 1u << 17, 1u << 18, 1u << 19, 1u << 20, 1u << 21,
      1u << 22, 1u << 23, 1u << 24, 1u << 25, 1u << 26, 1u << 27, 1u << 28, 1u << 29, 1u << 30, 1u << 31};
  const auto set = hn::TestBit(hn::Set(du, qh), hn::Load(du, kBits + kFirst));
  return hn::And(hn::VecFromMask(du, set), hn::Set(du, 16u));
}

template <class VU>
HWY_INLINE VF ToFloat(VU q) {
  const DF df;
  return hn::ConvertTo(df, hn::BitCast(hn::RebindToSigned<DF>(), q));
}

// float(k + offset) for k = 0..15: the levels a nibble indexes.
HWY_INLINE VF Levels(float offset) { return hn::Iota(DF(), offset); }

// One decoder per type: kBytes per block, and Unpack(block, w) writing the block's 32 weights as
// kChunks float vectors, each the value ggml_dequant.cc computes for that element.
struct DecodeQ4_0 {
  static constexpr size_t kBytes = sizeof(BlockQ4_0);
  HWY_INLINE static void Unpack(const uint8_t* b, VF* w) {
    const DF df;
    const uint8_t* qs = b + offsetof(BlockQ4_0, qs);
    const VF d = LoadScale(b + offsetof(BlockQ4_0, d));
    if constexpr (kTableLookup) {
      LookupBlock(hn::Mul(Levels(-8.0f), d), qs, w);  // (q - 8) * d, as the dequantizer rounds it
    } else {
      const hn::RebindToSigned<DF> di;
      StaticFor<kChunks>([&](auto k) STRATA_LAMBDA_INLINE {
        const auto q = hn::Sub(hn::BitCast(di, Nibbles<decltype(k)::value>(qs)), hn::Set(di, 8));
        w[k] = hn::Mul(hn::ConvertTo(df, q), d);
      });
    }
  }
};

struct DecodeQ4_1 {
  static constexpr size_t kBytes = sizeof(BlockQ4_1);
  HWY_INLINE static void Unpack(const uint8_t* b, VF* w) {
    const uint8_t* qs = b + offsetof(BlockQ4_1, qs);
    const VF d = LoadScale(b + offsetof(BlockQ4_1, d));
    const VF m = LoadScale(b + offsetof(BlockQ4_1, m));
    // q * d is exact, so the fused multiply-add rounds once, where the dequantizer's add does.
    if constexpr (kTableLookup) {
      LookupBlock(hn::MulAdd(Levels(0.0f), d, m), qs, w);
    } else {
      StaticFor<kChunks>([&](auto k) STRATA_LAMBDA_INLINE {
        w[k] = hn::MulAdd(ToFloat(Nibbles<decltype(k)::value>(qs)), d, m);
      });
    }
  }
};

struct DecodeIQ4_NL {
  static constexpr size_t kBytes = sizeof(BlockIQ4_NL);
  HWY_INLINE static void Unpack(const uint8_t* b, VF* w) {
    const DF df;
    const uint8_t* qs = b + offsetof(BlockIQ4_NL, qs);
    const VF d = LoadScale(b + offsetof(BlockIQ4_NL, d));
    if constexpr (kTableLookup) {
      alignas(64) static constexpr std::array<float, 16> kLevels = [] {
        std::array<float, 16> v{};
        for (size_t i = 0; i < v.size(); ++i) v[i] = kIq4nlValues[i];
        return v;
      }();
      LookupBlock(hn::Mul(d, hn::Load(df, kLevels.data())), qs, w);
    } else {
      // A byte shuffle maps nibbles to the signed levels, widened afterwards.
      const hn::Full128<int8_t> d16;
      const auto levels = hn::LoadU(d16, kIq4nlValues);
      const hn::Rebind<int8_t, DF> di8;
      const hn::RebindToSigned<DF> di;
      const hn::Rebind<uint8_t, DF> du8;
      StaticFor<kChunks>([&](auto k) STRATA_LAMBDA_INLINE {
        constexpr int kFirst = decltype(k)::value * static_cast<int>(kLanes);
        auto bytes = hn::LoadU(du8, qs + kFirst % (kQK / 2));
        if constexpr (kFirst < kQK / 2) {
          bytes = hn::And(bytes, hn::Set(du8, uint8_t{0xF}));
        } else {
          bytes = hn::ShiftRight<4>(bytes);
        }
        const auto v = hn::TableLookupBytes(levels, hn::BitCast(di8, bytes));
        w[k] = hn::Mul(d, hn::ConvertTo(df, hn::PromoteTo(di, v)));
      });
    }
  }
};

template <bool kHasMin>
struct DecodeQ5 {
  using Block = std::conditional_t<kHasMin, BlockQ5_1, BlockQ5_0>;
  static constexpr size_t kBytes = sizeof(Block);
  HWY_INLINE static void Unpack(const uint8_t* b, VF* w) {
    const DF df;
    const uint8_t* qs = b + offsetof(Block, qs);
    const uint8_t* qh = b + offsetof(Block, qh);
    const VF d = LoadScale(b + offsetof(Block, d));
    VF m;
    if constexpr (kHasMin) m = LoadScale(b + offsetof(Block, m));
    if constexpr (kTableLookup) {
      // Two tables, for the quants without and with the fifth bit; qh's bits are the select mask.
      VF lo, hi;
      if constexpr (kHasMin) {
        lo = hn::MulAdd(Levels(0.0f), d, m);
        hi = hn::MulAdd(Levels(16.0f), d, m);
      } else {
        lo = hn::Mul(Levels(-16.0f), d);
        hi = hn::Mul(Levels(0.0f), d);
      }
      StaticFor<kChunks>([&](auto k) STRATA_LAMBDA_INLINE {
        const auto high = hn::LoadMaskBits(df, qh + k * kLanes / 8);
        w[k] = hn::IfThenElse(high, LookupNibbles<decltype(k)::value>(hi, qs), LookupNibbles<decltype(k)::value>(lo, qs));
      });
    } else {
      uint32_t bits;
      std::memcpy(&bits, qh, sizeof(bits));
      StaticFor<kChunks>([&](auto k) STRATA_LAMBDA_INLINE {
        const auto q = hn::Or(Nibbles<decltype(k)::value>(qs), HighBits<decltype(k)::value>(bits));
        if constexpr (kHasMin) {
          w[k] = hn::MulAdd(ToFloat(q), d, m);
        } else {
          const hn::RebindToSigned<DF> di;
          w[k] = hn::Mul(hn::ConvertTo(df, hn::Sub(hn::BitCast(di, q), hn::Set(di, 16))), d);
        }
      });
    }
  }
};

struct DecodeQ8_0 {
  static constexpr size_t kBytes = sizeof(BlockQ8_0);
  HWY_INLINE static void Unpack(const uint8_t* b, VF* w) {
    const DF df;
    const hn::RebindToSigned<DF> di;
    const hn::Rebind<int8_t, DF> di8;
    const auto* qs = reinterpret_cast<const int8_t*>(b + offsetof(BlockQ8_0, qs));
    const VF d = LoadScale(b + offsetof(BlockQ8_0, d));
    StaticFor<kChunks>([&](auto k) STRATA_LAMBDA_INLINE {
      w[k] = hn::Mul(hn::ConvertTo(df, hn::PromoteTo(di, hn::LoadU(di8, qs + k * kLanes))), d);
    });
  }
};

// Blocks [b0, b1) of kRows rows (w[0..kRows), any addresses) times kTokens tokens, every block
// unpacked once and used for all the tokens. The accumulators live in `acc_mem` (kRows x kTokens x
// kSplit vectors) between calls, so that a row can be taken in column chunks; kSplit accumulators
// per (row, token) shorten the chain of dependent FMAs when there are few tokens.
// How far ahead of the block being read each row stream requests its bytes. The hardware
// prefetchers alone left a decode-sized product at 80% of the bandwidth it reaches with this; 1.5 to
// 3 KiB measured the same, 512 bytes less.
inline constexpr size_t kPrefetchBytes = 1536;

template <class Dec, int kRows, int kTokens, int kSplit>
HWY_INLINE void Tile(const uint8_t* const* w, int64_t b0, int64_t b1, const float* HWY_RESTRICT x, int64_t cols,
                     float* HWY_RESTRICT acc_mem) {
  const DF df;
  VF acc[kRows][kTokens][kSplit];
  const uint8_t* row[kRows];
  StaticFor<kRows>([&](auto r) STRATA_LAMBDA_INLINE {
    row[r] = w[r];
    StaticFor<kTokens>([&](auto t) STRATA_LAMBDA_INLINE {
      StaticFor<kSplit>([&](auto a) STRATA_LAMBDA_INLINE {
        acc[r][t][a] = hn::Load(df, acc_mem + ((r * kTokens + t) * kSplit + a) * kLanes);
      });
    });
  });
  for (int64_t b = b0; b < b1; ++b) {
    const float* xb = x + b * kQK;
    StaticFor<kRows>([&](auto r) STRATA_LAMBDA_INLINE {
      VF wv[kChunks];
      // Past the end of the weights a prefetch is harmless (it never faults); the address is formed
      // as an integer because a pointer may not point there.
      hwy::Prefetch(reinterpret_cast<const uint8_t*>(reinterpret_cast<uintptr_t>(row[r]) +
                                                     static_cast<size_t>(b) * Dec::kBytes + kPrefetchBytes));
      Dec::Unpack(row[r] + static_cast<size_t>(b) * Dec::kBytes, wv);
      StaticFor<kChunks>([&](auto k) STRATA_LAMBDA_INLINE {
        StaticFor<kTokens>([&](auto t) STRATA_LAMBDA_INLINE {
          auto& a = acc[r][t][k % kSplit];
          a = hn::MulAdd(wv[k], hn::LoadU(df, xb + t * cols + k * kLanes), a);
        });
      });
    });
  }
  StaticFor<kRows>([&](auto r) STRATA_LAMBDA_INLINE {
    StaticFor<kTokens>([&](auto t) STRATA_LAMBDA_INLINE {
      StaticFor<kSplit>([&](auto a) STRATA_LAMBDA_INLINE {
        hn::Store(acc[r][t][a], df, acc_mem + ((r * kTokens + t) * kSplit + a) * kLanes);
      });
    });
  });
}

// A row group: up to kGroupRows rows, by index, that go through every token group together.
inline constexpr int kGroupRows = 8;
struct RowGroup {
  int64_t index[kGroupRows];
  const uint8_t* w[kGroupRows];
  int n = 0;
};

// A row group against kTokens tokens, in as many rows at a time as the accumulators allow. With
// several tokens the columns go in chunks whose slice of x stays in L1 while every tile of the
// group reads it; one or two tokens' whole rows of x fit there anyway.
inline constexpr int64_t kColChunkBlocks = 16;

template <class Dec, int kTokens>
HWY_INLINE void GroupForTokens(const RowGroup& g, int64_t blocks, const float* x, int64_t cols, float* y,
                               int64_t y_stride) {
  const DF df;
  constexpr int kSplit = kTokens == 1 ? 2 : 1;
  constexpr int kRows = kAccRegs / (kTokens * kSplit) >= 4 ? 4 : (kAccRegs / (kTokens * kSplit) >= 2 ? 2 : 1);
  constexpr size_t kPerRow = static_cast<size_t>(kTokens * kSplit) * kLanes;
  HWY_ALIGN float acc[kGroupRows * kPerRow];
  for (size_t i = 0; i < static_cast<size_t>(g.n) * kPerRow; i += kLanes) hn::Store(hn::Zero(df), df, acc + i);
  const int64_t chunk = kTokens <= 2 ? blocks : kColChunkBlocks;
  for (int64_t b0 = 0; b0 < blocks; b0 += chunk) {
    const int64_t b1 = b0 + chunk < blocks ? b0 + chunk : blocks;
    int r = 0;
    for (; r + kRows <= g.n; r += kRows) Tile<Dec, kRows, kTokens, kSplit>(g.w + r, b0, b1, x, cols, acc + r * kPerRow);
    for (; r < g.n; ++r) Tile<Dec, 1, kTokens, kSplit>(g.w + r, b0, b1, x, cols, acc + r * kPerRow);
  }
  for (int r = 0; r < g.n; ++r)
    for (int t = 0; t < kTokens; ++t) {
      const float* a = acc + static_cast<size_t>(r) * kPerRow + static_cast<size_t>(t * kSplit) * kLanes;
      VF s = hn::Load(df, a);
      for (int i = 1; i < kSplit; ++i) s = hn::Add(s, hn::Load(df, a + i * kLanes));
      y[t * y_stride + g.index[r]] = hn::GetLane(hn::SumOfLanes(df, s));
    }
}

template <class Dec>
HWY_INLINE void GroupAllTokens(const RowGroup& g, int64_t blocks, const float* x, int64_t cols, int64_t tokens,
                               float* y, int64_t y_stride) {
  int64_t t = 0;
  for (; t + 8 <= tokens; t += 8) GroupForTokens<Dec, 8>(g, blocks, x + t * cols, cols, y + t * y_stride, y_stride);
  if (t + 4 <= tokens) {
    GroupForTokens<Dec, 4>(g, blocks, x + t * cols, cols, y + t * y_stride, y_stride);
    t += 4;
  }
  if (t + 2 <= tokens) {
    GroupForTokens<Dec, 2>(g, blocks, x + t * cols, cols, y + t * y_stride, y_stride);
    t += 2;
  }
  if (t < tokens) GroupForTokens<Dec, 1>(g, blocks, x + t * cols, cols, y + t * y_stride, y_stride);
}

// The rows go as kStreams sequential streams through memory: row group i takes rows i, i + 1 of each
// quarter of the matrix. A tile of four rows then reads four addresses in four distant places, each
// advancing through contiguous bytes across rows, which the hardware prefetchers follow; four
// neighbouring rows instead share pages at a few hundred bytes apart, and the prefetchers lose them
// (half the bandwidth, measured). Each group goes through every token group before the next, so
// that the token groups after the first read its bytes from cache.
inline constexpr int64_t kStreams = 4;

template <class Dec>
HWY_NOINLINE void MatmulRows(const uint8_t* w, int64_t rows, int64_t cols, const float* x, int64_t tokens, float* y,
                             int64_t y_stride) {
  const size_t row_bytes = static_cast<size_t>(cols / kQK) * Dec::kBytes;
  const int64_t blocks = cols / kQK;
  const int64_t per_stream = rows >= 4 * kStreams ? rows / kStreams : 0;
  constexpr int64_t kStreamRows = kGroupRows / kStreams;
  RowGroup g;
  for (int64_t i = 0; i < per_stream; i += kStreamRows) {
    g.n = 0;
    for (int64_t u = i; u < i + kStreamRows && u < per_stream; ++u)
      for (int64_t s = 0; s < kStreams; ++s) {
        g.index[g.n] = s * per_stream + u;
        g.w[g.n++] = w + static_cast<size_t>(s * per_stream + u) * row_bytes;
      }
    GroupAllTokens<Dec>(g, blocks, x, cols, tokens, y, y_stride);
  }
  for (int64_t r0 = kStreams * per_stream; r0 < rows; r0 += kGroupRows) {
    g.n = 0;
    for (int64_t r = r0; r < rows && r < r0 + kGroupRows; ++r) {
      g.index[g.n] = r;
      g.w[g.n++] = w + static_cast<size_t>(r) * row_bytes;
    }
    GroupAllTokens<Dec>(g, blocks, x, cols, tokens, y, y_stride);
  }
}

#endif  // STRATA_GGML_MATMUL_Q_SIMD

// y[t * y_stride + r] = W[r, :] . x[t, :] for a type of the 32-element family (the caller checked
// the type and the sizes). Returns false for any other type.
inline bool MatmulQBlocks(GgmlType type, const void* w, int64_t rows, int64_t cols, const float* x, int64_t tokens,
                          float* y, int64_t y_stride) {
#if STRATA_GGML_MATMUL_Q_SIMD
  const auto* wb = static_cast<const uint8_t*>(w);
  // Activations at an address that is not a multiple of the vector size make every load of x straddle
  // two cache lines, which costs more than a copy once several tokens share each unpacked block. A
  // row of x is a whole number of blocks (128 bytes), so one aligned copy aligns every token.
  constexpr uintptr_t kAlign = 64;
  if (reinterpret_cast<uintptr_t>(x) % kAlign != 0) {
    thread_local std::vector<float> scratch;
    const size_t n = static_cast<size_t>(tokens * cols);
    if (scratch.size() < n + kAlign / sizeof(float)) scratch.resize(n + kAlign / sizeof(float));
    const uintptr_t p = reinterpret_cast<uintptr_t>(scratch.data());
    float* aligned = scratch.data() + ((kAlign - p % kAlign) % kAlign) / sizeof(float);
    std::memcpy(aligned, x, n * sizeof(float));
    x = aligned;
  }
  switch (type) {
    case GgmlType::Q4_0: MatmulRows<DecodeQ4_0>(wb, rows, cols, x, tokens, y, y_stride); return true;
    case GgmlType::Q4_1: MatmulRows<DecodeQ4_1>(wb, rows, cols, x, tokens, y, y_stride); return true;
    case GgmlType::Q5_0: MatmulRows<DecodeQ5<false>>(wb, rows, cols, x, tokens, y, y_stride); return true;
    case GgmlType::Q5_1: MatmulRows<DecodeQ5<true>>(wb, rows, cols, x, tokens, y, y_stride); return true;
    case GgmlType::Q8_0: MatmulRows<DecodeQ8_0>(wb, rows, cols, x, tokens, y, y_stride); return true;
    case GgmlType::IQ4_NL: MatmulRows<DecodeIQ4_NL>(wb, rows, cols, x, tokens, y, y_stride); return true;
    default: return false;
  }
#else
  switch (type) {
    case GgmlType::Q4_0: case GgmlType::Q4_1: case GgmlType::Q5_0: case GgmlType::Q5_1: case GgmlType::Q8_0:
    case GgmlType::IQ4_NL: break;
    default: return false;
  }
  const GgmlCodec& codec = ggml_codec(type);
  const uint64_t row_bytes = codec.row_bytes(cols);
  std::vector<float> row(static_cast<size_t>(cols));
  for (int64_t r = 0; r < rows; ++r) {
    codec.dequantize_row(static_cast<const std::byte*>(w) + r * row_bytes, cols, row.data());
    // Double accumulation: a float sum in column order drifts further from the exact product than
    // the SIMD targets' lane-wise sums do.
    for (int64_t t = 0; t < tokens; ++t) {
      double acc = 0.0;
      for (int64_t c = 0; c < cols; ++c) acc += static_cast<double>(row[static_cast<size_t>(c)]) * x[t * cols + c];
      y[t * y_stride + r] = static_cast<float>(acc);
    }
  }
  return true;
#endif
}

}  // namespace HWY_NAMESPACE
}  // namespace strata::kernels
HWY_AFTER_NAMESPACE();

#endif  // STRATA_KERNELS_GGML_MATMUL_Q_INL_H_

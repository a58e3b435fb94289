// Matrix x vector (and small-batch) products on the k-quant formats Q2_K ... Q6_K, one source for
// every SIMD target (Google Highway). Included by ggml_matmul_k.cc for dynamic dispatch and by the
// per-target tests; kernels::ggml_matmul_reference is the oracle these are tested against.
//
// Each 256-element super-block is unpacked in two steps. Byte operations on 32 quant bytes at a time
// turn the packed bit planes into one int8 per element, in element order; the sub-block scales (and
// mins) become floats, d * scale and -(dmin * min). The product loop then widens 16 int8 to
// float32 and forms w = scale * q (+ negmin) with one rounding, as the scalar dequantizers in
// ggml_dequant.cc do (d * scale * q is exact in binary32 wherever they add a min), so every weight
// equals the dequantized one bit for bit and only the order of the float additions differs from
// the reference. The unpacked block (256 bytes and 32 floats) stays in L1 and serves up to
// kMaxGroup tokens whose accumulators live in registers; more tokens take further passes over the
// row, which is in cache by then. Q4_K on AVX-512 skips the byte step (Q4KLookup).
#if defined(STRATA_KERNELS_GGML_MATMUL_K_INL_H_) == defined(HWY_TARGET_TOGGLE)
#ifdef STRATA_KERNELS_GGML_MATMUL_K_INL_H_
#undef STRATA_KERNELS_GGML_MATMUL_K_INL_H_
#else
#define STRATA_KERNELS_GGML_MATMUL_K_INL_H_
#endif

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <vector>

#include <hwy/cache_control.h>
#include <hwy/highway.h>

#include "strata/core/dtype.hpp"
#include "strata/kernels/ggml_blocks.hpp"

HWY_BEFORE_NAMESPACE();
namespace strata::kernels::kquant {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

// At most 16 float lanes, so that a vector never straddles two 16-element sub-blocks, and on every
// target the lane count divides 16.
using DF = hn::CappedTag<float, 16>;
// The quant bytes are laid out in groups of 32 (one bit plane of 32 bytes feeds 32 elements).
using D8 = hn::CappedTag<uint8_t, 32>;

// Tokens whose accumulators are held in registers while one unpacked row is streamed through: 8
// accumulators plus the temporaries fit the 16 registers of AVX2 and SSE4.
inline constexpr size_t kMaxGroup = 8;

// How far ahead of the block being unpacked the weights are prefetched. One core streaming from DRAM
// needs many lines in flight; the hardware prefetcher alone leaves the unpack waiting on memory.
inline constexpr size_t kPrefetchBytes = 2048;

// Independent accumulator chains per token: with one or two tokens a single chain per token would
// wait on the FMA latency instead of the unpack.
constexpr size_t ChainsFor(size_t group) { return group == 1 ? 4 : (group < 4 ? 2 : 1); }

// One super-block after unpacking. Sub-block s covers elements [s * kSub, (s + 1) * kSub).
struct Unpacked {
  alignas(64) int8_t q[kQK_K];
  alignas(64) float scale[16];
  alignas(64) float negmin[16];
};

// Little-endian loads and stores of the packed scale words (every Highway target is little-endian).
inline uint32_t LoadLE32(const uint8_t* p) {
  uint32_t v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

inline void StoreLE32(uint32_t v, uint8_t* p) { std::memcpy(p, &v, sizeof(v)); }

// The f16 at p (and, for LoadF16Pair, the one after it) as float. Targets with F16C convert in one
// instruction; Highway 1.0's emulation elsewhere flushes small subnormals, so those use the exact
// scalar conversion, which is what the dequantizers use.
#if HWY_ARCH_X86 && HWY_TARGET <= HWY_AVX2
inline void LoadF16Pair(const uint8_t* p, float& first, float& second) {
  const hn::Full32<hwy::float16_t> dh;
  const hn::Rebind<float, decltype(dh)> df;
  const auto v = hn::PromoteTo(df, hn::LoadU(dh, reinterpret_cast<const hwy::float16_t*>(p)));
  first = hn::GetLane(v);
  second = hn::GetLane(hn::Shuffle2301(v));
}
inline float LoadF16(const uint8_t* p) {
  const hn::Full16<hwy::float16_t> dh;
  const hn::Rebind<float, decltype(dh)> df;
  return hn::GetLane(hn::PromoteTo(df, hn::LoadU(dh, reinterpret_cast<const hwy::float16_t*>(p))));
}
#else
inline float LoadF16(const uint8_t* p) {
  uint16_t bits;
  std::memcpy(&bits, p, sizeof(bits));
  return f16_to_f32(f16{bits});
}
inline void LoadF16Pair(const uint8_t* p, float& first, float& second) {
  first = LoadF16(p);
  second = LoadF16(p + 2);
}
#endif

// out[i] = mul * float(bytes[i]) for i < n (n a multiple of 8), the bytes read as int8 when
// kSigned. The product is the dequantizer's d * float(scale): exact, as both factors are short.
template <bool kSigned>
HWY_INLINE void ScaleBytes(const uint8_t* HWY_RESTRICT bytes, size_t n, float mul, float* HWY_RESTRICT out) {
  const hn::CappedTag<float, 8> df;
  const hn::RebindToSigned<decltype(df)> di;
  const size_t N = hn::Lanes(df);
  const auto vmul = hn::Set(df, mul);
  for (size_t i = 0; i < n; i += N) {
    hn::Vec<decltype(di)> v;
    if constexpr (kSigned) {
      const hn::Rebind<int8_t, decltype(df)> d8;
      v = hn::PromoteTo(di, hn::LoadU(d8, reinterpret_cast<const int8_t*>(bytes) + i));
    } else {
      const hn::Rebind<uint8_t, decltype(df)> d8;
      v = hn::BitCast(di, hn::PromoteTo(hn::RebindToUnsigned<decltype(df)>(), hn::LoadU(d8, bytes + i)));
    }
    hn::StoreU(hn::Mul(vmul, hn::ConvertTo(df, v)), df, out + i);
  }
}

// Q4_K and Q5_K: eight 6-bit scales and eight 6-bit mins packed in 12 bytes (sub-blocks 0..3 in the
// low six bits of bytes 0..3 and 4..7; sub-blocks 4..7 with their low four bits in bytes 8..11 and
// their top two bits in the spare high bits of bytes 0..7), done four at a time in 32-bit words.
inline void ScalesMinsK4(const uint8_t* HWY_RESTRICT packed, float d, float dmin, Unpacked& u) {
  const uint32_t a = LoadLE32(packed), b = LoadLE32(packed + 4), c = LoadLE32(packed + 8);
  uint8_t sc[8], mn[8];
  StoreLE32(a & 0x3F3F3F3Fu, sc);
  StoreLE32((c & 0x0F0F0F0Fu) | (((a >> 6) & 0x03030303u) << 4), sc + 4);
  StoreLE32(b & 0x3F3F3F3Fu, mn);
  StoreLE32(((c >> 4) & 0x0F0F0F0Fu) | (((b >> 6) & 0x03030303u) << 4), mn + 4);
  ScaleBytes<false>(sc, 8, d, u.scale);
  ScaleBytes<false>(mn, 8, -dmin, u.negmin);
}

// Byte shifts done as 16-bit shifts, one instruction on x86 where Highway's exact byte shift needs a
// mask too: bits move across the two bytes of a pair, so callers use only bits that stay inside.
template <int kBits, class V>
HWY_INLINE V ShrPairs(V v) {
#if HWY_TARGET == HWY_SCALAR
  return hn::ShiftRight<kBits>(v);
#else
  const hn::Repartition<uint16_t, D8> d16;
  return hn::BitCast(D8(), hn::ShiftRight<kBits>(hn::BitCast(d16, v)));
#endif
}
template <int kBits, class V>
HWY_INLINE V ShlPairs(V v) {
#if HWY_TARGET == HWY_SCALAR
  return hn::ShiftLeft<kBits>(v);
#else
  const hn::Repartition<uint16_t, D8> d16;
  return hn::BitCast(D8(), hn::ShiftLeft<kBits>(hn::BitCast(d16, v)));
#endif
}

// d, dmin and the packed scales and mins, which Q4_K and Q5_K lay out alike at the block's start.
static_assert(offsetof(BlockQ4_K, dmin) == offsetof(BlockQ5_K, dmin) &&
              offsetof(BlockQ4_K, scales) == offsetof(BlockQ5_K, scales));
inline void UnpackHeaderK4(const uint8_t* HWY_RESTRICT blk, Unpacked& u) {
  float d, dmin;
  LoadF16Pair(blk + offsetof(BlockQ4_K, d), d, dmin);
  ScalesMinsK4(blk + offsetof(BlockQ4_K, scales), d, dmin, u);
}

// The formats: block bytes, sub-block length, whether a min is subtracted, and the unpacker.

struct Q2K {
  static constexpr bool kLookup = false;
  static constexpr size_t kBytes = sizeof(BlockQ2_K), kSub = 16;
  static constexpr bool kMin = true;
  static HWY_INLINE void Unpack(const uint8_t* HWY_RESTRICT blk, Unpacked& u) {
    const D8 d8;
    const size_t N8 = hn::Lanes(d8);
    const uint8_t* qs = blk + offsetof(BlockQ2_K, qs);
    const auto k3 = hn::Set(d8, 3);
    // Two halves of 128 elements, each four 2-bit planes of the same 32 bytes.
    for (size_t half = 0; half < 2; ++half) {
      for (size_t l = 0; l < 32; l += N8) {
        auto v = hn::LoadU(d8, qs + 32 * half + l);
        for (size_t plane = 0; plane < 4; ++plane, v = ShrPairs<2>(v))
          hn::StoreU(hn::And(v, k3), d8, reinterpret_cast<uint8_t*>(u.q) + 128 * half + 32 * plane + l);
      }
    }
    const uint8_t* s = blk + offsetof(BlockQ2_K, scales);
    uint8_t sc[16], mn[16];
    for (int k = 0; k < 16; k += 4) {
      const uint32_t word = LoadLE32(s + k);
      StoreLE32(word & 0x0F0F0F0Fu, sc + k);
      StoreLE32((word >> 4) & 0x0F0F0F0Fu, mn + k);
    }
    float d, dmin;
    LoadF16Pair(blk + offsetof(BlockQ2_K, d), d, dmin);
    ScaleBytes<false>(sc, 16, d, u.scale);
    ScaleBytes<false>(mn, 16, -dmin, u.negmin);
  }
};

struct Q3K {
  static constexpr bool kLookup = false;
  static constexpr size_t kBytes = sizeof(BlockQ3_K), kSub = 16;
  // The -4 of a clear high bit is folded into the weight as -4 * scale: d * scale * u is exact (at
  // most 20 significant bits), so d * scale * u - 4 * d * scale rounds once to the dequantizer's
  // d * scale * (u - 4).
  static constexpr bool kMin = true;
  static HWY_INLINE void Unpack(const uint8_t* HWY_RESTRICT blk, Unpacked& u) {
    const D8 d8;
    const size_t N8 = hn::Lanes(d8);
    const uint8_t* qs = blk + offsetof(BlockQ3_K, qs);
    const uint8_t* hm = blk + offsetof(BlockQ3_K, hmask);
    const auto k3 = hn::Set(d8, 3), k4 = hn::Set(d8, 4);
    // Element 128 * half + 32 * plane + l is u = two bits from plane `plane` of qs[32 * half + l],
    // plus 4 when bit 4 * half + plane of hmask[l] is set. Only bits 0..1 of v and bit 0 of h are
    // read after each shift, so 16-bit shifts do (the bits they carry across bytes are masked off).
    for (size_t l = 0; l < 32; l += N8) {
      auto h = hn::LoadU(d8, hm + l);
      for (size_t half = 0; half < 2; ++half) {
        auto v = hn::LoadU(d8, qs + 32 * half + l);
        for (size_t plane = 0; plane < 4; ++plane, v = ShrPairs<2>(v), h = ShrPairs<1>(h)) {
          const auto q = hn::OrAnd(hn::And(v, k3), ShlPairs<2>(h), k4);
          hn::StoreU(q, d8, reinterpret_cast<uint8_t*>(u.q) + 128 * half + 32 * plane + l);
        }
      }
    }
    // Sixteen 6-bit scales: low four bits in the nibbles of bytes 0..7 (low nibbles for 0..7, high
    // for 8..15), top two bits in bytes 8..11, two bits per scale; four scales per 32-bit word.
    const uint8_t* s = blk + offsetof(BlockQ3_K, scales);
    const uint32_t a = LoadLE32(s), b = LoadLE32(s + 4), c = LoadLE32(s + 8);
    constexpr uint32_t kLow = 0x0F0F0F0Fu, kTop = 0x03030303u;
    const uint32_t words[4] = {(a & kLow) | ((c & kTop) << 4), (b & kLow) | (((c >> 2) & kTop) << 4),
                               ((a >> 4) & kLow) | (((c >> 4) & kTop) << 4),
                               ((b >> 4) & kLow) | (((c >> 6) & kTop) << 4)};
    uint8_t sc[16];
    for (int k = 0; k < 4; ++k) StoreLE32(words[k], sc + 4 * k);
    for (int k = 0; k < 16; ++k) sc[k] = static_cast<uint8_t>(sc[k] - 32);  // read back as int8
    const float d = LoadF16(blk + offsetof(BlockQ3_K, d));
    ScaleBytes<true>(sc, 16, d, u.scale);
    ScaleBytes<true>(sc, 16, -4.0f * d, u.negmin);
  }
};

struct Q4K {
  static constexpr bool kLookup = false;
  static constexpr size_t kBytes = sizeof(BlockQ4_K), kSub = 32;
  static constexpr bool kMin = true;
  static HWY_INLINE void Unpack(const uint8_t* HWY_RESTRICT blk, Unpacked& u) {
    const D8 d8;
    const size_t N8 = hn::Lanes(d8);
    const uint8_t* qs = blk + offsetof(BlockQ4_K, qs);
    const auto k0F = hn::Set(d8, 0x0F);
    // Four chunks of 64 elements: low nibbles of 32 bytes, then their high nibbles.
    for (size_t chunk = 0; chunk < 4; ++chunk) {
      for (size_t l = 0; l < 32; l += N8) {
        const auto v = hn::LoadU(d8, qs + 32 * chunk + l);
        uint8_t* out = reinterpret_cast<uint8_t*>(u.q) + 64 * chunk + l;
        hn::StoreU(hn::And(v, k0F), d8, out);
        hn::StoreU(hn::ShiftRight<4>(v), d8, out + 32);
      }
    }
    UnpackHeaderK4(blk, u);
  }
};

struct Q5K {
  static constexpr bool kLookup = false;
  static constexpr size_t kBytes = sizeof(BlockQ5_K), kSub = 32;
  static constexpr bool kMin = true;
  static HWY_INLINE void Unpack(const uint8_t* HWY_RESTRICT blk, Unpacked& u) {
    const D8 d8;
    const size_t N8 = hn::Lanes(d8);
    const uint8_t* qs = blk + offsetof(BlockQ5_K, qs);
    const uint8_t* qh = blk + offsetof(BlockQ5_K, qh);
    const auto k0F = hn::Set(d8, 0x0F), k10 = hn::Set(d8, 0x10);
    // As Q4_K, plus a fifth bit: bit 2 * chunk of qh[l] for the low nibbles, the next bit for the high.
    for (size_t l = 0; l < 32; l += N8) {
      auto h = hn::LoadU(d8, qh + l);
      for (size_t chunk = 0; chunk < 4; ++chunk, h = ShrPairs<2>(h)) {
        const auto v = hn::LoadU(d8, qs + 32 * chunk + l);
        uint8_t* out = reinterpret_cast<uint8_t*>(u.q) + 64 * chunk + l;
        hn::StoreU(hn::OrAnd(hn::And(v, k0F), ShlPairs<4>(h), k10), d8, out);
        hn::StoreU(hn::OrAnd(hn::ShiftRight<4>(v), ShlPairs<3>(h), k10), d8, out + 32);
      }
    }
    UnpackHeaderK4(blk, u);
  }
};

struct Q6K {
  static constexpr bool kLookup = false;
  static constexpr size_t kBytes = sizeof(BlockQ6_K), kSub = 16;
  static constexpr bool kMin = false;
  static HWY_INLINE void Unpack(const uint8_t* HWY_RESTRICT blk, Unpacked& u) {
    const D8 d8;
    const size_t N8 = hn::Lanes(d8);
    const auto k0F = hn::Set(d8, 0x0F), k30 = hn::Set(d8, 0x30), k20 = hn::Set(d8, 0x20);
    // Two halves of 128 elements; in each, element l (l < 32) and its three companions l + 32,
    // l + 64, l + 96 share the two bytes ql[l], ql[l + 32] (low and high nibbles) and qh[l] (two
    // bits each), and are stored minus 32.
    for (size_t half = 0; half < 2; ++half) {
      const uint8_t* ql = blk + offsetof(BlockQ6_K, ql) + 64 * half;
      const uint8_t* qh = blk + offsetof(BlockQ6_K, qh) + 32 * half;
      uint8_t* out = reinterpret_cast<uint8_t*>(u.q) + 128 * half;
      for (size_t l = 0; l < 32; l += N8) {
        const auto a = hn::LoadU(d8, ql + l), b = hn::LoadU(d8, ql + 32 + l), h = hn::LoadU(d8, qh + l);
        hn::StoreU(hn::Sub(hn::OrAnd(hn::And(a, k0F), ShlPairs<4>(h), k30), k20), d8, out + l);
        hn::StoreU(hn::Sub(hn::OrAnd(hn::And(b, k0F), ShlPairs<2>(h), k30), k20), d8, out + 32 + l);
        hn::StoreU(hn::Sub(hn::OrAnd(hn::ShiftRight<4>(a), h, k30), k20), d8, out + 64 + l);
        hn::StoreU(hn::Sub(hn::OrAnd(hn::ShiftRight<4>(b), ShrPairs<2>(h), k30), k20), d8, out + 96 + l);
      }
    }
    ScaleBytes<true>(blk + offsetof(BlockQ6_K, scales), 16, LoadF16(blk + offsetof(BlockQ6_K, d)), u.scale);
  }
};

// Keeps an unpacked block in memory. Compilers otherwise carry the unpacked bytes in registers and
// pay a lane extraction (a shuffle) per vector, where a widening load from memory needs none.
HWY_INLINE void KeepInMemory(const Unpacked& u) {
#if HWY_COMPILER_GCC || HWY_COMPILER_CLANG
  asm volatile("" : : "r"(&u) : "memory");
#else
  (void)u;
#endif
}

// acc[t][kChain] += w * x[t * x_stride + 0 .. N) for every token of the group.
template <size_t kChain, size_t kGroup, class V>
HWY_INLINE void Accumulate(V w, const float* HWY_RESTRICT x, size_t x_stride, V (&acc)[kGroup][ChainsFor(kGroup)]) {
  const DF df;
  HWY_UNROLL(8)
  for (size_t t = 0; t < kGroup; ++t) acc[t][kChain] = hn::MulAdd(w, hn::LoadU(df, x + t * x_stride), acc[t][kChain]);
}

#if HWY_ARCH_X86 && HWY_TARGET <= HWY_AVX3
// Q4_K where a vector holds 16 floats: a nibble indexes a 16-entry table of its sub-block's 16
// possible weights (d * scale * j - dmin * min for j = 0..15, each rounded once as the dequantizer
// does), so one permute replaces the widening, the int -> float conversion and the multiply-add.
// vpermps reads only the low four bits of each index lane, so a lane holding two quant bytes serves
// four nibbles by shifting, without masking; those come out in the order "even columns, then odd
// columns" of each 32, and the activations are reordered to match once per call (PairColumns).
struct Q4KLookup {
  static constexpr size_t kBytes = sizeof(BlockQ4_K);
  static constexpr bool kLookup = true;

  template <size_t kGroup, class V>
  static HWY_INLINE void Block(const uint8_t* HWY_RESTRICT blk, const float* HWY_RESTRICT x, size_t x_stride,
                               V (&acc)[kGroup][ChainsFor(kGroup)], Unpacked& u) {
    constexpr size_t kChains = ChainsFor(kGroup);
    const hn::Full512<float> df;
    const hn::Full512<uint32_t> du;
    const hn::Full256<uint16_t> d16;
    UnpackHeaderK4(blk, u);
    KeepInMemory(u);
    const V iota = hn::Iota(df, 0.0f);
    const auto* qs = reinterpret_cast<const uint16_t*>(blk + offsetof(BlockQ4_K, qs));
    HWY_UNROLL(4)
    for (size_t chunk = 0; chunk < 4; ++chunk) {
      const auto v = hn::PromoteTo(du, hn::LoadU(d16, qs + 16 * chunk));
      const V lo = hn::MulAdd(hn::Set(df, u.scale[2 * chunk]), iota, hn::Set(df, u.negmin[2 * chunk]));
      const V hi = hn::MulAdd(hn::Set(df, u.scale[2 * chunk + 1]), iota, hn::Set(df, u.negmin[2 * chunk + 1]));
      // Columns 64 * chunk + [even of 0..31, odd of 0..31, even of 32..63, odd of 32..63].
      const float* xc = x + 64 * chunk;
      Accumulate<0 % kChains>(Lookup(lo, v), xc, x_stride, acc);
      Accumulate<1 % kChains>(Lookup(lo, hn::ShiftRight<8>(v)), xc + 16, x_stride, acc);
      Accumulate<2 % kChains>(Lookup(hi, hn::ShiftRight<4>(v)), xc + 32, x_stride, acc);
      Accumulate<3 % kChains>(Lookup(hi, hn::ShiftRight<12>(v)), xc + 48, x_stride, acc);
    }
  }

  static HWY_INLINE hn::Vec512<float> Lookup(hn::Vec512<float> table, hn::Vec512<uint32_t> index) {
    return hn::TableLookupLanes(table, hn::Indices512<float>{index.raw});
  }
};
#endif

// x reordered for Q4KLookup: in each 32 columns, the 16 even ones, then the 16 odd ones.
inline void PairColumns(const float* HWY_RESTRICT x, size_t n, float* HWY_RESTRICT out) {
  for (size_t g = 0; g < n; g += 32) {
    for (size_t i = 0; i < 16; ++i) {
      out[g + i] = x[g + 2 * i];
      out[g + 16 + i] = x[g + 2 * i + 1];
    }
  }
}


// The N weights of an unpacked block starting at element `off`, as the dequantizer computes them.
template <class Fmt>
HWY_INLINE hn::Vec<DF> Weights(const Unpacked& u, size_t off) {
  const DF df;
  const hn::RebindToSigned<DF> di;
  const hn::Rebind<int8_t, DF> d8;
  const size_t s = off / Fmt::kSub;
  const auto q = hn::ConvertTo(df, hn::PromoteTo(di, hn::LoadU(d8, u.q + off)));
  if constexpr (Fmt::kMin) {
    return hn::MulAdd(hn::Set(df, u.scale[s]), q, hn::Set(df, u.negmin[s]));
  } else {
    return hn::Mul(hn::Set(df, u.scale[s]), q);
  }
}

// acc += the products of one unpacked super-block with x (the block's first column of token 0;
// tokens x_stride floats apart), consecutive vectors going to consecutive chains.
template <size_t kGroup, class Fmt, class V>
HWY_INLINE void FmaBlock(const Unpacked& u, const float* HWY_RESTRICT x, size_t x_stride,
                         V (&acc)[kGroup][ChainsFor(kGroup)]) {
  constexpr size_t kChains = ChainsFor(kGroup);
  const size_t N = hn::Lanes(DF());
  for (size_t off = 0; off < kQK_K; off += kChains * N) {
    Accumulate<0>(Weights<Fmt>(u, off), x + off, x_stride, acc);
    if constexpr (kChains > 1) Accumulate<1>(Weights<Fmt>(u, off + N), x + off + N, x_stride, acc);
    if constexpr (kChains > 2) {
      Accumulate<2>(Weights<Fmt>(u, off + 2 * N), x + off + 2 * N, x_stride, acc);
      Accumulate<3>(Weights<Fmt>(u, off + 3 * N), x + off + 3 * N, x_stride, acc);
    }
  }
}

// y[t * y_stride] = row . x[t] for kGroup tokens.
template <size_t kGroup, class Fmt>
HWY_NOINLINE void RowGroup(const uint8_t* HWY_RESTRICT row, size_t blocks, const float* HWY_RESTRICT x,
                           size_t cols, float* HWY_RESTRICT y, size_t y_stride) {
  constexpr size_t kChains = ChainsFor(kGroup);
  const DF df;
  using V = hn::Vec<DF>;
  V acc[kGroup][kChains];
  for (size_t t = 0; t < kGroup; ++t)
    for (size_t c = 0; c < kChains; ++c) acc[t][c] = hn::Zero(df);
  Unpacked u;
  for (size_t b = 0; b < blocks; ++b) {
    const uint8_t* blk = row + b * Fmt::kBytes;
    // Past the row's end this reaches into the next row, which is read next; prefetches never fault.
    for (size_t o = 0; o < Fmt::kBytes; o += 64) hwy::Prefetch(blk + kPrefetchBytes + o);
    if constexpr (Fmt::kLookup) {
      Fmt::template Block<kGroup>(blk, x + b * kQK_K, cols, acc, u);
    } else {
      Fmt::Unpack(blk, u);
      KeepInMemory(u);
      FmaBlock<kGroup, Fmt>(u, x + b * kQK_K, cols, acc);
    }
  }
  for (size_t t = 0; t < kGroup; ++t) {
    V sum = acc[t][0];
    for (size_t c = 1; c < kChains; ++c) sum = hn::Add(sum, acc[t][c]);
    y[t * y_stride] = hn::GetLane(hn::SumOfLanes(df, sum));
  }
}

template <class Fmt>
void MatmulFmt(const uint8_t* w, size_t rows, size_t cols, const float* x, size_t tokens, float* y,
               size_t y_stride) {
  const size_t blocks = cols / kQK_K;
  const size_t row_bytes = blocks * Fmt::kBytes;
  // Tokens split into groups of near-equal size, so that 9 tokens run as 5 + 4 rather than 8 + 1.
  const size_t groups = (tokens + kMaxGroup - 1) / kMaxGroup;
  std::vector<float> paired;
  if constexpr (Fmt::kLookup) {
    paired.resize(tokens * cols);
    for (size_t t = 0; t < tokens; ++t) PairColumns(x + t * cols, cols, paired.data() + t * cols);
    x = paired.data();
  }
  for (size_t r = 0; r < rows; ++r) {
    const uint8_t* row = w + r * row_bytes;
    size_t t0 = 0;
    for (size_t g = 0; g < groups; ++g) {
      const size_t n = (tokens - t0) / (groups - g);
      const float* xg = x + t0 * cols;
      float* yg = y + t0 * y_stride + r;
      switch (n) {
        case 1: RowGroup<1, Fmt>(row, blocks, xg, cols, yg, y_stride); break;
        case 2: RowGroup<2, Fmt>(row, blocks, xg, cols, yg, y_stride); break;
        case 3: RowGroup<3, Fmt>(row, blocks, xg, cols, yg, y_stride); break;
        case 4: RowGroup<4, Fmt>(row, blocks, xg, cols, yg, y_stride); break;
        case 5: RowGroup<5, Fmt>(row, blocks, xg, cols, yg, y_stride); break;
        case 6: RowGroup<6, Fmt>(row, blocks, xg, cols, yg, y_stride); break;
        case 7: RowGroup<7, Fmt>(row, blocks, xg, cols, yg, y_stride); break;
        default: RowGroup<8, Fmt>(row, blocks, xg, cols, yg, y_stride); break;
      }
      t0 += n;
    }
  }
}

// y[t * y_stride + r] = W[r, :] . x[t, :]; arguments already checked by kernels::ggml_matmul, t one
// of the five k-quant types (anything else is left untouched).
inline void MatmulK(GgmlType t, const void* w, int64_t rows, int64_t cols, const float* x, int64_t tokens, float* y,
                    int64_t y_stride) {
  const auto* bytes = static_cast<const uint8_t*>(w);
  const auto r = static_cast<size_t>(rows), c = static_cast<size_t>(cols), n = static_cast<size_t>(tokens),
             s = static_cast<size_t>(y_stride);
  switch (t) {
    case GgmlType::Q2_K: return MatmulFmt<Q2K>(bytes, r, c, x, n, y, s);
    case GgmlType::Q3_K: return MatmulFmt<Q3K>(bytes, r, c, x, n, y, s);
#if HWY_ARCH_X86 && HWY_TARGET <= HWY_AVX3
    case GgmlType::Q4_K: return MatmulFmt<Q4KLookup>(bytes, r, c, x, n, y, s);
#else
    case GgmlType::Q4_K: return MatmulFmt<Q4K>(bytes, r, c, x, n, y, s);
#endif
    case GgmlType::Q5_K: return MatmulFmt<Q5K>(bytes, r, c, x, n, y, s);
    case GgmlType::Q6_K: return MatmulFmt<Q6K>(bytes, r, c, x, n, y, s);
    default: return;
  }
}

}  // namespace HWY_NAMESPACE
}  // namespace strata::kernels::kquant
HWY_AFTER_NAMESPACE();

#endif  // include guard

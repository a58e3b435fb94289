#pragma once
// Element types strata stores and converts between. f16 and bf16 are bit containers with exact,
// round-to-nearest-even conversions; packed int4 holds two signed 4-bit values per byte.
#include <cstdint>
#include <cstring>
#include <string_view>

// The scalar conversions below are the reference for the SIMD and CUDA kernels and compile for both.
#if defined(__CUDACC__)
#define STRATA_HD __host__ __device__
#else
#define STRATA_HD
#endif

namespace strata {

enum class DType : uint8_t { f32, f64, f16, bf16, i8, i32, i4 };

// IEEE 754 binary16, stored as its bit pattern.
struct f16 {
  uint16_t bits = 0;
  friend bool operator==(f16, f16) = default;
};
// bfloat16 (the top half of a binary32), stored as its bit pattern.
struct bf16 {
  uint16_t bits = 0;
  friend bool operator==(bf16, bf16) = default;
};

std::string_view dtype_name(DType t);
// Parses a name as printed by dtype_name ("f32", "bf16", "i4", ...); throws strata::Error otherwise.
DType dtype_from_name(std::string_view name);
// Storage bits of one element: 4 for i4, else 8 * sizeof.
int dtype_bits(DType t);
// Bytes needed for n elements (packed types round up to whole bytes).
uint64_t dtype_bytes(DType t, uint64_t n);

template <class T>
struct dtype_of;
template <> struct dtype_of<float> { static constexpr DType value = DType::f32; };
template <> struct dtype_of<double> { static constexpr DType value = DType::f64; };
template <> struct dtype_of<f16> { static constexpr DType value = DType::f16; };
template <> struct dtype_of<bf16> { static constexpr DType value = DType::bf16; };
template <> struct dtype_of<int8_t> { static constexpr DType value = DType::i8; };
template <> struct dtype_of<int32_t> { static constexpr DType value = DType::i32; };
template <class T> struct dtype_of<const T> : dtype_of<T> {};
template <class T>
inline constexpr DType dtype_of_v = dtype_of<T>::value;

namespace detail {
STRATA_HD inline uint32_t float_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  return u;
}
STRATA_HD inline float bits_float(uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}
}  // namespace detail

// ---- binary16 ----------------------------------------------------------------------------------
// Exact: every f16 is representable in f32.
STRATA_HD inline float f16_to_f32(f16 h) {
  const uint32_t sign = static_cast<uint32_t>(h.bits & 0x8000u) << 16;
  const uint32_t exp = (h.bits >> 10) & 0x1Fu;
  uint32_t mant = h.bits & 0x3FFu;
  uint32_t out;
  if (exp == 0x1F) {
    // Inf, or NaN with its payload kept and made quiet, as the F16C instruction does.
    out = sign | 0x7F800000u | (mant << 13) | (mant ? 0x400000u : 0u);
  } else if (exp != 0) {
    out = sign | ((exp + 112u) << 23) | (mant << 13);
  } else if (mant == 0) {
    out = sign;
  } else {
    // Subnormal: shift the mantissa up until its leading 1 becomes the implicit bit.
    int e = -1;
    do {
      mant <<= 1;
      ++e;
    } while ((mant & 0x400u) == 0);
    out = sign | (static_cast<uint32_t>(112 - e) << 23) | ((mant & 0x3FFu) << 13);
  }
  return detail::bits_float(out);
}

// Round to nearest, ties to even; overflow goes to Inf; NaN stays NaN (quiet, payload's top bits kept).
STRATA_HD inline f16 f32_to_f16(float f) {
  const uint32_t x = detail::float_bits(f);
  const uint16_t sign = static_cast<uint16_t>((x >> 16) & 0x8000u);
  const uint32_t absx = x & 0x7FFFFFFFu;
  if (absx >= 0x7F800000u) {
    if (absx == 0x7F800000u) return {static_cast<uint16_t>(sign | 0x7C00u)};
    return {static_cast<uint16_t>(sign | 0x7E00u | ((absx >> 13) & 0x3FFu))};
  }
  if (absx >= 0x477FF000u) return {static_cast<uint16_t>(sign | 0x7C00u)};  // rounds past 65504
  if (absx >= 0x38800000u) {  // normal in f16
    const uint32_t rounded = absx + 0xFFFu + ((absx >> 13) & 1u);
    return {static_cast<uint16_t>(sign | ((rounded - 0x38000000u) >> 13))};
  }
  if (absx < 0x33000000u) return {sign};  // below half the smallest subnormal: rounds to zero
  // Subnormal in f16: value = mant * 2^-24; shift with round-to-nearest-even.
  const uint32_t exp = absx >> 23;
  const uint32_t mant = (absx & 0x7FFFFFu) | 0x800000u;
  const uint32_t shift = 126u - exp;  // 14..24
  uint32_t q = mant >> shift;
  const uint32_t rem = mant & ((1u << shift) - 1u);
  const uint32_t half = 1u << (shift - 1u);
  if (rem > half || (rem == half && (q & 1u))) ++q;
  return {static_cast<uint16_t>(sign | q)};
}

// ---- bfloat16 ----------------------------------------------------------------------------------
STRATA_HD inline float bf16_to_f32(bf16 h) { return detail::bits_float(static_cast<uint32_t>(h.bits) << 16); }

STRATA_HD inline bf16 f32_to_bf16(float f) {
  const uint32_t x = detail::float_bits(f);
  if ((x & 0x7FFFFFFFu) > 0x7F800000u) return {static_cast<uint16_t>((x >> 16) | 0x40u)};  // quiet NaN
  const uint32_t rounded = x + 0x7FFFu + ((x >> 16) & 1u);
  return {static_cast<uint16_t>(rounded >> 16)};
}

// ---- packed int4 ---------------------------------------------------------------------------------
// Element i lives in byte i/2: even indices in the low nibble, odd in the high nibble, two's complement.
inline int8_t int4_get(const uint8_t* packed, uint64_t i) {
  const uint8_t nibble = (i & 1) ? (packed[i >> 1] >> 4) : (packed[i >> 1] & 0xF);
  return static_cast<int8_t>(static_cast<int8_t>(nibble << 4) >> 4);
}
inline void int4_set(uint8_t* packed, uint64_t i, int8_t v) {
  const uint8_t nibble = static_cast<uint8_t>(v) & 0xF;
  uint8_t& byte = packed[i >> 1];
  byte = (i & 1) ? static_cast<uint8_t>((byte & 0x0F) | (nibble << 4))
                 : static_cast<uint8_t>((byte & 0xF0) | nibble);
}

// Element-wise conversion of contiguous arrays (SIMD where the CPU has it).
void convert_f32_to_f16(const float* in, f16* out, uint64_t n);
void convert_f16_to_f32(const f16* in, float* out, uint64_t n);
void convert_f32_to_bf16(const float* in, bf16* out, uint64_t n);
void convert_bf16_to_f32(const bf16* in, float* out, uint64_t n);

}  // namespace strata

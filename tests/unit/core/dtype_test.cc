#include "strata/core/dtype.hpp"

#include <gtest/gtest.h>
#include <immintrin.h>

#include <bit>
#include <cmath>
#include <random>

#include "strata/core/error.hpp"

namespace strata {
namespace {

bool is_nan_f16(uint16_t h) { return (h & 0x7C00u) == 0x7C00u && (h & 0x3FFu) != 0; }
bool is_nan_bf16(uint16_t h) { return (h & 0x7F80u) == 0x7F80u && (h & 0x7Fu) != 0; }

TEST(F16, EveryBitPatternRoundTripsAndNaNStaysNaN) {
  for (uint32_t bits = 0; bits < 65536; ++bits) {
    const f16 h{static_cast<uint16_t>(bits)};
    const float f = f16_to_f32(h);
    const f16 back = f32_to_f16(f);
    if (is_nan_f16(h.bits)) {
      ASSERT_TRUE(std::isnan(f)) << std::hex << bits;
      ASSERT_TRUE(is_nan_f16(back.bits)) << std::hex << bits;
      ASSERT_EQ(back.bits & 0x8000u, h.bits & 0x8000u) << "sign of NaN " << std::hex << bits;
      ASSERT_EQ(back.bits, h.bits | 0x200u) << "NaN comes back quiet with its payload " << std::hex << bits;
    } else {
      ASSERT_EQ(back.bits, h.bits) << std::hex << bits;
    }
  }
  EXPECT_TRUE(std::isinf(f16_to_f32(f16{0x7C00})));
  EXPECT_TRUE(std::isinf(f16_to_f32(f16{0xFC00})) && f16_to_f32(f16{0xFC00}) < 0);
  EXPECT_EQ(f16_to_f32(f16{0x0001}), std::ldexp(1.0f, -24));  // smallest subnormal
  EXPECT_EQ(f16_to_f32(f16{0x7BFF}), 65504.0f);
}

// Between every two neighbouring f16 values, the f32 midpoint rounds to the even one and the f32
// values one ulp either side of it round to the nearer one: round-to-nearest-even, exhaustively.
TEST(F16, EveryMidpointRoundsToNearestEven) {
  for (uint32_t sign : {0u, 0x8000u}) {
    for (uint32_t mag = 0; mag < 0x7C00u; ++mag) {
      const uint16_t lo = static_cast<uint16_t>(sign | mag), hi = static_cast<uint16_t>(sign | (mag + 1));
      const float a = f16_to_f32(f16{lo});
      const float b = mag + 1 == 0x7C00u ? std::copysign(65536.0f, a) : f16_to_f32(f16{hi});
      const float mid = (a + b) / 2;  // exact: f16 has 11 significant bits, f32 24
      const uint16_t even = (lo & 1u) ? hi : lo;
      ASSERT_EQ(f32_to_f16(mid).bits, even) << std::hex << lo;
      const float toward_lo = std::nextafter(mid, a), toward_hi = std::nextafter(mid, b);
      ASSERT_EQ(f32_to_f16(toward_lo).bits, lo) << std::hex << lo;
      ASSERT_EQ(f32_to_f16(toward_hi).bits, hi) << std::hex << lo;
    }
  }
}

TEST(F16, OverflowUnderflowAndSpecials) {
  EXPECT_EQ(f32_to_f16(1e6f).bits, 0x7C00u);
  EXPECT_EQ(f32_to_f16(-1e6f).bits, 0xFC00u);
  EXPECT_EQ(f32_to_f16(INFINITY).bits, 0x7C00u);
  EXPECT_EQ(f32_to_f16(1e-10f).bits, 0x0000u);
  EXPECT_EQ(f32_to_f16(-1e-10f).bits, 0x8000u);
  EXPECT_EQ(f32_to_f16(-0.0f).bits, 0x8000u);
  EXPECT_TRUE(is_nan_f16(f32_to_f16(std::nanf("")).bits));
  EXPECT_TRUE(is_nan_f16(f32_to_f16(-std::nanf("")).bits));
}

// The F16C instruction is an independent oracle for f32 -> f16 on arbitrary inputs. Compiled for F16C
// whatever the build's -march (portable and sanitizer builds have none), used only where the CPU has it.
__attribute__((target("f16c"))) uint16_t f16c_convert(float f) {
  return static_cast<uint16_t>(_cvtss_sh(f, _MM_FROUND_TO_NEAREST_INT));
}

TEST(F16, MatchesHardwareConversionOnRandomBitPatterns) {
  __builtin_cpu_init();
  if (!__builtin_cpu_supports("f16c")) GTEST_SKIP() << "no F16C-capable CPU to compare with";
  std::mt19937 rng(7);
  for (int i = 0; i < 4'000'000; ++i) {
    const uint32_t bits = rng();
    const float f = std::bit_cast<float>(bits);
    const uint16_t hw = f16c_convert(f);
    ASSERT_EQ(f32_to_f16(f).bits, hw) << std::hex << bits;
  }
}

TEST(BF16, EveryBitPatternRoundTripsAndMidpointsRoundToEven) {
  for (uint32_t bits = 0; bits < 65536; ++bits) {
    const bf16 h{static_cast<uint16_t>(bits)};
    const float f = bf16_to_f32(h);
    ASSERT_EQ(std::bit_cast<uint32_t>(f), bits << 16);
    const bf16 back = f32_to_bf16(f);
    if (is_nan_bf16(h.bits)) {
      ASSERT_TRUE(is_nan_bf16(back.bits)) << std::hex << bits;
      ASSERT_EQ(back.bits, h.bits | 0x40u) << std::hex << bits;
      continue;
    }
    ASSERT_EQ(back.bits, h.bits) << std::hex << bits;
    const uint32_t mag = bits & 0x7FFFu;
    if (mag >= 0x7F80u) continue;  // Inf has no upper neighbour
    // Midpoint to the next bf16 (towards larger magnitude), exact in f32.
    const uint32_t mid_bits = (bits << 16) | 0x8000u;
    const uint16_t even = (bits & 1u) ? static_cast<uint16_t>(bits + 1) : static_cast<uint16_t>(bits);
    ASSERT_EQ(f32_to_bf16(std::bit_cast<float>(mid_bits)).bits, even) << std::hex << bits;
    ASSERT_EQ(f32_to_bf16(std::bit_cast<float>(mid_bits - 1)).bits, bits) << std::hex << bits;
    ASSERT_EQ(f32_to_bf16(std::bit_cast<float>(mid_bits + 1)).bits, bits + 1) << std::hex << bits;
  }
  EXPECT_EQ(f32_to_bf16(std::bit_cast<float>(0x7F7FFFFFu)).bits, 0x7F80u);  // FLT_MAX rounds to Inf
}

TEST(Int4, PackedValuesRoundTrip) {
  uint8_t packed[4] = {};
  const int8_t values[8] = {-8, -1, 0, 7, 3, -5, 1, -2};
  for (int i = 0; i < 8; ++i) int4_set(packed, static_cast<uint64_t>(i), values[i]);
  for (int i = 0; i < 8; ++i) EXPECT_EQ(int4_get(packed, static_cast<uint64_t>(i)), values[i]);
  EXPECT_EQ(packed[0], 0xF8);  // -8 low nibble, -1 high nibble
}

TEST(DType, NamesSizesAndErrors) {
  for (DType t : {DType::f32, DType::f64, DType::f16, DType::bf16, DType::i8, DType::i32, DType::i4})
    EXPECT_EQ(dtype_from_name(dtype_name(t)), t);
  EXPECT_EQ(dtype_bytes(DType::i4, 5), 3u);
  EXPECT_EQ(dtype_bytes(DType::bf16, 5), 10u);
  try {
    dtype_from_name("q4_k");
    FAIL() << "expected strata::Error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("q4_k"), std::string::npos);
  }
  EXPECT_THROW(dtype_bytes(DType::f64, ~uint64_t{0} / 2), Error);
}

}  // namespace
}  // namespace strata

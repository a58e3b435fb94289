// The SIMD conversions, on every Highway target this CPU supports, against the scalar oracle.
#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "kernels/convert_test.cc"
#include <hwy/foreach_target.h>  // IWYU pragma: keep
#include <hwy/highway.h>
#include <hwy/tests/hwy_gtest.h>

#include <bit>
#include <cmath>
#include <random>
#include <vector>

#include "kernels/cpu/convert-inl.h"
#include "strata/core/dtype.hpp"

HWY_BEFORE_NAMESPACE();
namespace strata {
namespace HWY_NAMESPACE {

// Every f16/bf16 value, the midpoints between neighbours and one ulp around them, and random bit
// patterns (NaNs included); odd length so that the scalar tail runs too.
std::vector<float> TrickyFloats() {
  std::vector<float> v;
  for (uint32_t b = 0; b < 65536; ++b) {
    const float f = f16_to_f32(f16{static_cast<uint16_t>(b)});
    v.push_back(f);
    if (std::isfinite(f)) {
      const float g = f16_to_f32(f16{static_cast<uint16_t>(b + 1)});
      if (std::isfinite(g)) {
        const float mid = (f + g) / 2;
        v.insert(v.end(), {mid, std::nextafter(mid, f), std::nextafter(mid, g)});
      }
    }
    const uint32_t bf = b << 16;
    v.insert(v.end(), {std::bit_cast<float>(bf), std::bit_cast<float>(bf | 0x8000u),
                       std::bit_cast<float>(bf | 0x7FFFu), std::bit_cast<float>(bf | 0x8001u)});
  }
  std::mt19937 rng(11);
  for (int i = 0; i < 100001; ++i) v.push_back(std::bit_cast<float>(static_cast<uint32_t>(rng())));
  return v;
}

void TestF16MatchesScalar() {
  const std::vector<float> in = TrickyFloats();
  std::vector<f16> simd(in.size());
  ConvertF32ToF16(in.data(), simd.data(), in.size());
  for (size_t i = 0; i < in.size(); ++i)
    ASSERT_EQ(simd[i].bits, f32_to_f16(in[i]).bits) << i;

  std::vector<f16> all(65537);
  for (uint32_t b = 0; b < all.size(); ++b) all[b] = f16{static_cast<uint16_t>(b)};
  std::vector<float> back(all.size());
  ConvertF16ToF32(all.data(), back.data(), all.size());
  for (size_t i = 0; i < all.size(); ++i)
    ASSERT_EQ(std::bit_cast<uint32_t>(back[i]), std::bit_cast<uint32_t>(f16_to_f32(all[i]))) << i;
}

void TestBF16MatchesScalar() {
  const std::vector<float> in = TrickyFloats();
  std::vector<bf16> simd(in.size());
  ConvertF32ToBF16(in.data(), simd.data(), in.size());
  for (size_t i = 0; i < in.size(); ++i)
    ASSERT_EQ(simd[i].bits, f32_to_bf16(in[i]).bits) << i;

  std::vector<bf16> all(65537);
  for (uint32_t b = 0; b < all.size(); ++b) all[b] = bf16{static_cast<uint16_t>(b)};
  std::vector<float> back(all.size());
  ConvertBF16ToF32(all.data(), back.data(), all.size());
  for (size_t i = 0; i < all.size(); ++i)
    ASSERT_EQ(std::bit_cast<uint32_t>(back[i]), std::bit_cast<uint32_t>(bf16_to_f32(all[i]))) << i;
}

}  // namespace HWY_NAMESPACE
}  // namespace strata
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace strata {
HWY_BEFORE_TEST(ConvertTest);
HWY_EXPORT_AND_TEST_P(ConvertTest, TestF16MatchesScalar);
HWY_EXPORT_AND_TEST_P(ConvertTest, TestBF16MatchesScalar);

TEST(Convert, DispatchedEntryPointsMatchScalar) {
  const float in[5] = {1.0f, -2.5f, 65504.0f, 1e-8f, 3.14159f};
  f16 h[5];
  bf16 b[5];
  convert_f32_to_f16(in, h, 5);
  convert_f32_to_bf16(in, b, 5);
  float back_h[5], back_b[5];
  convert_f16_to_f32(h, back_h, 5);
  convert_bf16_to_f32(b, back_b, 5);
  for (int i = 0; i < 5; ++i) {
    EXPECT_EQ(h[i].bits, f32_to_f16(in[i]).bits);
    EXPECT_EQ(b[i].bits, f32_to_bf16(in[i]).bits);
    EXPECT_EQ(back_h[i], f16_to_f32(h[i]));
    EXPECT_EQ(back_b[i], bf16_to_f32(b[i]));
  }
}
}  // namespace strata
#endif

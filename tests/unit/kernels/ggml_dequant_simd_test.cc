// The SIMD dequantizers of the 32-element ggml types: every Highway target against the scalar
// loops, bit for bit, on random blocks (every quant value, random binary16 scales and mins, and the
// scales' special values), at any alignment through the codec's rows.
#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "kernels/ggml_dequant_simd_test.cc"
#include <hwy/foreach_target.h>  // IWYU pragma: keep
#include <hwy/highway.h>
#include <hwy/tests/hwy_gtest.h>

#include <cstdint>
#include <cstring>
#include <random>
#include <vector>

#include "kernels/cpu/ggml_dequant_simd-inl.h"
#include "kernels/cpu/ggml_rows.hpp"
#include "strata/kernels/ggml_codec.hpp"

#ifndef STRATA_DEQUANT_SIMD_TEST_SHARED_
#define STRATA_DEQUANT_SIMD_TEST_SHARED_
namespace strata::dequant_simd_test {
// Random bytes for nb blocks of `Block`, with finite binary16 scales (and mins) drawn from the whole
// exponent range, a few of them zero, subnormal or negative.
template <class Block, bool kHasMin>
std::vector<Block> random_blocks(int64_t nb, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<Block> blocks(static_cast<size_t>(nb));
  auto* bytes = reinterpret_cast<uint8_t*>(blocks.data());
  for (size_t i = 0; i < blocks.size() * sizeof(Block); ++i) bytes[i] = static_cast<uint8_t>(rng());
  const uint16_t specials[] = {0x0000, 0x8000, 0x0001, 0x03FF, 0x3C00, 0xBC00, 0x7BFF, 0xFBFF};
  for (size_t i = 0; i < blocks.size(); ++i) {
    uint16_t d = static_cast<uint16_t>(rng());
    if ((d & 0x7C00) == 0x7C00) d &= 0xBFFF;  // no Inf/NaN scales
    if (i % 16 == 3) d = specials[(i / 16) % 8];
    std::memcpy(&blocks[i], &d, sizeof d);  // d is every type's first field
    if (kHasMin) {                           // and m the second, where there is one
      uint16_t m = static_cast<uint16_t>(rng());
      if ((m & 0x7C00) == 0x7C00) m &= 0xBFFF;
      std::memcpy(reinterpret_cast<uint8_t*>(&blocks[i]) + 2, &m, sizeof m);
    }
  }
  return blocks;
}
}  // namespace strata::dequant_simd_test
#endif

HWY_BEFORE_NAMESPACE();
namespace dequant_simd {
namespace HWY_NAMESPACE {
namespace kernels = strata::kernels;
namespace detail = strata::kernels::detail;
namespace dt = strata::dequant_simd_test;

template <class Block, bool kHasMin, class Simd, class Scalar>
void Check(Simd simd, Scalar scalar, const char* name) {
  const int64_t nb = 4096;
  const auto blocks = dt::random_blocks<Block, kHasMin>(nb, 17);
  std::vector<float> a(static_cast<size_t>(nb * kernels::kQK)), b(a.size());
  simd(blocks.data(), a.data(), nb);
  scalar(blocks.data(), nb * kernels::kQK, b.data());
  for (size_t i = 0; i < a.size(); ++i) {
    uint32_t ua, ub;
    std::memcpy(&ua, &a[i], 4);
    std::memcpy(&ub, &b[i], 4);
    ASSERT_EQ(ua, ub) << name << " element " << i << ": " << a[i] << " vs " << b[i];
  }
}

void TestDequantMatchesScalar() {
  using strata::HWY_NAMESPACE::DequantQ4_0;
  using strata::HWY_NAMESPACE::DequantQ4_1;
  using strata::HWY_NAMESPACE::DequantQ5_0;
  using strata::HWY_NAMESPACE::DequantQ5_1;
  using strata::HWY_NAMESPACE::DequantQ8_0;
  Check<kernels::BlockQ4_0, false>(DequantQ4_0, detail::dequantize_row_q4_0_scalar, "q4_0");
  Check<kernels::BlockQ4_1, true>(DequantQ4_1, detail::dequantize_row_q4_1_scalar, "q4_1");
  Check<kernels::BlockQ5_0, false>(DequantQ5_0, detail::dequantize_row_q5_0_scalar, "q5_0");
  Check<kernels::BlockQ5_1, true>(DequantQ5_1, detail::dequantize_row_q5_1_scalar, "q5_1");
  Check<kernels::BlockQ8_0, false>(DequantQ8_0, detail::dequantize_row_q8_0_scalar, "q8_0");
}

}  // namespace HWY_NAMESPACE
}  // namespace dequant_simd
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace dequant_simd {
HWY_BEFORE_TEST(DequantSimdTest);
HWY_EXPORT_AND_TEST_P(DequantSimdTest, TestDequantMatchesScalar);
}  // namespace dequant_simd

namespace strata::kernels {

// The codec's rows (SIMD, dispatched) at an odd byte offset equal the scalar rows.
TEST(DequantSimd, CodecRowsAtAnyAlignment) {
  const GgmlType types[] = {GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::Q5_0, GgmlType::Q5_1, GgmlType::Q8_0};
  const DequantizeRowFn scalars[] = {detail::dequantize_row_q4_0_scalar, detail::dequantize_row_q4_1_scalar,
                                             detail::dequantize_row_q5_0_scalar, detail::dequantize_row_q5_1_scalar,
                                             detail::dequantize_row_q8_0_scalar};
  for (int t = 0; t < 5; ++t) {
    const GgmlCodec& c = ggml_codec(types[t]);
    const int64_t n = 32 * 300;
    std::vector<uint8_t> raw(c.row_bytes(n) + 1);
    std::mt19937 rng(static_cast<uint32_t>(t));
    for (auto& v : raw) v = static_cast<uint8_t>(rng());
    // Finite binary16 scales and mins (the first two fields of the types that have them).
    for (uint64_t off = 1; off + c.type_size <= raw.size(); off += c.type_size)
      for (int f = 0; f < (types[t] == GgmlType::Q4_1 || types[t] == GgmlType::Q5_1 ? 2 : 1); ++f) raw[off + 2 * f + 1] &= 0xBF;
    std::vector<float> a(static_cast<size_t>(n)), b(a.size());
    c.dequantize_row(raw.data() + 1, n, a.data());
    scalars[t](raw.data() + 1, n, b.data());
    EXPECT_EQ(std::memcmp(a.data(), b.data(), a.size() * sizeof(float)), 0) << c.name;
  }
}

}  // namespace strata::kernels
#endif

// The k-quant matrix x vector kernels on every Highway target this CPU runs (not only the ones a
// native build dispatches to: the SSE4, AVX2 and EMU128 variants are what other machines get),
// against kernels::ggml_matmul_reference; then the public entry point.
#ifndef HWY_COMPILE_ALL_ATTAINABLE
#define HWY_COMPILE_ALL_ATTAINABLE
#endif
#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "kernels/ggml_matmul_k_test.cc"
#include <hwy/foreach_target.h>  // IWYU pragma: keep
#include <hwy/highway.h>
#include <hwy/tests/hwy_gtest.h>

#include <cmath>
#include <cstddef>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include "kernels/cpu/ggml_matmul_internal.hpp"
#include "kernels/cpu/ggml_matmul_k-inl.h"
#include "strata/core/dtype.hpp"
#include "strata/core/error.hpp"
#include "strata/kernels/ggml_codec.hpp"
#include "strata/kernels/ggml_matmul.hpp"

// Target-independent helpers, compiled once although foreach_target includes this file per target.
#ifndef STRATA_GGML_MATMUL_K_TEST_HELPERS_
#define STRATA_GGML_MATMUL_K_TEST_HELPERS_
namespace strata::kernels::kquant_test {

using Kernel = void (*)(GgmlType, const void*, int64_t, int64_t, const float*, int64_t, float*, int64_t);

inline constexpr GgmlType kTypes[] = {GgmlType::Q2_K, GgmlType::Q3_K, GgmlType::Q4_K, GgmlType::Q5_K,
                                      GgmlType::Q6_K};

// Byte offsets of the f16 fields of a block: d, then dmin where the type has one.
inline std::vector<size_t> f16_fields(GgmlType t) {
  switch (t) {
    case GgmlType::Q2_K: return {offsetof(BlockQ2_K, d), offsetof(BlockQ2_K, dmin)};
    case GgmlType::Q3_K: return {offsetof(BlockQ3_K, d)};
    case GgmlType::Q4_K: return {offsetof(BlockQ4_K, d), offsetof(BlockQ4_K, dmin)};
    case GgmlType::Q5_K: return {offsetof(BlockQ5_K, d), offsetof(BlockQ5_K, dmin)};
    case GgmlType::Q6_K: return {offsetof(BlockQ6_K, d)};
    default: return {};
  }
}

// Any finite f16: signed zeros, subnormals and normals of every exponent.
inline uint16_t random_finite_f16(std::mt19937_64& rng) {
  const uint16_t sign = static_cast<uint16_t>(rng() & 0x8000u);
  switch (rng() % 8) {
    case 0: return sign;                                                // zero
    case 1: return static_cast<uint16_t>(sign | (1 + rng() % 0x3FF));  // subnormal
    default: {
      const uint16_t exp = static_cast<uint16_t>(1 + rng() % 30);
      return static_cast<uint16_t>(sign | (exp << 10) | (rng() & 0x3FF));
    }
  }
}

// `rows` rows of random block bytes (scales and bit planes uniformly random, d and dmin random
// finite f16), starting `misalign` bytes into the returned buffer.
inline std::vector<uint8_t> random_rows(GgmlType t, int64_t rows, int64_t cols, size_t misalign, uint64_t seed) {
  std::mt19937_64 rng(seed);
  const size_t bytes = ggml_nbytes(t, cols) * static_cast<size_t>(rows);
  std::vector<uint8_t> buf(bytes + misalign);
  for (auto& b : buf) b = static_cast<uint8_t>(rng());
  const size_t block = ggml_type_size(t);
  for (size_t off = 0; off < bytes; off += block) {
    for (const size_t field : f16_fields(t)) {
      const uint16_t h = random_finite_f16(rng);
      std::memcpy(buf.data() + misalign + off + field, &h, sizeof(h));
    }
  }
  return buf;
}

inline std::vector<float> random_floats(int64_t n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> gauss(0.0f, 1.0f);
  std::vector<float> v(static_cast<size_t>(n));
  for (auto& f : v) f = gauss(rng);
  return v;
}

// Runs `kernel` on rows [r0, r0 + n) of W (rows x cols) with y_stride and checks, for every token:
// the rows computed agree with the reference within 1e-6 of sum_c |w_rc * x_tc| (the float
// additions run in another order; the weights themselves are the dequantizer's), and no other
// entry of y was written.
inline void check_product(Kernel kernel, GgmlType t, const uint8_t* w, int64_t rows, int64_t cols, const float* x,
                          int64_t tokens, int64_t r0, int64_t n, int64_t y_stride) {
  const size_t row_bytes = ggml_nbytes(t, cols);
  const float sentinel = std::numeric_limits<float>::quiet_NaN();
  std::vector<float> y(static_cast<size_t>(tokens * y_stride), sentinel);
  kernel(t, w + static_cast<size_t>(r0) * row_bytes, n, cols, x, tokens, y.data() + r0, y_stride);

  std::vector<float> ref(static_cast<size_t>(tokens * rows));
  ggml_matmul_reference(t, w, rows, cols, x, tokens, ref.data(), rows);
  std::vector<float> deq(static_cast<size_t>(cols));
  for (int64_t r = 0; r < rows; ++r) {
    ggml_codec(t).dequantize_row(w + static_cast<size_t>(r) * row_bytes, cols, deq.data());
    for (int64_t tk = 0; tk < tokens; ++tk) {
      const float got = y[static_cast<size_t>(tk * y_stride + r)];
      if (r < r0 || r >= r0 + n) {
        ASSERT_TRUE(std::isnan(got)) << ggml_type_name(t) << " wrote row " << r << " outside [" << r0 << ", "
                                     << r0 + n << ")";
        continue;
      }
      double magnitude = 0;
      for (int64_t c = 0; c < cols; ++c)
        magnitude += std::fabs(static_cast<double>(deq[static_cast<size_t>(c)]) * x[tk * cols + c]);
      const double want = ref[static_cast<size_t>(tk * rows + r)];
      ASSERT_LE(std::fabs(got - want), 1e-6 * magnitude + 1e-30)
          << ggml_type_name(t) << " rows " << rows << " cols " << cols << " tokens " << tokens << ": row " << r
          << " token " << tk << " got " << got << " want " << want << " (sum |w x| " << magnitude << ")";
    }
  }
}

inline void check_shape(Kernel kernel, GgmlType t, int64_t rows, int64_t cols, int64_t tokens, size_t misalign,
                        uint64_t seed) {
  const std::vector<uint8_t> w = random_rows(t, rows, cols, misalign, seed);
  const std::vector<float> x = random_floats(tokens * cols, seed + 1);
  check_product(kernel, t, w.data() + misalign, rows, cols, x.data(), tokens, 0, rows, rows);
}

inline void check_all_shapes(Kernel kernel) {
  uint64_t seed = 1;
  for (const GgmlType t : kTypes) {
    // Every group size, and groups split unevenly (37 = 8 + 8 + 7 + 7 + 7).
    for (int64_t tokens = 1; tokens <= 16; ++tokens) check_shape(kernel, t, 3, 512, tokens, tokens % 2, ++seed);
    check_shape(kernel, t, 3, 512, 37, 1, ++seed);
    for (const int64_t rows : {1, 17})
      for (const int64_t cols : {256, 4096})
        for (const int64_t tokens : {1, 4, 9}) check_shape(kernel, t, rows, cols, tokens, rows == 17 ? 1 : 0, ++seed);
    check_shape(kernel, t, 5, 768, 8, 1, ++seed);

    // A row sub-range written into a y wider than the matrix, as a thread of nn::GgmlLinear does.
    const int64_t rows = 17, cols = 1024, tokens = 3;
    const std::vector<uint8_t> w = random_rows(t, rows, cols, 1, ++seed);
    const std::vector<float> x = random_floats(tokens * cols, ++seed);
    check_product(kernel, t, w.data() + 1, rows, cols, x.data(), tokens, 5, 7, 20);
  }
}

}  // namespace strata::kernels::kquant_test
#endif  // STRATA_GGML_MATMUL_K_TEST_HELPERS_

HWY_BEFORE_NAMESPACE();
namespace strata::kernels::kquant {
namespace HWY_NAMESPACE {

void TestMatchesReference() { kquant_test::check_all_shapes(&MatmulK); }

// A type that is not a k-quant leaves y alone (the dispatcher only hands over the five).
void TestOtherTypesUntouched() {
  float y = 42.0f;
  const float x[256] = {};
  const uint8_t w[256] = {};
  MatmulK(GgmlType::Q8_K, w, 1, 256, x, 1, &y, 1);
  EXPECT_EQ(y, 42.0f);
}

}  // namespace HWY_NAMESPACE
}  // namespace strata::kernels::kquant
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace strata::kernels {
namespace kquant {
HWY_BEFORE_TEST(GgmlMatmulKTest);
HWY_EXPORT_AND_TEST_P(GgmlMatmulKTest, TestMatchesReference);
HWY_EXPORT_AND_TEST_P(GgmlMatmulKTest, TestOtherTypesUntouched);
}  // namespace kquant

namespace {

void public_entry(GgmlType t, const void* w, int64_t rows, int64_t cols, const float* x, int64_t tokens, float* y,
                  int64_t y_stride) {
  ggml_matmul(t, w, rows, cols, x, tokens, y, y_stride);
}

TEST(GgmlMatmulK, SupportsExactlyTheKQuants) {
  for (const GgmlType t : kquant_test::kTypes) {
    EXPECT_TRUE(ggml_matmul_supported(t)) << ggml_type_name(t);
    EXPECT_TRUE(detail::matmul_k_blocks_supported(t)) << ggml_type_name(t);
  }
  for (const GgmlType t : {GgmlType::F32, GgmlType::F16, GgmlType::Q4_0, GgmlType::Q8_0, GgmlType::Q8_K,
                           GgmlType::IQ4_NL, GgmlType::IQ4_XS})
    EXPECT_FALSE(detail::matmul_k_blocks_supported(t)) << ggml_type_name(t);
}

TEST(GgmlMatmulK, PublicEntryMatchesReference) {
  uint64_t seed = 100;
  for (const GgmlType t : kquant_test::kTypes) {
    for (const int64_t tokens : {1, 3, 16}) {
      const int64_t rows = 7, cols = 1024;
      const std::vector<uint8_t> w = kquant_test::random_rows(t, rows, cols, 1, ++seed);
      const std::vector<float> x = kquant_test::random_floats(tokens * cols, ++seed);
      kquant_test::check_product(&public_entry, t, w.data() + 1, rows, cols, x.data(), tokens, 0, rows, rows);
    }
  }
}

// Rows as the quantizers write them for a layer-like matrix, rather than random bytes.
TEST(GgmlMatmulK, PublicEntryOnQuantizedWeights) {
  const int64_t rows = 9, cols = 2048, tokens = 5;
  std::mt19937_64 rng(7);
  std::student_t_distribution<float> heavy(4.0f);
  std::vector<float> weights(static_cast<size_t>(rows * cols));
  for (auto& v : weights) v = 0.02f * heavy(rng);
  const std::vector<float> x = kquant_test::random_floats(tokens * cols, 8);
  for (const GgmlType t : kquant_test::kTypes) {
    const GgmlCodec& codec = ggml_codec(t);
    const size_t row_bytes = codec.row_bytes(cols);
    std::vector<uint8_t> w(row_bytes * rows);
    for (int64_t r = 0; r < rows; ++r)
      codec.quantize_row(weights.data() + r * cols, cols, w.data() + static_cast<size_t>(r) * row_bytes, nullptr);
    kquant_test::check_product(&public_entry, t, w.data(), rows, cols, x.data(), tokens, 0, rows, rows);
  }
}

TEST(GgmlMatmulK, ColsNotAWholeNumberOfSuperBlocksThrow) {
  std::vector<uint8_t> w(4096);
  std::vector<float> x(1024), y(4);
  for (const GgmlType t : kquant_test::kTypes) {
    for (const int64_t cols : {128, 300, 32})
      EXPECT_THROW(ggml_matmul(t, w.data(), 1, cols, x.data(), 1, y.data(), 1), Error) << ggml_type_name(t);
  }
}

}  // namespace
}  // namespace strata::kernels
#endif  // HWY_ONCE

// The 32-element block kernels of ggml_matmul, on every Highway target this CPU supports, against
// the scalar oracle ggml_matmul_reference; then the checks of the dispatched public entry.
#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "kernels/ggml_matmul_q_test.cc"
#include <hwy/foreach_target.h>  // IWYU pragma: keep
#include <hwy/highway.h>
#include <hwy/tests/hwy_gtest.h>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <random>
#include <span>
#include <string>
#include <vector>

#include "kernels/cpu/ggml_matmul_q-inl.h"
#include "strata/core/dtype.hpp"
#include "strata/core/error.hpp"
#include "strata/kernels/ggml_codec.hpp"
#include "strata/kernels/ggml_matmul.hpp"

#ifndef STRATA_GGML_MATMUL_Q_TEST_HELPERS_
#define STRATA_GGML_MATMUL_Q_TEST_HELPERS_
namespace strata::kernels::test {

inline constexpr GgmlType kQTypes[] = {GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::Q5_0,
                                       GgmlType::Q5_1, GgmlType::Q8_0, GgmlType::IQ4_NL};

// A finite binary16 scale: mostly of a model's magnitude and either sign, with zeros, subnormals
// and any finite value mixed in.
inline uint16_t random_scale(std::mt19937& rng) {
  const uint32_t kind = rng() % 10;
  const uint16_t sign = (rng() & 1) ? 0x8000 : 0;
  if (kind == 0) return sign;                                           // +-0
  if (kind == 1) return static_cast<uint16_t>(sign | (1 + rng() % 0x3FF));  // subnormal
  if (kind == 2) {
    uint16_t bits;
    do bits = static_cast<uint16_t>(rng()); while (((bits >> 10) & 0x1F) == 0x1F);
    return bits;  // any finite value, up to 65504
  }
  const uint32_t exp = 5 + rng() % 16;  // 2^-10 .. 2^5
  return static_cast<uint16_t>(sign | (exp << 10) | (rng() & 0x3FF));
}

// `rows` rows of random blocks of type t at byte `offset` into the returned buffer.
inline std::vector<uint8_t> random_rows(GgmlType t, int64_t rows, int64_t cols, size_t offset, std::mt19937& rng) {
  const size_t row_bytes = ggml_codec(t).row_bytes(cols);
  const size_t block_bytes = ggml_type_size(t);
  std::vector<uint8_t> buf(offset + static_cast<size_t>(rows) * row_bytes);
  for (auto& b : buf) b = static_cast<uint8_t>(rng());
  const bool has_min = t == GgmlType::Q4_1 || t == GgmlType::Q5_1;
  for (size_t p = offset; p < buf.size(); p += block_bytes) {
    const uint16_t d = random_scale(rng);
    std::memcpy(&buf[p], &d, 2);
    if (has_min) {
      const uint16_t m = random_scale(rng);
      std::memcpy(&buf[p + 2], &m, 2);
    }
  }
  return buf;
}

inline std::vector<float> random_activations(int64_t n, std::mt19937& rng) {
  std::normal_distribution<float> dist(0.0f, 1.0f);
  std::vector<float> x(static_cast<size_t>(n));
  for (auto& v : x) v = dist(rng);
  return x;
}

// Per (token, row), indexed [t * rows + r]: the exact product of the dequantized weights (every
// weight is a float, so a double sum of their products is exact to far below float rounding) and
// sum_c |W[r, c] * x[t, c]|, the scale of the rounding that a float32 dot product may be off by.
struct Exact {
  std::vector<double> value, abs_sum;
};
inline Exact exact_products(GgmlType t, const uint8_t* w, int64_t rows, int64_t cols, const float* x,
                            int64_t tokens) {
  const GgmlCodec& codec = ggml_codec(t);
  std::vector<float> row(static_cast<size_t>(cols));
  Exact out{std::vector<double>(static_cast<size_t>(rows * tokens)), std::vector<double>(static_cast<size_t>(rows * tokens))};
  for (int64_t r = 0; r < rows; ++r) {
    codec.dequantize_row(w + r * codec.row_bytes(cols), cols, row.data());
    for (int64_t k = 0; k < tokens; ++k) {
      double s = 0, a = 0;
      for (int64_t c = 0; c < cols; ++c) {
        const double p = static_cast<double>(row[static_cast<size_t>(c)]) * x[k * cols + c];
        s += p;
        a += std::fabs(p);
      }
      out.value[static_cast<size_t>(k * rows + r)] = s;
      out.abs_sum[static_cast<size_t>(k * rows + r)] = a;
    }
  }
  return out;
}

// |got - ref| <= 1e-6 * sum |w * x| plus the oracle's own rounding: when one block dominates a row,
// the oracle's column-order float sum drifts by more than that bound from the exact value, and the
// kernels (which sum in vector lanes, so shorter chains) are held to the exact value instead.
inline double tolerance(const Exact& e, size_t i, float ref) {
  return 1e-6 * e.abs_sum[i] + std::fabs(static_cast<double>(ref) - e.value[i]) + 1e-30;
}
inline double exact_tolerance(const Exact& e, size_t i) { return 1e-6 * e.abs_sum[i] + 1e-30; }

}  // namespace strata::kernels::test
#endif  // STRATA_GGML_MATMUL_Q_TEST_HELPERS_

HWY_BEFORE_NAMESPACE();
namespace strata::kernels {
namespace HWY_NAMESPACE {

// y of `rows` rows (a sub-range starting at row r0 of a larger output) and `tokens` tokens, within
// 1e-6 of the sum of |w * x| of the oracle; every other y entry left untouched.
// x_shift: activations that many floats past a 64-byte boundary (the kernels copy unaligned ones).
void CheckShape(GgmlType t, int64_t rows, int64_t cols, int64_t tokens, size_t offset, std::mt19937& rng,
                size_t x_shift = 0) {
  const std::vector<uint8_t> buf = test::random_rows(t, rows, cols, offset, rng);
  const uint8_t* w = buf.data() + offset;
  const std::vector<float> xs = test::random_activations(tokens * cols, rng);
  std::vector<float> x_buf(xs.size() + 32);
  const size_t skip = (64 - reinterpret_cast<uintptr_t>(x_buf.data()) % 64) % 64 / sizeof(float) + x_shift;
  const std::span<float> x(x_buf.data() + skip, xs.size());
  std::copy(xs.begin(), xs.end(), x.begin());
  const int64_t r0 = 2, y_stride = rows + 5;
  constexpr float kSentinel = 12345.0f;
  std::vector<float> y(static_cast<size_t>(tokens * y_stride), kSentinel);
  std::vector<float> ref(static_cast<size_t>(tokens * rows));
  ASSERT_TRUE(MatmulQBlocks(t, w, rows, cols, x.data(), tokens, y.data() + r0, y_stride));
  ggml_matmul_reference(t, w, rows, cols, x.data(), tokens, ref.data(), rows);
  const test::Exact exact = test::exact_products(t, w, rows, cols, x.data(), tokens);
  for (int64_t k = 0; k < tokens; ++k) {
    for (int64_t r = 0; r < y_stride; ++r) {
      const float got = y[static_cast<size_t>(k * y_stride + r)];
      if (r < r0 || r >= r0 + rows) {
        ASSERT_EQ(got, kSentinel) << ggml_type_name(t) << " wrote outside its rows: token " << k << " y " << r;
        continue;
      }
      const size_t i = static_cast<size_t>(k * rows + (r - r0));
      ASSERT_LE(std::fabs(static_cast<double>(got) - ref[i]), test::tolerance(exact, i, ref[i]))
          << ggml_type_name(t) << " rows " << rows << " cols " << cols << " tokens " << tokens << " offset "
          << offset << ": token " << k << " row " << r - r0 << " got " << got << " want " << ref[i];
      ASSERT_LE(std::fabs(static_cast<double>(got) - exact.value[i]), test::exact_tolerance(exact, i))
          << ggml_type_name(t) << " rows " << rows << " cols " << cols << " tokens " << tokens << " offset "
          << offset << ": token " << k << " row " << r - r0 << " got " << got << " exact " << exact.value[i];
    }
  }
}

void TestMatchesReference() {
  std::mt19937 rng(7);
  for (GgmlType t : test::kQTypes) {
    for (int64_t cols : {32, 96, 2048}) {
      for (int64_t rows : {1, 3, 17}) {
        for (int64_t tokens = 1; tokens <= 16; ++tokens) CheckShape(t, rows, cols, tokens, 1, rng, tokens % 2);
        CheckShape(t, rows, cols, 37, 0, rng, 3);
      }
    }
  }
}

// Every byte offset of the weights within a vector's width, every tile shape's row remainder, and
// row counts that go as four streams with a tail.
void TestAlignmentsAndRowCounts() {
  std::mt19937 rng(8);
  for (GgmlType t : test::kQTypes)
    for (size_t offset = 0; offset < 8; ++offset)
      for (int64_t rows : {1, 2, 3, 4, 5, 6, 7, 8, 9, 16, 35})
        CheckShape(t, rows, 160, 1 + static_cast<int64_t>(offset) % 9, offset, rng, offset % 4);
}

// Every weight decodes to the float the dequantizer gives: with one-hot activations y is W's
// column itself, exactly, whatever the order of additions (the other products are zeros).
void TestWeightsBitExact() {
  std::mt19937 rng(9);
  const int64_t rows = 5, cols = 64;
  for (GgmlType t : test::kQTypes) {
    const std::vector<uint8_t> buf = test::random_rows(t, rows, cols, 3, rng);
    const uint8_t* w = buf.data() + 3;
    std::vector<float> x(static_cast<size_t>(cols * cols), 0.0f);
    for (int64_t c = 0; c < cols; ++c) x[static_cast<size_t>(c * cols + c)] = 1.0f;
    std::vector<float> y(static_cast<size_t>(cols * rows));
    ASSERT_TRUE(MatmulQBlocks(t, w, rows, cols, x.data(), cols, y.data(), rows));
    const GgmlCodec& codec = ggml_codec(t);
    std::vector<float> row(static_cast<size_t>(cols));
    for (int64_t r = 0; r < rows; ++r) {
      codec.dequantize_row(w + r * codec.row_bytes(cols), cols, row.data());
      for (int64_t c = 0; c < cols; ++c) {
        const float got = y[static_cast<size_t>(c * rows + r)];
        // 0 * x sums to +0 whatever the sign of the weight's zero; every other value must match.
        if (row[static_cast<size_t>(c)] == 0.0f) {
          ASSERT_EQ(got, 0.0f) << ggml_type_name(t) << " row " << r << " col " << c;
        } else {
          ASSERT_EQ(got, row[static_cast<size_t>(c)]) << ggml_type_name(t) << " row " << r << " col " << c;
        }
      }
    }
  }
}

void TestOtherTypesDeclined() {
  float x[32] = {}, y[1] = {};
  uint8_t w[64] = {};
  EXPECT_FALSE(MatmulQBlocks(GgmlType::Q4_K, w, 1, 32, x, 1, y, 1));
  EXPECT_FALSE(MatmulQBlocks(GgmlType::F32, w, 1, 32, x, 1, y, 1));
  EXPECT_FALSE(MatmulQBlocks(GgmlType::Q8_1, w, 1, 32, x, 1, y, 1));
}

}  // namespace HWY_NAMESPACE
}  // namespace strata::kernels
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace strata::kernels {
HWY_BEFORE_TEST(GgmlMatmulQTest);
HWY_EXPORT_AND_TEST_P(GgmlMatmulQTest, TestMatchesReference);
HWY_EXPORT_AND_TEST_P(GgmlMatmulQTest, TestAlignmentsAndRowCounts);
HWY_EXPORT_AND_TEST_P(GgmlMatmulQTest, TestWeightsBitExact);
HWY_EXPORT_AND_TEST_P(GgmlMatmulQTest, TestOtherTypesDeclined);

TEST(GgmlMatmulQ, SupportedTypes) {
  for (GgmlType t : test::kQTypes) EXPECT_TRUE(ggml_matmul_supported(t)) << ggml_type_name(t);
  for (GgmlType t : {GgmlType::F32, GgmlType::BF16, GgmlType::IQ4_XS, GgmlType::Q8_1})
    EXPECT_FALSE(ggml_matmul_supported(t)) << ggml_type_name(t);
}

TEST(GgmlMatmulQ, DispatchedEntryMatchesReference) {
  std::mt19937 rng(10);
  const int64_t rows = 19, cols = 512, tokens = 5;
  for (GgmlType t : test::kQTypes) {
    const std::vector<uint8_t> buf = test::random_rows(t, rows, cols, 1, rng);
    const std::vector<float> x = test::random_activations(tokens * cols, rng);
    std::vector<float> y(static_cast<size_t>(tokens * rows)), ref(y.size());
    ggml_matmul(t, buf.data() + 1, rows, cols, x.data(), tokens, y.data(), rows);
    ggml_matmul_reference(t, buf.data() + 1, rows, cols, x.data(), tokens, ref.data(), rows);
    const test::Exact exact = test::exact_products(t, buf.data() + 1, rows, cols, x.data(), tokens);
    for (size_t i = 0; i < y.size(); ++i)
      ASSERT_LE(std::fabs(static_cast<double>(y[i]) - ref[i]), test::tolerance(exact, i, ref[i]))
          << ggml_type_name(t) << " " << i;
  }
}

TEST(GgmlMatmulQ, EntryRejectsBadArguments) {
  std::vector<uint8_t> w(4096);
  std::vector<float> x(1024), y(64);
  // Types without a kernel in either family.
  EXPECT_THROW(ggml_matmul(GgmlType::IQ4_XS, w.data(), 1, 256, x.data(), 1, y.data(), 1), Error);
  EXPECT_THROW(ggml_matmul(GgmlType::BF16, w.data(), 1, 256, x.data(), 1, y.data(), 1), Error);
  // cols not a whole number of blocks.
  EXPECT_THROW(ggml_matmul(GgmlType::Q4_0, w.data(), 1, 48, x.data(), 1, y.data(), 1), Error);
  EXPECT_THROW(ggml_matmul(GgmlType::Q8_0, w.data(), 1, 33, x.data(), 1, y.data(), 1), Error);
  // Non-positive sizes, and a y_stride shorter than the rows.
  EXPECT_THROW(ggml_matmul(GgmlType::Q4_0, w.data(), 0, 32, x.data(), 1, y.data(), 1), Error);
  EXPECT_THROW(ggml_matmul(GgmlType::Q4_0, w.data(), -1, 32, x.data(), 1, y.data(), 1), Error);
  EXPECT_THROW(ggml_matmul(GgmlType::Q4_0, w.data(), 1, 0, x.data(), 1, y.data(), 1), Error);
  EXPECT_THROW(ggml_matmul(GgmlType::Q4_0, w.data(), 1, 32, x.data(), 0, y.data(), 1), Error);
  EXPECT_THROW(ggml_matmul(GgmlType::Q4_0, w.data(), 1, 32, x.data(), -3, y.data(), 1), Error);
  EXPECT_THROW(ggml_matmul(GgmlType::Q4_0, w.data(), 4, 32, x.data(), 1, y.data(), 3), Error);
  try {
    ggml_matmul(GgmlType::IQ4_XS, w.data(), 1, 256, x.data(), 1, y.data(), 1);
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("IQ4_XS"), std::string::npos) << e.what();
  }
}
}  // namespace strata::kernels
#endif

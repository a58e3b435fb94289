// The fast Walsh-Hadamard transform: every Highway target against the scalar loop (bit for bit),
// the transform against an explicit Hadamard matrix product in double, and the randomized rotation
// against R = H D / sqrt(n) built entry by entry: orthogonal, inverted by unrotate(), dot products kept.
#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "kernels/hadamard_test.cc"
#include <hwy/foreach_target.h>  // IWYU pragma: keep
#include <hwy/highway.h>
#include <hwy/tests/hwy_gtest.h>

#include <bit>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "kernels/cpu/hadamard-inl.h"
#include "strata/core/error.hpp"
#include "strata/kernels/hadamard.hpp"
#include "test_util.hpp"

#ifndef STRATA_HADAMARD_TEST_SHARED_
#define STRATA_HADAMARD_TEST_SHARED_
namespace strata::hadamard_test {
// Sylvester's matrix entry by its definition: (-1)^popcount(i & j).
inline double hadamard_entry(int64_t i, int64_t j) { return std::popcount(static_cast<uint64_t>(i & j)) % 2 ? -1.0 : 1.0; }
}  // namespace strata::hadamard_test
#endif

// Outside namespace strata, where strata::testing would shadow GoogleTest's ::testing in the macros.
HWY_BEFORE_NAMESPACE();
namespace hadamard_simd {
namespace HWY_NAMESPACE {
using strata::HWY_NAMESPACE::FwhtRows;
namespace kernels = strata::kernels;

// Every length from 1 to 2048, several rows with a stride past the length, with and without the
// sign vectors before / after: the SIMD rows equal the scalar loop's bit for bit.
void TestFwhtMatchesScalar() {
  for (int64_t n = 1; n <= 2048; n *= 2) {
    const int64_t rows = 5, stride = n + 3;
    const auto x = strata::testing::gaussian_floats(static_cast<size_t>(rows * stride), static_cast<uint32_t>(n));
    const auto pre = strata::testing::gaussian_floats(static_cast<size_t>(n), 1), post = strata::testing::gaussian_floats(static_cast<size_t>(n), 2);
    for (int mode = 0; mode < 3; ++mode) {
      const float* p = mode == 1 ? pre.data() : nullptr;
      const float* q = mode == 2 ? post.data() : nullptr;
      const float scale = mode == 0 ? 1.0f : 0.125f;
      std::vector<float> simd = x, ref = x;
      FwhtRows(simd.data(), rows, n, stride, p, q, scale);
      for (int64_t r = 0; r < rows; ++r) {
        float* row = ref.data() + r * stride;
        if (p)
          for (int64_t i = 0; i < n; ++i) row[i] *= p[i];
        if (q) {
          kernels::fwht_reference(row, 1, n, n, 1.0f);
          for (int64_t i = 0; i < n; ++i) row[i] = row[i] * q[i] * scale;
        } else {
          kernels::fwht_reference(row, 1, n, n, scale);
        }
      }
      for (size_t i = 0; i < x.size(); ++i)
        ASSERT_EQ(std::bit_cast<uint32_t>(simd[i]), std::bit_cast<uint32_t>(ref[i]))
            << "n " << n << " mode " << mode << " at " << i;
    }
  }
}

}  // namespace HWY_NAMESPACE
}  // namespace hadamard_simd
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace hadamard_simd {
HWY_BEFORE_TEST(HadamardTest);
HWY_EXPORT_AND_TEST_P(HadamardTest, TestFwhtMatchesScalar);
}  // namespace hadamard_simd

namespace strata {

using testing::gaussian_floats;
using hadamard_test::hadamard_entry;

// fwht() against y = H x computed as a dense matrix product in double.
TEST(Hadamard, FwhtEqualsExplicitMatrixProduct) {
  for (int64_t n : {1, 2, 4, 8, 16, 32, 64, 128, 256, 512}) {
    const int64_t rows = 3;
    const auto x = gaussian_floats(static_cast<size_t>(rows * n), 7);
    std::vector<float> y = x;
    kernels::fwht(y.data(), rows, n, n, 0.5f);
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t i = 0; i < n; ++i) {
        double s = 0, mag = 0;
        for (int64_t j = 0; j < n; ++j) {
          s += hadamard_entry(i, j) * x[static_cast<size_t>(r * n + j)];
          mag += std::fabs(x[static_cast<size_t>(r * n + j)]);
        }
        EXPECT_NEAR(y[static_cast<size_t>(r * n + i)], 0.5 * s, 0.5 * mag * 4e-7 * std::log2(2.0 * n))
            << "n " << n << " row " << r << " i " << i;
      }
  }
}

// The rotation is R = H D / sqrt(n) entry by entry; unrotate() applies R^T.
TEST(Hadamard, RotationEqualsExplicitMatrix) {
  const int64_t n = 64;
  const kernels::HadamardRotation rot(n, 42);
  ASSERT_EQ(rot.size(), n);
  const auto signs = rot.signs();
  int negatives = 0;
  for (float s : signs) {
    ASSERT_TRUE(s == 1.0f || s == -1.0f);
    negatives += s < 0;
  }
  EXPECT_GT(negatives, 10);  // 64 fair coin flips: fewer than 11 heads has probability below 1e-7
  EXPECT_LT(negatives, 54);
  const auto x = gaussian_floats(static_cast<size_t>(n), 9);
  std::vector<float> y = x, z = x;
  rot.rotate(y.data(), 1, n);
  rot.unrotate(z.data(), 1, n);
  const double inv = 1.0 / std::sqrt(static_cast<double>(n));
  for (int64_t i = 0; i < n; ++i) {
    double ry = 0, rtz = 0;
    for (int64_t j = 0; j < n; ++j) {
      ry += hadamard_entry(i, j) * signs[static_cast<size_t>(j)] * inv * x[static_cast<size_t>(j)];  // R[i][j] x[j]
      rtz += hadamard_entry(j, i) * signs[static_cast<size_t>(i)] * inv * x[static_cast<size_t>(j)];  // R[j][i] x[j]
    }
    EXPECT_NEAR(y[static_cast<size_t>(i)], ry, 1e-5);
    EXPECT_NEAR(z[static_cast<size_t>(i)], rtz, 1e-5);
  }
}

// (Rq).(Rk) = q.k, unrotate(rotate(x)) = x, and a one-hot outlier is spread evenly.
TEST(Hadamard, RotationKeepsDotProductsAndInverts) {
  for (int64_t n : {1, 2, 8, 64, 128, 1024}) {
    const kernels::HadamardRotation rot(n, 5);
    const int64_t rows = 4;
    const auto q = gaussian_floats(static_cast<size_t>(rows * n), 1), k = gaussian_floats(static_cast<size_t>(rows * n), 2);
    std::vector<float> rq = q, rk = k;
    rot.rotate(rq.data(), rows, n);
    rot.rotate(rk.data(), rows, n);
    for (int64_t r = 0; r < rows; ++r) {
      double before = 0, after = 0, mag = 0;
      for (int64_t i = 0; i < n; ++i) {
        const size_t at = static_cast<size_t>(r * n + i);
        before += static_cast<double>(q[at]) * k[at];
        after += static_cast<double>(rq[at]) * rk[at];
        mag += std::fabs(static_cast<double>(q[at]) * k[at]);
      }
      EXPECT_NEAR(after, before, 1e-5 * (mag + 1)) << "n " << n;
    }
    std::vector<float> back = rq;
    rot.unrotate(back.data(), rows, n);
    for (size_t i = 0; i < q.size(); ++i) EXPECT_NEAR(back[i], q[i], 1e-5f * (1 + std::fabs(q[i])));
  }
  std::vector<float> spike(128, 0.0f);
  spike[17] = 100.0f;
  kernels::HadamardRotation(128, 3).rotate(spike.data(), 1, 128);
  for (float v : spike) EXPECT_NEAR(std::fabs(v), 100.0 / std::sqrt(128.0), 1e-4);
}

TEST(Hadamard, SignsDependOnTheSeedOnly) {
  const kernels::HadamardRotation a(256, 11), b(256, 11), c(256, 12);
  EXPECT_TRUE(std::equal(a.signs().begin(), a.signs().end(), b.signs().begin()));
  EXPECT_FALSE(std::equal(a.signs().begin(), a.signs().end(), c.signs().begin()));
  // The first 64 signs are the bits of splitmix64's first output for seed 11, low bit first.
  uint64_t z = 11 + 0x9E3779B97F4A7C15ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  z ^= z >> 31;
  for (int i = 0; i < 64; ++i) EXPECT_EQ(a.signs()[static_cast<size_t>(i)], (z >> i) & 1 ? -1.0f : 1.0f) << i;
}

TEST(Hadamard, RefusesBadLengths) {
  std::vector<float> x(96);
  EXPECT_THROW(kernels::fwht(x.data(), 1, 96, 96), Error);
  EXPECT_THROW(kernels::fwht(x.data(), 1, 0, 1), Error);
  EXPECT_THROW(kernels::fwht(x.data(), 2, 64, 32), Error);
  EXPECT_THROW(kernels::HadamardRotation(48, 1), Error);
  EXPECT_FALSE(kernels::is_power_of_two(0));
  EXPECT_TRUE(kernels::is_power_of_two(1));
  EXPECT_TRUE(kernels::is_power_of_two(4096));
  try {
    kernels::HadamardRotation(100, 1);
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("n = 100"), std::string::npos) << e.what();
  }
}

}  // namespace strata
#endif

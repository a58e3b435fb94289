// Randomized SVD: error against the optimal rank-r error (known exactly from matrices built with a
// chosen spectrum), determinism for a seed, shapes, and option validation.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <limits>

#include "strata/core/error.hpp"
#include "strata/linalg/svd.hpp"

namespace strata::linalg {
namespace {

using ::testing::HasSubstr;

template <class T>
Vector<T> inverse_sqrt_spectrum(int64_t k) {
  Vector<T> s(k);
  for (int64_t i = 0; i < k; ++i) s(i) = static_cast<T>(1.0 / std::sqrt(static_cast<double>(i + 1)));
  return s;
}

// sqrt(sum of s_i^2 for i >= r): the Eckart-Young error of the best rank-r approximation.
template <class T>
double optimal_error(const Vector<T>& s, int64_t r) {
  return std::sqrt(s.tail(s.size() - r).template cast<double>().squaredNorm());
}

template <class T>
double approximation_error(const Matrix<T>& a, const SvdResult<T>& r) {
  const Matrix<T> rec = r.U * r.S.asDiagonal() * r.V.transpose();
  return static_cast<double>((a - rec).norm());
}

template <class T>
double orthonormality_error(const Matrix<T>& q) {
  const Matrix<double> qd = q.template cast<double>();
  return (qd.transpose() * qd - Matrix<double>::Identity(q.cols(), q.cols())).cwiseAbs().maxCoeff();
}

TEST(RandomizedSvd, Rank64Of4096SquareIsWithinOnePercentOfOptimal) {
  // The acceptance case: float, 4096 x 4096, s_i = 1/sqrt(i+1) (a slowly decaying spectrum, the hard
  // case for randomized methods), r = 64, p = 10, q = 2.
  const int64_t n = 4096, r = 64;
  const Vector<float> s = inverse_sqrt_spectrum<float>(n);
  const Matrix<float> a = matrix_with_singular_values<float>(n, n, s, 2024);
  const SvdResult<float> res = randomized_svd(a, {.rank = r, .oversampling = 10, .power_iterations = 2, .seed = 1});
  ASSERT_EQ(res.U.rows(), n);
  ASSERT_EQ(res.U.cols(), r);
  ASSERT_EQ(res.S.size(), r);
  ASSERT_EQ(res.V.rows(), n);
  ASSERT_EQ(res.V.cols(), r);
  const double ratio = approximation_error(a, res) / optimal_error(s, r);
  RecordProperty("error_ratio", std::to_string(ratio));
  EXPECT_LE(ratio, 1.01);
  EXPECT_GE(ratio, 1.0 - 1e-4);  // nothing beats Eckart-Young, up to float rounding
  EXPECT_LT(orthonormality_error(res.U), 1e-5);
  EXPECT_LT(orthonormality_error(res.V), 1e-5);
  // The leading singular values themselves are close to the true ones.
  for (int64_t i = 0; i < 8; ++i) EXPECT_NEAR(res.S(i), s(i), 1e-3 * s(0)) << "at " << i;
}

TEST(RandomizedSvd, SameSeedGivesIdenticalResults) {
  const Vector<float> s = inverse_sqrt_spectrum<float>(300);
  const Matrix<float> a = matrix_with_singular_values<float>(500, 300, s, 3);
  const RandomizedSvdOptions opt{.rank = 20, .seed = 42};
  const SvdResult<float> x = randomized_svd(a, opt);
  const SvdResult<float> y = randomized_svd(a, opt);
  EXPECT_EQ(x.U, y.U);
  EXPECT_EQ(x.S, y.S);
  EXPECT_EQ(x.V, y.V);
  RandomizedSvdOptions other = opt;
  other.seed = 43;
  const SvdResult<float> z = randomized_svd(a, other);
  EXPECT_NE(x.U, z.U);
}

template <class T>
class RandomizedSvdTyped : public ::testing::Test {};
using Scalars = ::testing::Types<float, double>;
TYPED_TEST_SUITE(RandomizedSvdTyped, Scalars);

TYPED_TEST(RandomizedSvdTyped, TallAndWideShapes) {
  using T = TypeParam;
  for (const auto& [m, n] : {std::pair<int64_t, int64_t>{1000, 300}, {300, 1000}}) {
    SCOPED_TRACE(::testing::Message() << m << " x " << n);
    const Vector<T> s = inverse_sqrt_spectrum<T>(std::min(m, n));
    const Matrix<T> a = matrix_with_singular_values<T>(m, n, s, 5);
    const SvdResult<T> res = randomized_svd(a, {.rank = 24});
    ASSERT_EQ(res.U.rows(), m);
    ASSERT_EQ(res.V.rows(), n);
    EXPECT_LE(approximation_error(a, res) / optimal_error(s, 24), 1.01);
    EXPECT_LT(orthonormality_error(res.U), 1e-5);
    EXPECT_LT(orthonormality_error(res.V), 1e-5);
  }
}

TYPED_TEST(RandomizedSvdTyped, FullRankSketchIsExact) {
  using T = TypeParam;
  // r + p >= min(m, n): the sketch spans the whole column space and the result is an exact SVD.
  const Vector<T> s = inverse_sqrt_spectrum<T>(40);
  const Matrix<T> a = matrix_with_singular_values<T>(90, 40, s, 6);
  const SvdResult<T> res = randomized_svd(a, {.rank = 40, .oversampling = 10, .power_iterations = 0});
  const double tol = std::is_same_v<T, float> ? 1e-5 : 1e-12;
  EXPECT_LT(approximation_error(a, res) / static_cast<double>(a.norm()), tol);
  for (int64_t i = 0; i < 40; ++i) EXPECT_NEAR(res.S(i), s(i), tol) << "at " << i;
}

TYPED_TEST(RandomizedSvdTyped, PowerIterationsImproveAccuracy) {
  using T = TypeParam;
  const Vector<T> s = inverse_sqrt_spectrum<T>(400);
  const Matrix<T> a = matrix_with_singular_values<T>(400, 400, s, 8);
  const double best = optimal_error(s, 16);
  const double q0 = approximation_error(a, randomized_svd(a, {.rank = 16, .power_iterations = 0}));
  const double q2 = approximation_error(a, randomized_svd(a, {.rank = 16, .power_iterations = 2}));
  EXPECT_LT(q2, q0);
  EXPECT_LE(q2 / best, 1.01);
}

TEST(RandomizedSvd, ZeroAndRankOneInputs) {
  // The sketch of a zero or rank-one matrix is rank-deficient; QR must still give orthonormal bases.
  const Matrix<double> zero = Matrix<double>::Zero(50, 30);
  const SvdResult<double> z = randomized_svd(zero, {.rank = 5});
  EXPECT_EQ(z.S.cwiseAbs().maxCoeff(), 0.0);
  EXPECT_LT(orthonormality_error(z.U), 1e-12);
  EXPECT_LT(orthonormality_error(z.V), 1e-12);

  const Matrix<double> one = Vector<double>::LinSpaced(50, 1, 2) * Vector<double>::LinSpaced(30, -1, 1).transpose();
  const SvdResult<double> o = randomized_svd(one, {.rank = 3});
  EXPECT_LT(approximation_error(one, o) / one.norm(), 1e-12);
  EXPECT_NEAR(o.S(0), one.norm(), 1e-12 * one.norm());
  EXPECT_LT(o.S(1), 1e-12 * one.norm());
  EXPECT_LT(orthonormality_error(o.U), 1e-12);
}

template <class Fn>
std::string error_of(Fn&& fn) {
  try {
    fn();
  } catch (const Error& e) {
    return e.what();
  }
  return "(no strata::Error thrown)";
}

TEST(RandomizedSvdBadInput, OptionsAndValues) {
  Matrix<float> a = Matrix<float>::Ones(30, 20);
  EXPECT_THAT(error_of([&] { randomized_svd(a, {}); }),
              HasSubstr("randomized_svd: rank must be in [1, min(m, n) = 20]"));
  EXPECT_THAT(error_of([&] { randomized_svd(a, {.rank = 21}); }), HasSubstr("got 21"));
  EXPECT_THAT(error_of([&] { randomized_svd(a, {.rank = 5, .oversampling = -1}); }),
              HasSubstr("oversampling must be >= 0"));
  EXPECT_THAT(error_of([&] { randomized_svd(a, {.rank = 5, .power_iterations = -2}); }),
              HasSubstr("power_iterations must be >= 0"));
  // Oversampling far beyond the matrix is clamped, not an overflow.
  EXPECT_NO_THROW(randomized_svd(a, {.rank = 5, .oversampling = std::numeric_limits<int64_t>::max()}));

  Matrix<float> huge = Matrix<float>::Constant(30, 20, std::numeric_limits<float>::max() / 4);
  EXPECT_THAT(error_of([&] { randomized_svd(huge, {.rank = 5}); }),
              HasSubstr("randomized_svd: the products with the input overflowed"));

  a(29, 19) = std::numeric_limits<float>::quiet_NaN();
  EXPECT_THAT(error_of([&] { randomized_svd(a, {.rank = 5}); }),
              HasSubstr("randomized_svd: input has a non-finite value (nan) at (29, 19)"));
  EXPECT_THAT(error_of([] { randomized_svd(Matrix<double>(0, 0), {.rank = 1}); }),
              HasSubstr("randomized_svd: input is empty (0 x 0)"));
}

}  // namespace
}  // namespace strata::linalg

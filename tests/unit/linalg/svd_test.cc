// Thin SVD through LAPACK: accuracy on random and ill-conditioned inputs of every shape, both drivers,
// the gesdd -> gesvd fallback (through SvdOptions::simulate_gesdd_failure), and input validation.
#include "strata/linalg/svd.hpp"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <random>

#include "strata/core/error.hpp"

namespace strata::linalg {
namespace {

using ::testing::AllOf;
using ::testing::HasSubstr;

template <class T>
Matrix<T> gaussian(int64_t rows, int64_t cols, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> normal;
  Matrix<T> m(rows, cols);
  for (int64_t j = 0; j < cols; ++j)
    for (int64_t i = 0; i < rows; ++i) m(i, j) = static_cast<T>(normal(rng));
  return m;
}

// Singular values spaced evenly in log scale from 1 down to `smallest`.
template <class T>
Vector<T> log_spaced(int64_t k, double smallest) {
  Vector<T> s(k);
  for (int64_t i = 0; i < k; ++i)
    s(i) = static_cast<T>(k == 1 ? 1.0 : std::pow(smallest, static_cast<double>(i) / static_cast<double>(k - 1)));
  return s;
}

template <class T>
double tolerance() {
  return std::is_same_v<T, float> ? 1e-5 : 1e-12;
}

template <class T>
double relative_residual(const Matrix<T>& a, const SvdResult<T>& r) {
  const Matrix<double> ad = a.template cast<double>();
  const Matrix<double> rec =
      r.U.template cast<double>() * r.S.template cast<double>().asDiagonal() * r.V.template cast<double>().transpose();
  return (ad - rec).norm() / ad.norm();
}

template <class T>
double orthonormality_error(const Matrix<T>& q) {
  const Matrix<double> qd = q.template cast<double>();
  return (qd.transpose() * qd - Matrix<double>::Identity(q.cols(), q.cols())).cwiseAbs().maxCoeff();
}

// Every property svd() promises, on one input.
template <class T>
void expect_valid_svd(const Matrix<T>& a, const SvdResult<T>& r) {
  const int64_t k = std::min(a.rows(), a.cols());
  ASSERT_EQ(r.U.rows(), a.rows());
  ASSERT_EQ(r.U.cols(), k);
  ASSERT_EQ(r.S.size(), k);
  ASSERT_EQ(r.V.rows(), a.cols());
  ASSERT_EQ(r.V.cols(), k);
  EXPECT_LT(relative_residual(a, r), tolerance<T>());
  EXPECT_LT(orthonormality_error(r.U), tolerance<T>());
  EXPECT_LT(orthonormality_error(r.V), tolerance<T>());
  for (int64_t i = 0; i < k; ++i) {
    EXPECT_GE(r.S(i), T(0)) << "at " << i;
    if (i > 0) EXPECT_LE(r.S(i), r.S(i - 1)) << "at " << i;
  }
}

template <class T>
class SvdTest : public ::testing::Test {};
using Scalars = ::testing::Types<float, double>;
TYPED_TEST_SUITE(SvdTest, Scalars);

TYPED_TEST(SvdTest, RandomMatricesOfEveryShape) {
  using T = TypeParam;
  for (const auto& [m, n] : {std::pair<int64_t, int64_t>{150, 90}, {90, 150}, {64, 64}, {1, 7}, {7, 1}, {1, 1}}) {
    SCOPED_TRACE(::testing::Message() << m << " x " << n);
    const Matrix<T> a = gaussian<T>(m, n, 100 + static_cast<uint64_t>(m * n));
    const SvdResult<T> r = svd(a);
    EXPECT_EQ(r.driver_used, SvdDriver::gesdd);
    expect_valid_svd(a, r);
  }
}

TYPED_TEST(SvdTest, IllConditionedSpectrumIsRecovered) {
  using T = TypeParam;
  // Singular values from 1 down to 1e-6, tall and wide: the reconstruction must stay accurate and each
  // singular value must be found to within rounding of the largest one.
  for (const auto& [m, n] : {std::pair<int64_t, int64_t>{200, 120}, {120, 200}, {128, 128}}) {
    SCOPED_TRACE(::testing::Message() << m << " x " << n);
    const int64_t k = std::min(m, n);
    const Vector<T> s = log_spaced<T>(k, 1e-6);
    const Matrix<T> a = matrix_with_singular_values<T>(m, n, s, 7, 8);
    const SvdResult<T> r = svd(a);
    expect_valid_svd(a, r);
    for (int64_t i = 0; i < k; ++i) EXPECT_NEAR(r.S(i), s(i), tolerance<T>()) << "at " << i;
  }
}

TYPED_TEST(SvdTest, RankDeficientAndZeroMatrices) {
  using T = TypeParam;
  // Rank 5 in a 60 x 40 matrix: 35 singular values are zero up to rounding.
  const Matrix<T> a = gaussian<T>(60, 5, 1) * gaussian<T>(5, 40, 2);
  const SvdResult<T> r = svd(a);
  expect_valid_svd(a, r);
  EXPECT_LT(r.S(5) / r.S(0), 10 * tolerance<T>());

  const Matrix<T> zero = Matrix<T>::Zero(20, 12);
  const SvdResult<T> rz = svd(zero);
  EXPECT_EQ(rz.S.cwiseAbs().maxCoeff(), T(0));
  EXPECT_LT(orthonormality_error(rz.U), tolerance<T>());
  EXPECT_LT(orthonormality_error(rz.V), tolerance<T>());
}

TYPED_TEST(SvdTest, GesvdDriverExplicitly) {
  using T = TypeParam;
  for (const auto& [m, n] : {std::pair<int64_t, int64_t>{120, 70}, {70, 120}}) {
    const Matrix<T> a = matrix_with_singular_values<T>(m, n, log_spaced<T>(std::min(m, n), 1e-6), 3);
    const SvdResult<T> r = svd(a, {.driver = SvdDriver::gesvd});
    EXPECT_EQ(r.driver_used, SvdDriver::gesvd);
    expect_valid_svd(a, r);
    const SvdResult<T> d = svd(a, {.driver = SvdDriver::gesdd});
    EXPECT_EQ(d.driver_used, SvdDriver::gesdd);
    EXPECT_LT((r.S - d.S).cwiseAbs().maxCoeff(), tolerance<T>());
  }
}

TYPED_TEST(SvdTest, AutomaticFallsBackToGesvdWhenGesddFails) {
  using T = TypeParam;
  const Matrix<T> a = matrix_with_singular_values<T>(150, 100, log_spaced<T>(100, 1e-6), 11);
  const SvdResult<T> reference = svd(a);
  ASSERT_EQ(reference.driver_used, SvdDriver::gesdd);

  const SvdResult<T> r = svd(a, {.driver = SvdDriver::automatic, .simulate_gesdd_failure = true});
  EXPECT_EQ(r.driver_used, SvdDriver::gesvd);
  expect_valid_svd(a, r);
  EXPECT_LT((r.S - reference.S).cwiseAbs().maxCoeff(), tolerance<T>());
}

TYPED_TEST(SvdTest, GesddOnlyReportsItsFailure) {
  using T = TypeParam;
  const Matrix<T> a = gaussian<T>(30, 20, 5);
  try {
    svd(a, {.driver = SvdDriver::gesdd, .simulate_gesdd_failure = true});
    FAIL() << "expected strata::Error";
  } catch (const Error& e) {
    EXPECT_THAT(e.what(), AllOf(HasSubstr("svd:"), HasSubstr("gesdd did not converge")));
  }
}

TEST(SvdDriverNames, AreStable) {
  EXPECT_EQ(to_string(SvdDriver::automatic), "automatic");
  EXPECT_EQ(to_string(SvdDriver::gesdd), "gesdd");
  EXPECT_EQ(to_string(SvdDriver::gesvd), "gesvd");
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

TEST(SvdBadInput, NonFiniteValuesAreNamedWithTheirPosition) {
  Matrix<float> a = gaussian<float>(10, 12, 1);
  a(3, 7) = std::numeric_limits<float>::quiet_NaN();
  EXPECT_THAT(error_of([&] { svd(a); }),
              AllOf(HasSubstr("svd: input has a non-finite value"), HasSubstr("at (3, 7)")));
  a(3, 7) = 0;
  a(9, 0) = -std::numeric_limits<float>::infinity();
  EXPECT_THAT(error_of([&] { svd(a); }), AllOf(HasSubstr("non-finite value (-inf)"), HasSubstr("at (9, 0)")));
  // Every driver validates before LAPACK sees the data.
  EXPECT_THAT(error_of([&] { svd(a, {.driver = SvdDriver::gesvd}); }), HasSubstr("svd: input has a non-finite"));

  Matrix<double> d = gaussian<double>(5, 5, 2);
  d(4, 4) = std::numeric_limits<double>::infinity();
  EXPECT_THAT(error_of([&] { svd(d); }), AllOf(HasSubstr("non-finite"), HasSubstr("at (4, 4)")));
}

TEST(SvdBadInput, EmptyMatrices) {
  EXPECT_THAT(error_of([] { svd(Matrix<float>(0, 5)); }), HasSubstr("svd: input is empty (0 x 5)"));
  EXPECT_THAT(error_of([] { svd(Matrix<double>(3, 0)); }), HasSubstr("svd: input is empty (3 x 0)"));
}

TEST(MatrixWithSingularValues, RejectsBadSpectra) {
  Vector<float> s(3);
  s << 1, -1, 0;
  EXPECT_THAT(error_of([&] { matrix_with_singular_values<float>(3, 4, s, 1); }), HasSubstr(">= 0"));
  EXPECT_THAT(error_of([&] { matrix_with_singular_values<float>(5, 4, s, 1); }), HasSubstr("need min(rows, cols) = 4"));
  EXPECT_THAT(error_of([&] { matrix_with_singular_values<float>(0, 4, s, 1); }), HasSubstr("non-empty"));
}

}  // namespace
}  // namespace strata::linalg

// Cholesky (with jitter), QR, eigh and triangular solves/inverses: residuals, structure of the results
// and input validation.
#include "strata/linalg/decompositions.hpp"

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

template <class T>
double tolerance() {
  return std::is_same_v<T, float> ? 1e-5 : 1e-12;
}

template <class T>
double relative_difference(const Matrix<T>& x, const Matrix<T>& y) {
  return (x.template cast<double>() - y.template cast<double>()).norm() / y.template cast<double>().norm();
}

template <class T>
double orthonormality_error(const Matrix<T>& q) {
  const Matrix<double> qd = q.template cast<double>();
  return (qd.transpose() * qd - Matrix<double>::Identity(q.cols(), q.cols())).cwiseAbs().maxCoeff();
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

template <class T>
class Decompositions : public ::testing::Test {};
using Scalars = ::testing::Types<float, double>;
TYPED_TEST_SUITE(Decompositions, Scalars);

// ---------------------------------------------------------------------------------------- Cholesky

TYPED_TEST(Decompositions, CholeskyOfPositiveDefiniteNeedsNoJitter) {
  using T = TypeParam;
  const int64_t n = 120;
  const Matrix<T> b = gaussian<T>(n, n, 1);
  Matrix<T> a = b * b.transpose();
  a.diagonal().array() += static_cast<T>(n);
  a = (a + a.transpose()).eval() / T(2);
  const CholeskyResult<T> c = cholesky(a);
  EXPECT_EQ(c.jitter, 0.0);
  EXPECT_EQ(c.attempts, 1);
  EXPECT_EQ(Matrix<T>(c.L.template triangularView<Eigen::StrictlyUpper>()).cwiseAbs().maxCoeff(), T(0));
  EXPECT_LT(relative_difference<T>(c.L * c.L.transpose(), a), tolerance<T>());
}

TYPED_TEST(Decompositions, CholeskyOfSingularMatrixReportsTheJitterItAdded) {
  using T = TypeParam;
  // X^T X with fewer samples than features: positive semi-definite with rank 30 of 80, the case a
  // calibration Hessian hits in practice.
  const int64_t n = 80;
  const Matrix<T> x = gaussian<T>(30, n, 2);
  Matrix<T> a = x.transpose() * x;
  a = (a + a.transpose()).eval() / T(2);
  const CholeskyResult<T> c = cholesky(a);
  EXPECT_GT(c.jitter, 0.0);
  EXPECT_GE(c.attempts, 2);
  // The jitter follows the documented schedule: jitter_rel * mean(diag) * 10^(attempts - 2).
  const double rel = std::is_same_v<T, float> ? 1e-6 : 1e-10;
  const double expected = rel * a.diagonal().template cast<double>().mean() * std::pow(10.0, c.attempts - 2);
  EXPECT_NEAR(c.jitter, expected, 1e-6 * expected);
  Matrix<T> shifted = a;
  shifted.diagonal().array() += static_cast<T>(c.jitter);
  EXPECT_LT(relative_difference<T>(c.L * c.L.transpose(), shifted), tolerance<T>());
}

TYPED_TEST(Decompositions, CholeskyOfSlightlyIndefiniteMatrix) {
  using T = TypeParam;
  // Eigenvalues 1 .. 2 except one at -1e-4: a PSD matrix damaged by noise, as accumulated rounding
  // leaves it.
  const int64_t n = 50;
  const Matrix<T> q = qr(gaussian<T>(n, n, 3)).Q;
  Vector<T> w = Vector<T>::LinSpaced(n, T(1), T(2));
  w(n / 2) = static_cast<T>(-1e-4);
  Matrix<T> a = q * w.asDiagonal() * q.transpose();
  a = (a + a.transpose()).eval() / T(2);
  const CholeskyResult<T> c = cholesky(a, {.jitter_rel = 1e-6});
  EXPECT_GE(c.jitter, 1e-4);
  Matrix<T> shifted = a;
  shifted.diagonal().array() += static_cast<T>(c.jitter);
  EXPECT_LT(relative_difference<T>(c.L * c.L.transpose(), shifted), tolerance<T>());
}

TYPED_TEST(Decompositions, CholeskyGivesUpOnClearlyIndefiniteMatrices) {
  using T = TypeParam;
  Matrix<T> a(2, 2);
  a << 1, 0, 0, -1;  // mean diagonal 0: no scale for a jitter
  EXPECT_THAT(error_of([&] { cholesky(a); }),
              AllOf(HasSubstr("cholesky: matrix is not positive definite"), HasSubstr("mean diagonal is 0")));
  a << 3, 0, 0, -1;  // mean 1, but jitter needs to exceed 1 and max_attempts = 3 allows 1e-5 at most
  EXPECT_THAT(error_of([&] { cholesky(a, {.jitter_rel = 1e-6, .max_attempts = 3}); }),
              AllOf(HasSubstr("cholesky: matrix is not positive definite"), HasSubstr("3 attempts")));
  EXPECT_THAT(error_of([&] { cholesky(Matrix<T>(Matrix<T>::Zero(4, 4))); }), HasSubstr("not positive definite"));
}

TYPED_TEST(Decompositions, CholeskyRejectsBadInput) {
  using T = TypeParam;
  Matrix<T> a = Matrix<T>::Identity(4, 4);
  a(0, 3) = T(0.5);  // a(3, 0) stays 0
  EXPECT_THAT(error_of([&] { cholesky(a); }),
              AllOf(HasSubstr("cholesky: input is not symmetric"), HasSubstr("a(3, 0) - a(0, 3)")));
  EXPECT_THAT(error_of([] { cholesky(Matrix<T>(Matrix<T>::Ones(3, 4))); }),
              HasSubstr("cholesky: input is not square (3 x 4)"));
  EXPECT_THAT(error_of([] { cholesky(Matrix<T>(0, 0)); }), HasSubstr("cholesky: input is empty (0 x 0)"));
  Matrix<T> nan = Matrix<T>::Identity(3, 3);
  nan(1, 1) = std::numeric_limits<T>::quiet_NaN();
  EXPECT_THAT(error_of([&] { cholesky(nan); }), HasSubstr("cholesky: input has a non-finite value (nan) at (1, 1)"));
  nan(1, 1) = std::numeric_limits<T>::infinity();
  EXPECT_THAT(error_of([&] { cholesky(nan); }), HasSubstr("non-finite value (inf) at (1, 1)"));
  const Matrix<T> eye = Matrix<T>::Identity(3, 3);
  EXPECT_THAT(error_of([&] { cholesky(eye, {.max_attempts = 0}); }), HasSubstr("max_attempts must be >= 1"));
  EXPECT_THAT(error_of([&] { cholesky(eye, {.jitter_rel = -1.0}); }), HasSubstr("jitter_rel must be"));
}

// ----------------------------------------------------------------------------------------------- QR

TYPED_TEST(Decompositions, QrOfEveryShape) {
  using T = TypeParam;
  for (const auto& [m, n] : {std::pair<int64_t, int64_t>{100, 40}, {40, 100}, {64, 64}, {1, 5}, {5, 1}}) {
    SCOPED_TRACE(::testing::Message() << m << " x " << n);
    const Matrix<T> a = gaussian<T>(m, n, static_cast<uint64_t>(m * 1000 + n));
    const QrResult<T> f = qr(a);
    const int64_t k = std::min(m, n);
    ASSERT_EQ(f.Q.rows(), m);
    ASSERT_EQ(f.Q.cols(), k);
    ASSERT_EQ(f.R.rows(), k);
    ASSERT_EQ(f.R.cols(), n);
    EXPECT_LT(orthonormality_error(f.Q), tolerance<T>());
    EXPECT_EQ(Matrix<T>(f.R.template triangularView<Eigen::StrictlyLower>()).cwiseAbs().maxCoeff(), T(0));
    EXPECT_LT(relative_difference<T>(f.Q * f.R, a), tolerance<T>());
  }
}

// ---------------------------------------------------------------------------------------------- eigh

TYPED_TEST(Decompositions, EighOfSymmetricMatrix) {
  using T = TypeParam;
  const int64_t n = 100;
  const Matrix<T> b = gaussian<T>(n, n, 9);
  const Matrix<T> a = (b + b.transpose()) / T(2);
  const EighResult<T> e = eigh(a);
  ASSERT_EQ(e.values.size(), n);
  for (int64_t i = 1; i < n; ++i) EXPECT_LE(e.values(i - 1), e.values(i)) << "at " << i;
  EXPECT_LT(orthonormality_error(e.vectors), tolerance<T>());
  EXPECT_LT(relative_difference<T>(a * e.vectors, e.vectors * e.values.asDiagonal()), tolerance<T>());
}

TYPED_TEST(Decompositions, EighRejectsBadInput) {
  using T = TypeParam;
  const Matrix<T> b = gaussian<T>(6, 6, 10);
  EXPECT_THAT(error_of([&] { eigh(b); }), HasSubstr("eigh: input is not symmetric"));
  EXPECT_THAT(error_of([] { eigh(Matrix<T>(Matrix<T>::Ones(2, 3))); }), HasSubstr("eigh: input is not square (2 x 3)"));
  Matrix<T> a = Matrix<T>::Identity(5, 5);
  a(2, 4) = a(4, 2) = -std::numeric_limits<T>::infinity();
  EXPECT_THAT(error_of([&] { eigh(a); }), HasSubstr("eigh: input has a non-finite value (-inf) at (4, 2)"));
  EXPECT_THAT(error_of([] { eigh(Matrix<T>(0, 3)); }), HasSubstr("eigh: input is empty"));
  // A loose tolerance accepts a slightly asymmetric matrix.
  Matrix<T> near = Matrix<T>::Identity(3, 3);
  near(0, 1) = T(1e-3);
  EXPECT_NO_THROW(eigh(near, {.symmetry_rtol = 1e-2}));
}

// ---------------------------------------------------------------------------------------- triangular

template <class T>
Matrix<T> well_conditioned_triangle(int64_t n, Triangle tri, uint64_t seed) {
  Matrix<T> g = gaussian<T>(n, n, seed) / static_cast<T>(std::sqrt(static_cast<double>(n)));
  g.diagonal().array() += T(2);
  Matrix<T> t = Matrix<T>::Zero(n, n);
  if (tri == Triangle::lower)
    t.template triangularView<Eigen::Lower>() = g;
  else
    t.template triangularView<Eigen::Upper>() = g;
  return t;
}

TYPED_TEST(Decompositions, SolveTriangularAllVariants) {
  using T = TypeParam;
  const int64_t n = 90;
  const Matrix<T> b = gaussian<T>(n, 7, 11);
  for (Triangle tri : {Triangle::lower, Triangle::upper})
    for (Transpose op : {Transpose::no, Transpose::yes}) {
      SCOPED_TRACE(::testing::Message() << (tri == Triangle::lower ? "lower" : "upper")
                                        << (op == Transpose::yes ? " transposed" : ""));
      const Matrix<T> t = well_conditioned_triangle<T>(n, tri, 12);
      const Matrix<T> x = solve_triangular(t, b, tri, op);
      const Matrix<T> lhs = op == Transpose::yes ? Matrix<T>(t.transpose() * x) : Matrix<T>(t * x);
      EXPECT_LT(relative_difference<T>(lhs, b), tolerance<T>());
    }
}

TYPED_TEST(Decompositions, SolveTriangularReadsOnlyItsTriangle) {
  using T = TypeParam;
  Matrix<T> t = well_conditioned_triangle<T>(20, Triangle::lower, 13);
  const Matrix<T> clean = t;
  t.template triangularView<Eigen::StrictlyUpper>().setConstant(std::numeric_limits<T>::quiet_NaN());
  const Matrix<T> b = gaussian<T>(20, 3, 14);
  EXPECT_EQ(solve_triangular(t, b, Triangle::lower), solve_triangular(clean, b, Triangle::lower));
  EXPECT_EQ(triangular_inverse(t, Triangle::lower), triangular_inverse(clean, Triangle::lower));
}

TYPED_TEST(Decompositions, TriangularInverse) {
  using T = TypeParam;
  const int64_t n = 70;
  for (Triangle tri : {Triangle::lower, Triangle::upper}) {
    const Matrix<T> t = well_conditioned_triangle<T>(n, tri, 15);
    const Matrix<T> inv = triangular_inverse(t, tri);
    EXPECT_LT((t * inv - Matrix<T>::Identity(n, n)).cwiseAbs().maxCoeff(), 10 * tolerance<T>());
    const Matrix<T> other = tri == Triangle::lower ? Matrix<T>(inv.template triangularView<Eigen::StrictlyUpper>())
                                                   : Matrix<T>(inv.template triangularView<Eigen::StrictlyLower>());
    EXPECT_EQ(other.cwiseAbs().maxCoeff(), T(0));
  }
}

TYPED_TEST(Decompositions, TriangularRejectsBadInput) {
  using T = TypeParam;
  Matrix<T> t = well_conditioned_triangle<T>(6, Triangle::upper, 16);
  const Matrix<T> b = gaussian<T>(6, 2, 17);
  EXPECT_THAT(error_of([&] { solve_triangular(t, Matrix<T>(gaussian<T>(5, 2, 1)), Triangle::upper); }),
              HasSubstr("solve_triangular: right-hand side has 5 rows, the upper triangular matrix is 6 x 6"));
  EXPECT_THAT(error_of([&] { solve_triangular(Matrix<T>(gaussian<T>(6, 5, 1)), b, Triangle::upper); }),
              HasSubstr("solve_triangular: triangular matrix is not square (6 x 5)"));
  EXPECT_THAT(error_of([&] { solve_triangular(t, Matrix<T>(6, 0), Triangle::upper); }),
              HasSubstr("solve_triangular: right-hand side is empty (6 x 0)"));
  Matrix<T> bad_b = b;
  bad_b(5, 1) = std::numeric_limits<T>::quiet_NaN();
  EXPECT_THAT(error_of([&] { solve_triangular(t, bad_b, Triangle::upper); }),
              HasSubstr("solve_triangular: right-hand side has a non-finite value (nan) at (5, 1)"));
  Matrix<T> bad_t = t;
  bad_t(1, 4) = std::numeric_limits<T>::infinity();
  EXPECT_THAT(error_of([&] { solve_triangular(bad_t, b, Triangle::upper); }),
              HasSubstr("solve_triangular: triangular matrix has a non-finite value (inf) at (1, 4)"));
  EXPECT_THAT(error_of([&] { triangular_inverse(bad_t, Triangle::upper); }),
              HasSubstr("triangular_inverse: triangular matrix has a non-finite value (inf) at (1, 4)"));
  t(3, 3) = 0;
  EXPECT_THAT(error_of([&] { solve_triangular(t, b, Triangle::upper); }),
              HasSubstr("solve_triangular: triangular matrix is singular: zero on the diagonal at (3, 3)"));
  EXPECT_THAT(error_of([&] { triangular_inverse(t, Triangle::upper); }),
              HasSubstr("triangular_inverse: triangular matrix is singular: zero on the diagonal at (3, 3)"));
  // Nearly singular: the solution overflows; reported rather than returned as inf.
  Matrix<T> tiny = Matrix<T>::Identity(2, 2);
  tiny(0, 0) = std::numeric_limits<T>::denorm_min();
  Matrix<T> big = Matrix<T>::Ones(2, 1) * std::numeric_limits<T>::max();
  EXPECT_THAT(error_of([&] { solve_triangular(tiny, big, Triangle::lower); }), HasSubstr("result overflowed"));
}

TEST(QrBadInput, NonFiniteAndEmpty) {
  Matrix<float> a = gaussian<float>(8, 4, 1);
  a(7, 3) = std::numeric_limits<float>::quiet_NaN();
  EXPECT_THAT(error_of([&] { qr(a); }), HasSubstr("qr: input has a non-finite value (nan) at (7, 3)"));
  EXPECT_THAT(error_of([] { qr(Matrix<double>(0, 4)); }), HasSubstr("qr: input is empty (0 x 4)"));
}

}  // namespace
}  // namespace strata::linalg

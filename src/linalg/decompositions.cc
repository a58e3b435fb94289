#include "strata/linalg/decompositions.hpp"

#include <cblas.h>
#include <lapacke.h>

#include <algorithm>
#include <climits>
#include <cmath>
#include <type_traits>

#include "strata/core/blas.hpp"
#include "strata/core/error.hpp"

namespace strata::linalg {

namespace {

template <class T>
constexpr const char* prefix() {
  return std::is_same_v<T, float> ? "s" : "d";
}

// LAPACK routines index with 32-bit integers; Eigen sizes are 64-bit.
lapack_int to_lapack(int64_t v) { return static_cast<lapack_int>(v); }

template <class T>
double default_symmetry_rtol() {
  return std::is_same_v<T, float> ? 1e-4 : 1e-10;
}

template <class T>
double default_jitter_rel() {
  return std::is_same_v<T, float> ? 1e-6 : 1e-10;
}

CBLAS_UPLO to_cblas(Triangle tri) { return tri == Triangle::lower ? CblasLower : CblasUpper; }
CBLAS_TRANSPOSE to_cblas(Transpose op) { return op == Transpose::yes ? CblasTrans : CblasNoTrans; }
char to_lapack_uplo(Triangle tri) { return tri == Triangle::lower ? 'L' : 'U'; }
const char* name(Triangle tri) { return tri == Triangle::lower ? "lower" : "upper"; }

// A triangular operand: square, non-empty, finite in the triangle that is read, and with a non-zero
// diagonal (trsm and trtri would divide by it).
template <class T>
void check_triangular(std::string_view fn, const Matrix<T>& t, Triangle tri) {
  require(t.rows() > 0 && t.cols() > 0, fn, ": triangular matrix is empty (", t.rows(), " x ", t.cols(), ")");
  require(t.rows() == t.cols(), fn, ": triangular matrix is not square (", t.rows(), " x ", t.cols(), ")");
  require(t.rows() <= INT_MAX, fn, ": triangular matrix is too large for 32-bit LAPACK (", t.rows(), " rows)");
  const int64_t n = t.rows();
  for (int64_t j = 0; j < n; ++j) {
    const int64_t begin = tri == Triangle::lower ? j : 0;
    const int64_t end = tri == Triangle::lower ? n : j + 1;
    for (int64_t i = begin; i < end; ++i)
      if (!std::isfinite(t(i, j)))
        fail(fn, ": triangular matrix has a non-finite value (", t(i, j), ") at (", i, ", ", j, ")");
    if (t(j, j) == T(0)) fail(fn, ": triangular matrix is singular: zero on the diagonal at (", j, ", ", j, ")");
  }
}

template <class T>
void check_result_finite(std::string_view fn, const Matrix<T>& x) {
  require(x.allFinite(), fn, ": result overflowed to a non-finite value (the triangular matrix is nearly singular)");
}

}  // namespace

namespace detail {

static_assert(std::is_same_v<lapack_int, int>, "strata's linalg layer assumes LAPACK with 32-bit integers");

void lapack_argument_error(std::string_view fn, const std::string& routine, int info) {
  if (info == LAPACK_WORK_MEMORY_ERROR || info == LAPACK_TRANSPOSE_MEMORY_ERROR)
    fail(fn, ": LAPACK ", routine, " could not allocate its workspace (info = ", info, ")");
  fail(fn, ": LAPACK ", routine, " rejected argument ", -info, " (info = ", info, ")");
}

template <class T>
void check_input(std::string_view fn, const Matrix<T>& a, std::string_view what) {
  require(a.rows() > 0 && a.cols() > 0, fn, ": ", what, " is empty (", a.rows(), " x ", a.cols(), ")");
  require(a.rows() <= INT_MAX && a.cols() <= INT_MAX, fn, ": ", what, " is too large for 32-bit LAPACK (",
          a.rows(), " x ", a.cols(), ")");
  if (a.allFinite()) return;
  for (int64_t j = 0; j < a.cols(); ++j)
    for (int64_t i = 0; i < a.rows(); ++i)
      if (!std::isfinite(a(i, j)))
        fail(fn, ": ", what, " has a non-finite value (", a(i, j), ") at (", i, ", ", j, ")");
}

template <class T>
void check_symmetric(std::string_view fn, const Matrix<T>& a, double rtol) {
  require(a.rows() == a.cols(), fn, ": input is not square (", a.rows(), " x ", a.cols(), ")");
  require(rtol >= 0 && std::isfinite(rtol), fn, ": symmetry tolerance must be finite and >= 0, got ", rtol);
  const double tol = rtol * static_cast<double>(a.cwiseAbs().maxCoeff());
  const int64_t n = a.rows();
  for (int64_t j = 0; j < n; ++j)
    for (int64_t i = j + 1; i < n; ++i) {
      const double d = std::abs(static_cast<double>(a(i, j)) - static_cast<double>(a(j, i)));
      if (d > tol)
        fail(fn, ": input is not symmetric: |a(", i, ", ", j, ") - a(", j, ", ", i, ")| = ", d, " exceeds ", rtol,
             " x max|a| = ", tol);
    }
}

template <class T>
void orthonormalize_columns(std::string_view fn, Matrix<T>& y) {
  const lapack_int m = to_lapack(y.rows()), l = to_lapack(y.cols());
  require(m >= l && l > 0, fn, ": cannot orthonormalize ", y.cols(), " columns of length ", y.rows());
  Vector<T> tau(l);
  lapack_int info;
  if constexpr (std::is_same_v<T, float>)
    info = LAPACKE_sgeqrf(LAPACK_COL_MAJOR, m, l, y.data(), m, tau.data());
  else
    info = LAPACKE_dgeqrf(LAPACK_COL_MAJOR, m, l, y.data(), m, tau.data());
  if (info != 0) detail::lapack_argument_error(fn, std::string(prefix<T>()) + "geqrf", info);
  if constexpr (std::is_same_v<T, float>)
    info = LAPACKE_sorgqr(LAPACK_COL_MAJOR, m, l, l, y.data(), m, tau.data());
  else
    info = LAPACKE_dorgqr(LAPACK_COL_MAJOR, m, l, l, y.data(), m, tau.data());
  if (info != 0) detail::lapack_argument_error(fn, std::string(prefix<T>()) + "orgqr", info);
}

template <class T>
Matrix<T> gemm(const Matrix<T>& a, Transpose op_a, const Matrix<T>& b, Transpose op_b) {
  const int64_t m = op_a == Transpose::no ? a.rows() : a.cols();
  const int64_t k = op_a == Transpose::no ? a.cols() : a.rows();
  const int64_t kb = op_b == Transpose::no ? b.rows() : b.cols();
  const int64_t n = op_b == Transpose::no ? b.cols() : b.rows();
  require(k == kb, "gemm: inner dimensions differ (", k, " and ", kb, ")");
  require(m <= INT_MAX && n <= INT_MAX && k <= INT_MAX, "gemm: dimensions too large for 32-bit BLAS");
  Matrix<T> c(m, n);
  if (m == 0 || n == 0) return c;
  if (k == 0) return Matrix<T>::Zero(m, n);
  const int lda = static_cast<int>(std::max<int64_t>(1, a.rows()));
  const int ldb = static_cast<int>(std::max<int64_t>(1, b.rows()));
  const int ldc = static_cast<int>(m);
  if constexpr (std::is_same_v<T, float>)
    cblas_sgemm(CblasColMajor, to_cblas(op_a), to_cblas(op_b), static_cast<int>(m), static_cast<int>(n),
                static_cast<int>(k), 1.0f, a.data(), lda, b.data(), ldb, 0.0f, c.data(), ldc);
  else
    cblas_dgemm(CblasColMajor, to_cblas(op_a), to_cblas(op_b), static_cast<int>(m), static_cast<int>(n),
                static_cast<int>(k), 1.0, a.data(), lda, b.data(), ldb, 0.0, c.data(), ldc);
  return c;
}

}  // namespace detail

template <class T>
CholeskyResult<T> cholesky(const Matrix<T>& a, const CholeskyOptions& opt) {
  constexpr std::string_view fn = "cholesky";
  detail::check_input(fn, a);
  require(a.rows() == a.cols(), fn, ": input is not square (", a.rows(), " x ", a.cols(), ")");
  const double rel = opt.jitter_rel.value_or(default_jitter_rel<T>());
  require(rel > 0 && std::isfinite(rel), fn, ": jitter_rel must be finite and > 0, got ", rel);
  require(opt.max_attempts >= 1, fn, ": max_attempts must be >= 1, got ", opt.max_attempts);
  detail::check_symmetric(fn, a, opt.symmetry_rtol.value_or(default_symmetry_rtol<T>()));
  warn_if_blas_slow();

  const lapack_int n = to_lapack(a.rows());
  const double mean_diag = a.diagonal().template cast<double>().mean();
  CholeskyResult<T> out;
  lapack_int info = 0;
  double jitter = 0;
  for (int attempt = 0; attempt < opt.max_attempts; ++attempt) {
    if (attempt > 0) {
      // A positive definite matrix has a positive diagonal, so a mean <= 0 means A is far from it
      // (or zero); no multiple of a non-positive scale can help.
      require(mean_diag > 0, fn, ": matrix is not positive definite (leading minor of order ", info,
              ") and its mean diagonal is ", mean_diag, ", which gives no scale for a jitter");
      // Rounded to T first, so that the reported jitter is exactly what was added.
      jitter = static_cast<double>(static_cast<T>(rel * mean_diag * std::pow(10.0, attempt - 1)));
    }
    out.L = a;
    out.L.diagonal().array() += static_cast<T>(jitter);
    if constexpr (std::is_same_v<T, float>)
      info = LAPACKE_spotrf(LAPACK_COL_MAJOR, 'L', n, out.L.data(), n);
    else
      info = LAPACKE_dpotrf(LAPACK_COL_MAJOR, 'L', n, out.L.data(), n);
    if (info < 0) detail::lapack_argument_error(fn, std::string(prefix<T>()) + "potrf", info);
    if (info == 0) {
      out.L.template triangularView<Eigen::StrictlyUpper>().setZero();
      out.jitter = jitter;
      out.attempts = attempt + 1;
      return out;
    }
  }
  fail(fn, ": matrix is not positive definite: still not after adding a jitter of ", jitter,
       " to the diagonal (mean diagonal ", mean_diag, ", ", opt.max_attempts, " attempts, jitter_rel ", rel, ")");
}

template <class T>
QrResult<T> qr(const Matrix<T>& a) {
  constexpr std::string_view fn = "qr";
  detail::check_input(fn, a);
  warn_if_blas_slow();
  const lapack_int m = to_lapack(a.rows()), n = to_lapack(a.cols()), k = std::min(m, n);
  Matrix<T> work = a;
  Vector<T> tau(k);
  lapack_int info;
  if constexpr (std::is_same_v<T, float>)
    info = LAPACKE_sgeqrf(LAPACK_COL_MAJOR, m, n, work.data(), m, tau.data());
  else
    info = LAPACKE_dgeqrf(LAPACK_COL_MAJOR, m, n, work.data(), m, tau.data());
  if (info != 0) detail::lapack_argument_error(fn, std::string(prefix<T>()) + "geqrf", info);

  QrResult<T> out;
  out.R = work.topRows(k).template triangularView<Eigen::Upper>();
  // The Householder vectors of the first k columns are all orgqr needs; columns beyond k hold R only.
  out.Q = work.leftCols(k);
  if constexpr (std::is_same_v<T, float>)
    info = LAPACKE_sorgqr(LAPACK_COL_MAJOR, m, k, k, out.Q.data(), m, tau.data());
  else
    info = LAPACKE_dorgqr(LAPACK_COL_MAJOR, m, k, k, out.Q.data(), m, tau.data());
  if (info != 0) detail::lapack_argument_error(fn, std::string(prefix<T>()) + "orgqr", info);
  return out;
}

template <class T>
EighResult<T> eigh(const Matrix<T>& a, const EighOptions& opt) {
  constexpr std::string_view fn = "eigh";
  detail::check_input(fn, a);
  detail::check_symmetric(fn, a, opt.symmetry_rtol.value_or(default_symmetry_rtol<T>()));
  warn_if_blas_slow();
  const lapack_int n = to_lapack(a.rows());
  EighResult<T> out;
  out.vectors = a;
  out.values.resize(n);
  lapack_int info;
  if constexpr (std::is_same_v<T, float>)
    info = LAPACKE_ssyevd(LAPACK_COL_MAJOR, 'V', 'L', n, out.vectors.data(), n, out.values.data());
  else
    info = LAPACKE_dsyevd(LAPACK_COL_MAJOR, 'V', 'L', n, out.vectors.data(), n, out.values.data());
  if (info < 0) detail::lapack_argument_error(fn, std::string(prefix<T>()) + "syevd", info);
  require(info == 0, fn, ": LAPACK ", prefix<T>(), "syevd failed to converge (info = ", info, ")");
  return out;
}

template <class T>
Matrix<T> solve_triangular(const Matrix<T>& t, const Matrix<T>& b, Triangle tri, Transpose op) {
  constexpr std::string_view fn = "solve_triangular";
  check_triangular(fn, t, tri);
  detail::check_input(fn, b, "right-hand side");
  require(b.rows() == t.rows(), fn, ": right-hand side has ", b.rows(), " rows, the ", name(tri),
          " triangular matrix is ", t.rows(), " x ", t.cols());
  warn_if_blas_slow();
  const int n = static_cast<int>(t.rows()), nrhs = static_cast<int>(b.cols());
  Matrix<T> x = b;
  if constexpr (std::is_same_v<T, float>)
    cblas_strsm(CblasColMajor, CblasLeft, to_cblas(tri), to_cblas(op), CblasNonUnit, n, nrhs, 1.0f, t.data(), n,
                x.data(), n);
  else
    cblas_dtrsm(CblasColMajor, CblasLeft, to_cblas(tri), to_cblas(op), CblasNonUnit, n, nrhs, 1.0, t.data(), n,
                x.data(), n);
  check_result_finite(fn, x);
  return x;
}

template <class T>
Matrix<T> triangular_inverse(const Matrix<T>& t, Triangle tri) {
  constexpr std::string_view fn = "triangular_inverse";
  check_triangular(fn, t, tri);
  const lapack_int n = to_lapack(t.rows());
  Matrix<T> inv = Matrix<T>::Zero(n, n);
  if (tri == Triangle::lower)
    inv.template triangularView<Eigen::Lower>() = t;
  else
    inv.template triangularView<Eigen::Upper>() = t;
  lapack_int info;
  if constexpr (std::is_same_v<T, float>)
    info = LAPACKE_strtri(LAPACK_COL_MAJOR, to_lapack_uplo(tri), 'N', n, inv.data(), n);
  else
    info = LAPACKE_dtrtri(LAPACK_COL_MAJOR, to_lapack_uplo(tri), 'N', n, inv.data(), n);
  if (info < 0) detail::lapack_argument_error(fn, std::string(prefix<T>()) + "trtri", info);
  require(info == 0, fn, ": triangular matrix is singular: zero on the diagonal at (", info - 1, ", ", info - 1, ")");
  check_result_finite(fn, inv);
  return inv;
}

#define STRATA_LINALG_INSTANTIATE(T)                                                                 \
  template void detail::check_input<T>(std::string_view, const Matrix<T>&, std::string_view);        \
  template void detail::check_symmetric<T>(std::string_view, const Matrix<T>&, double);              \
  template void detail::orthonormalize_columns<T>(std::string_view, Matrix<T>&);                     \
  template Matrix<T> detail::gemm<T>(const Matrix<T>&, Transpose, const Matrix<T>&, Transpose);      \
  template CholeskyResult<T> cholesky<T>(const Matrix<T>&, const CholeskyOptions&);                  \
  template QrResult<T> qr<T>(const Matrix<T>&);                                                      \
  template EighResult<T> eigh<T>(const Matrix<T>&, const EighOptions&);                              \
  template Matrix<T> solve_triangular<T>(const Matrix<T>&, const Matrix<T>&, Triangle, Transpose);   \
  template Matrix<T> triangular_inverse<T>(const Matrix<T>&, Triangle);
STRATA_LINALG_INSTANTIATE(float)
STRATA_LINALG_INSTANTIATE(double)
#undef STRATA_LINALG_INSTANTIATE

}  // namespace strata::linalg

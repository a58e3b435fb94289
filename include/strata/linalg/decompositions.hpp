#pragma once
// Dense decompositions strata's compressors build on: Cholesky with automatic diagonal jitter (for
// Hessians X^T X that are only positive semi-definite in practice), thin QR, symmetric eigen-
// decomposition and triangular solves. They wrap LAPACKE/CBLAS (OpenBLAS) and are defined for
// T = float and T = double (explicitly instantiated in src/linalg).
//
// Every function validates its input first and throws strata::Error, naming itself and the problem,
// for empty or wrongly shaped matrices, NaN/Inf entries, and any error LAPACK reports. The inputs are
// never modified; results are new column-major Eigen matrices.
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "strata/core/eigen.hpp"

namespace strata::linalg {

enum class Triangle { lower, upper };
enum class Transpose { no, yes };

struct CholeskyOptions {
  // The k-th retry (k = 0, 1, ...) factors A + jitter I with
  // jitter = jitter_rel * mean(diag(A)) * 10^k. Unset: 1e-6 for float (about 8 ulps of the
  // diagonal's scale), 1e-10 for double: small next to any eigenvalue that matters, and the
  // schedule grows it by 10x per attempt until the rounding in a computed X^T X is absorbed.
  std::optional<double> jitter_rel;
  // Factorisations tried in all, the first one without jitter. The default lets the jitter grow to
  // 10^6 * jitter_rel * mean(diag) before giving up.
  int max_attempts = 8;
  // |a(i,j) - a(j,i)| must not exceed symmetry_rtol * max|a|. Unset: 1e-4 for float, 1e-10 for double.
  std::optional<double> symmetry_rtol;
};

template <class T>
struct CholeskyResult {
  Matrix<T> L;         // lower triangular, L L^T = A + jitter I; zeros above the diagonal
  double jitter = 0;   // what was added to the diagonal; 0 when A itself was positive definite
  int attempts = 0;    // factorisations tried, 1 when A itself was positive definite
};

// A = L L^T (LAPACK ?potrf, lower). When A is not numerically positive definite, retries with a
// growing jitter on the diagonal (see CholeskyOptions) and reports the jitter it needed. Reads only
// the lower triangle for the factorisation, but checks that A is symmetric to a tolerance. Throws
// strata::Error if A is empty, not square, not symmetric, has a non-finite entry, has a mean
// diagonal <= 0 (no scale for a jitter), or is still not positive definite after max_attempts.
template <class T>
CholeskyResult<T> cholesky(const Matrix<T>& a, const CholeskyOptions& opt = {});

template <class T>
struct QrResult {
  Matrix<T> Q;  // m x k, orthonormal columns
  Matrix<T> R;  // k x n, upper triangular (upper trapezoidal when n > m)
};

// Thin QR, A = Q R with k = min(m, n) (LAPACK ?geqrf + ?orgqr). Diagonal of R may be negative:
// LAPACK's Householder convention, not normalised.
template <class T>
QrResult<T> qr(const Matrix<T>& a);

struct EighOptions {
  // As CholeskyOptions::symmetry_rtol.
  std::optional<double> symmetry_rtol;
};

template <class T>
struct EighResult {
  Vector<T> values;   // ascending
  Matrix<T> vectors;  // column i is the unit eigenvector of values(i)
};

// Eigendecomposition of a symmetric matrix, A = V diag(w) V^T (LAPACK ?syevd, divide and conquer,
// lower triangle). Throws strata::Error for non-square, non-symmetric or non-finite input, and when
// LAPACK fails to converge.
template <class T>
EighResult<T> eigh(const Matrix<T>& a, const EighOptions& opt = {});

// Solves op(T) X = B for X, T triangular (only the `tri` triangle of `t` is read), op(T) = T or T^T
// (CBLAS ?trsm). Throws strata::Error for shape mismatches, non-finite input, and an exactly zero
// diagonal entry (singular T); a nearly singular T gives large but finite results.
template <class T>
Matrix<T> solve_triangular(const Matrix<T>& t, const Matrix<T>& b, Triangle tri, Transpose op = Transpose::no);

// Inverse of a triangular matrix (LAPACK ?trtri), triangular of the same kind, zeros in the other
// triangle. Only the `tri` triangle of `t` is read. Throws strata::Error when T is singular.
template <class T>
Matrix<T> triangular_inverse(const Matrix<T>& t, Triangle tri);

// Helpers shared by the linalg sources; not part of the API.
namespace detail {

// A LAPACK routine returned info < 0: an argument error (a bug in strata, not bad data) or, from
// LAPACKE, a failed workspace allocation. Throws strata::Error saying which.
[[noreturn]] void lapack_argument_error(std::string_view fn, const std::string& routine, int info);

// Throws unless a is non-empty, every dimension fits LAPACK's 32-bit integers and every entry is
// finite: "<fn>: input is empty (0 x 5)", "<fn>: input has a non-finite value (nan) at (3, 7)".
template <class T>
void check_input(std::string_view fn, const Matrix<T>& a, std::string_view what = "input");

// Throws unless a is square and symmetric to rtol * max|a| (a already checked by check_input).
template <class T>
void check_symmetric(std::string_view fn, const Matrix<T>& a, double rtol);

// Replaces the columns of y (m x l, m >= l) by an orthonormal basis of their span (geqrf + orgqr).
template <class T>
void orthonormalize_columns(std::string_view fn, Matrix<T>& y);

// C = op(A) op(B) through CBLAS ?gemm: OpenBLAS beats Eigen's own GEMM on the large products.
template <class T>
Matrix<T> gemm(const Matrix<T>& a, Transpose op_a, const Matrix<T>& b, Transpose op_b);

}  // namespace detail

}  // namespace strata::linalg

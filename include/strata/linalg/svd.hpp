#pragma once
// Singular value decompositions: thin SVD through LAPACK (divide and conquer ?gesdd, with the slower
// but more robust ?gesvd as fallback) and randomized truncated SVD (Halko, Martinsson & Tropp 2011,
// "Finding structure with randomness", algorithm 4.4 with QR between power iterations), which is
// what makes low-rank compression of large layers affordable. Defined for T = float and T = double.
//
// Inputs are validated first (non-empty, finite, dimensions within LAPACK's 32-bit integers);
// problems throw strata::Error naming the function: "svd: input has a non-finite value (nan) at (3, 7)".
#include <cstdint>
#include <string_view>

#include "strata/core/eigen.hpp"

namespace strata::linalg {

enum class SvdDriver {
  automatic,  // gesdd, falling back to gesvd if gesdd fails (see svd())
  gesdd,      // divide and conquer: fast; only this, a failure throws
  gesvd,      // QR iteration: several times slower on large matrices, converges where gesdd may not
};
std::string_view to_string(SvdDriver driver);

struct SvdOptions {
  SvdDriver driver = SvdDriver::automatic;
  // Test hook: make the gesdd call report a convergence failure (info > 0) without running it, so
  // that tests can exercise the fallback to gesvd. Never set it outside tests.
  bool simulate_gesdd_failure = false;
};

template <class T>
struct SvdResult {
  Matrix<T> U;  // m x k, orthonormal columns
  Vector<T> S;  // k singular values, descending, >= 0
  Matrix<T> V;  // n x k, orthonormal columns (V, not V^T)
  SvdDriver driver_used = SvdDriver::automatic;  // gesdd or gesvd: the LAPACK driver that produced it
};

// Thin SVD, A = U diag(S) V^T with k = min(m, n). With SvdDriver::automatic runs ?gesdd, and falls
// back to ?gesvd when gesdd reports a convergence failure (info > 0) or returns non-finite values
// (reported by some LAPACK builds on hard inputs instead of an error); driver_used says which ran.
// Throws strata::Error on bad input, on a LAPACK argument error (info < 0) and when the driver(s)
// asked for fail.
template <class T>
SvdResult<T> svd(const Matrix<T>& a, const SvdOptions& opt = {});

struct RandomizedSvdOptions {
  int64_t rank = 0;          // r, 1 <= r <= min(m, n); required
  int64_t oversampling = 10; // p: the sketch has l = min(r + p, min(m, n)) columns
  int power_iterations = 2;  // q: passes over A^T A, each followed by QR re-orthonormalisation
  uint64_t seed = 0x5eed;    // Gaussian test matrix from std::mt19937_64(seed)
};

// Rank-r truncated SVD by randomized range finding: Y = A Omega (Omega n x l Gaussian), q power
// iterations Q <- qr(A qr(A^T Q)), then the exact SVD of the small l x n matrix Q^T A. U is m x r,
// S has r values, V is n x r; driver_used is the driver of that small SVD. Costs (2q + 2) products
// with an m x n by n x l matrix instead of a full SVD. The Frobenius error ||A - U S V^T|| approaches
// the optimal rank-r error as q grows; with r = 64, p = 10, q = 2 and singular values 1/sqrt(i+1)
// (a slow decay, the hard case) it measured 1.004x optimal on 4096 x 4096 and 1.007-1.008x on
// 768 x 768 and 768 x 3072. Results are identical run to run for a given seed, shape and thread
// count (same standard library and BLAS). Throws strata::Error on bad input or options.
template <class T>
SvdResult<T> randomized_svd(const Matrix<T>& a, const RandomizedSvdOptions& opt);

// A dense rows x cols test matrix with exactly the given singular values (k = min(rows, cols) of
// them, >= 0, any order), A = U diag(s) V^T where U and V are products of `reflections` random
// Householder reflections each (seeded by `seed`). Costs O(reflections * rows * cols), so large test
// matrices with a known spectrum and known optimal low-rank error are cheap to build; the singular
// vectors are less random than Haar-distributed ones, which does not matter for algorithms that are
// invariant under orthogonal transformations (SVD, randomized SVD with a Gaussian sketch).
template <class T>
Matrix<T> matrix_with_singular_values(int64_t rows, int64_t cols, const Vector<T>& singular_values, uint64_t seed,
                                      int reflections = 4);

}  // namespace strata::linalg

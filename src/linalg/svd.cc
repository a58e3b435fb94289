#include "strata/linalg/svd.hpp"

#include <lapacke.h>

#include <algorithm>
#include <climits>
#include <cmath>
#include <random>
#include <type_traits>
#include <vector>

#include "strata/core/blas.hpp"
#include "strata/core/error.hpp"
#include "strata/linalg/decompositions.hpp"

namespace strata::linalg {

std::string_view to_string(SvdDriver driver) {
  switch (driver) {
    case SvdDriver::automatic: return "automatic";
    case SvdDriver::gesdd: return "gesdd";
    case SvdDriver::gesvd: return "gesvd";
  }
  return "unknown";
}

namespace {

template <class T>
constexpr const char* prefix() {
  return std::is_same_v<T, float> ? "s" : "d";
}

// A driver either produced a usable factorisation or failed in a way the other driver may not.
struct DriverRun {
  bool ok = false;
  std::string why;  // when !ok
};

template <class T>
DriverRun finish(SvdResult<T>& out, const Matrix<T>& vt, lapack_int info, const char* routine) {
  if (info > 0)
    return {false, std::string(prefix<T>()) + routine + " did not converge (info = " + std::to_string(info) + ")"};
  // Some LAPACK builds return NaN from gesdd on hard inputs instead of reporting info > 0.
  if (!out.S.allFinite() || !out.U.allFinite() || !vt.allFinite())
    return {false, std::string(prefix<T>()) + routine + " returned non-finite values"};
  out.V = vt.transpose();
  return {true, {}};
}

template <class T>
DriverRun run_gesdd(const Matrix<T>& a, SvdResult<T>& out, bool simulate_failure) {
  out.driver_used = SvdDriver::gesdd;
  const lapack_int m = static_cast<lapack_int>(a.rows()), n = static_cast<lapack_int>(a.cols());
  const lapack_int k = std::min(m, n);
  if (simulate_failure)
    return {false, std::string(prefix<T>()) + "gesdd did not converge (simulated by the test hook)"};
  Matrix<T> work = a;  // gesdd destroys its input
  out.U.resize(m, k);
  out.S.resize(k);
  Matrix<T> vt(k, n);
  lapack_int info;
  if constexpr (std::is_same_v<T, float>)
    info = LAPACKE_sgesdd(LAPACK_COL_MAJOR, 'S', m, n, work.data(), m, out.S.data(), out.U.data(), m, vt.data(), k);
  else
    info = LAPACKE_dgesdd(LAPACK_COL_MAJOR, 'S', m, n, work.data(), m, out.S.data(), out.U.data(), m, vt.data(), k);
  if (info < 0) detail::lapack_argument_error("svd", std::string(prefix<T>()) + "gesdd", info);
  return finish(out, vt, info, "gesdd");
}

template <class T>
DriverRun run_gesvd(const Matrix<T>& a, SvdResult<T>& out) {
  out.driver_used = SvdDriver::gesvd;
  const lapack_int m = static_cast<lapack_int>(a.rows()), n = static_cast<lapack_int>(a.cols());
  const lapack_int k = std::min(m, n);
  Matrix<T> work = a;
  out.U.resize(m, k);
  out.S.resize(k);
  Matrix<T> vt(k, n);
  std::vector<T> superb(static_cast<std::size_t>(std::max<lapack_int>(1, k - 1)));
  lapack_int info;
  if constexpr (std::is_same_v<T, float>)
    info = LAPACKE_sgesvd(LAPACK_COL_MAJOR, 'S', 'S', m, n, work.data(), m, out.S.data(), out.U.data(), m, vt.data(),
                          k, superb.data());
  else
    info = LAPACKE_dgesvd(LAPACK_COL_MAJOR, 'S', 'S', m, n, work.data(), m, out.S.data(), out.U.data(), m, vt.data(),
                          k, superb.data());
  if (info < 0) detail::lapack_argument_error("svd", std::string(prefix<T>()) + "gesvd", info);
  return finish(out, vt, info, "gesvd");
}

}  // namespace

template <class T>
SvdResult<T> svd(const Matrix<T>& a, const SvdOptions& opt) {
  constexpr std::string_view fn = "svd";
  detail::check_input(fn, a);
  const int64_t k = std::min(a.rows(), a.cols()), big = std::max(a.rows(), a.cols());
  // gesdd's workspace for JOBZ = 'S' needs up to 3k^2 + max(max(m, n), 4k^2 + 4k) elements, a count
  // LAPACK keeps in a 32-bit integer.
  const double workspace = 7.0 * double(k) * double(k) + 4.0 * double(k) + double(big);
  require(workspace <= double(INT_MAX), fn, ": ", a.rows(), " x ", a.cols(),
          " is too large for 32-bit LAPACK workspaces");
  warn_if_blas_slow();

  SvdResult<T> out;
  switch (opt.driver) {
    case SvdDriver::gesdd: {
      const DriverRun run = run_gesdd(a, out, opt.simulate_gesdd_failure);
      require(run.ok, fn, ": ", run.why);
      return out;
    }
    case SvdDriver::gesvd: {
      const DriverRun run = run_gesvd(a, out);
      require(run.ok, fn, ": ", run.why);
      return out;
    }
    case SvdDriver::automatic: {
      const DriverRun first = run_gesdd(a, out, opt.simulate_gesdd_failure);
      if (first.ok) return out;
      const DriverRun second = run_gesvd(a, out);
      require(second.ok, fn, ": ", first.why, ", and the fallback ", second.why);
      return out;
    }
  }
  fail(fn, ": unknown driver ", static_cast<int>(opt.driver));
}

template <class T>
SvdResult<T> randomized_svd(const Matrix<T>& a, const RandomizedSvdOptions& opt) {
  constexpr std::string_view fn = "randomized_svd";
  detail::check_input(fn, a);
  const int64_t m = a.rows(), n = a.cols(), k = std::min(m, n);
  require(opt.rank >= 1 && opt.rank <= k, fn, ": rank must be in [1, min(m, n) = ", k, "] for a ", m, " x ", n,
          " input, got ", opt.rank);
  require(opt.oversampling >= 0, fn, ": oversampling must be >= 0, got ", opt.oversampling);
  require(opt.power_iterations >= 0, fn, ": power_iterations must be >= 0, got ", opt.power_iterations);
  warn_if_blas_slow();
  const int64_t r = opt.rank;
  const int64_t l = opt.oversampling >= k - r ? k : r + opt.oversampling;

  // The distribution is drawn in double whatever T is, so that float and double runs with one seed
  // start from the same sketch.
  std::mt19937_64 rng(opt.seed);
  std::normal_distribution<double> normal;
  Matrix<T> omega(n, l);
  for (int64_t j = 0; j < l; ++j)
    for (int64_t i = 0; i < n; ++i) omega(i, j) = static_cast<T>(normal(rng));

  // Y = A Omega spans (approximately) the dominant left singular subspace; each power iteration
  // sharpens it by the spectrum squared. QR after every product keeps the small singular directions
  // from being lost below rounding (HMT algorithm 4.4).
  // Finite entries near T's maximum can still overflow in the products; say so where it happens
  // rather than let LAPACK or the inner svd() report a bad argument the caller never passed.
  auto product = [&](Transpose op, const Matrix<T>& x) {
    Matrix<T> y = detail::gemm(a, op, x, Transpose::no);
    require(y.allFinite(), fn, ": the products with the input overflowed (largest |a| = ", a.cwiseAbs().maxCoeff(),
            "); scale the matrix down");
    return y;
  };
  Matrix<T> q = product(Transpose::no, omega);
  detail::orthonormalize_columns(fn, q);
  for (int it = 0; it < opt.power_iterations; ++it) {
    Matrix<T> z = product(Transpose::yes, q);
    detail::orthonormalize_columns(fn, z);
    q = product(Transpose::no, z);
    detail::orthonormalize_columns(fn, q);
  }

  // B = Q^T A is l x n; its transpose A^T Q is tall, the shape LAPACK's thin SVD likes:
  // A^T Q = Ub S Vb^T  =>  A ~ Q B = (Q Vb) S Ub^T.
  const Matrix<T> bt = product(Transpose::yes, q);
  SvdResult<T> small = svd(bt);
  SvdResult<T> out;
  out.driver_used = small.driver_used;
  out.S = small.S.head(r);
  out.V = small.U.leftCols(r);
  // Through BLAS like the other products: mixing Eigen's OpenMP GEMM with OpenBLAS's own threads in
  // one call makes two thread pools contend for the same cores.
  out.U = detail::gemm(q, Transpose::no, Matrix<T>(small.V.leftCols(r)), Transpose::no);
  return out;
}

template <class T>
Matrix<T> matrix_with_singular_values(int64_t rows, int64_t cols, const Vector<T>& singular_values, uint64_t seed,
                                      int reflections) {
  constexpr std::string_view fn = "matrix_with_singular_values";
  require(rows >= 1 && cols >= 1, fn, ": need a non-empty shape, got ", rows, " x ", cols);
  const int64_t k = std::min(rows, cols);
  require(singular_values.size() == k, fn, ": need min(rows, cols) = ", k, " singular values, got ",
          singular_values.size());
  require(reflections >= 0, fn, ": reflections must be >= 0, got ", reflections);
  for (int64_t i = 0; i < k; ++i)
    require(std::isfinite(singular_values(i)) && singular_values(i) >= 0, fn,
            ": singular values must be finite and >= 0, got ", singular_values(i), " at ", i);

  Matrix<T> a = Matrix<T>::Zero(rows, cols);
  a.diagonal() = singular_values;
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> normal;
  auto unit_vector = [&](int64_t len) {
    Vector<T> v(len);
    for (int64_t i = 0; i < len; ++i) v(i) = static_cast<T>(normal(rng));
    v.normalize();
    return v;
  };
  // H = I - 2 v v^T is orthogonal, so H A and A H keep the singular values exactly (up to rounding).
  for (int h = 0; h < reflections; ++h) {
    const Vector<T> v = unit_vector(rows);
    const Vector<T> vta = a.transpose() * v;
    a.noalias() -= (T(2) * v) * vta.transpose();
    const Vector<T> w = unit_vector(cols);
    const Vector<T> aw = a * w;
    a.noalias() -= (T(2) * aw) * w.transpose();
  }
  return a;
}

#define STRATA_LINALG_INSTANTIATE(T)                                                                 \
  template SvdResult<T> svd<T>(const Matrix<T>&, const SvdOptions&);                                 \
  template SvdResult<T> randomized_svd<T>(const Matrix<T>&, const RandomizedSvdOptions&);            \
  template Matrix<T> matrix_with_singular_values<T>(int64_t, int64_t, const Vector<T>&, uint64_t, int);
STRATA_LINALG_INSTANTIATE(float)
STRATA_LINALG_INSTANTIATE(double)
#undef STRATA_LINALG_INSTANTIATE

}  // namespace strata::linalg

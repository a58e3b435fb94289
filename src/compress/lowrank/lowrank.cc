#include "strata/compress/lowrank/lowrank.hpp"

#include <cblas.h>

#include <algorithm>
#include <climits>
#include <cmath>
#include <sstream>

#include "strata/core/error.hpp"
#include "strata/linalg/decompositions.hpp"
#include "strata/linalg/svd.hpp"

namespace strata::compress::lowrank {

namespace {

void check_weight(std::string_view fn, const RowMatrix<float>& w) {
  require(w.rows() > 0 && w.cols() > 0, fn, ": weight is empty (", w.rows(), " x ", w.cols(), ")");
  require(w.rows() <= INT_MAX && w.cols() <= INT_MAX, fn, ": weight [", w.rows(), ", ", w.cols(),
          "] is too large for 32-bit LAPACK");
  if (w.allFinite()) return;
  for (int64_t i = 0; i < w.rows(); ++i)
    for (int64_t j = 0; j < w.cols(); ++j)
      if (!std::isfinite(w(i, j))) fail(fn, ": weight has a non-finite value (", w(i, j), ") at (", i, ", ", j, ")");
}

// C = op(A) op(B) in double through BLAS; Eigen's own GEMM is several times slower on these sizes.
Matrix<double> gemm(const Matrix<double>& a, bool ta, const Matrix<double>& b, bool tb) {
  const int64_t m = ta ? a.cols() : a.rows(), k = ta ? a.rows() : a.cols();
  const int64_t n = tb ? b.rows() : b.cols();
  require(k == (tb ? b.cols() : b.rows()), "lowrank: inner dimensions differ in a product");
  Matrix<double> c(m, n);
  cblas_dgemm(CblasColMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, static_cast<int>(m),
              static_cast<int>(n), static_cast<int>(k), 1.0, a.data(), static_cast<int>(a.rows()), b.data(),
              static_cast<int>(b.rows()), 0.0, c.data(), static_cast<int>(m));
  return c;
}

void check_rank(std::string_view fn, const RowMatrix<float>& w, const SolverOptions& opt, int64_t rank) {
  if (opt.solver != Solver::randomized) return;
  const int64_t k = std::min(w.rows(), w.cols());
  require(rank >= 1 && rank <= k, fn, ": the randomized solver needs 1 <= rank <= ", k, ", got ", rank);
}

// The SVD of W T (already formed) and R = U^T W: U_r^T (W T) = S_r V_r^T gives
// S_r V_r^T T^-1 = U_r^T W exactly, for any invertible T and for the randomized SVD too. So one
// product serves every transform, SVD-LLM needs no triangular solve with L, and R is what the
// error curve needs (component i's error energy is r_i^T H r_i).
Decomposition finish(const Matrix<double>& wt, const Matrix<double>& w, const SolverOptions& opt, int64_t rank) {
  linalg::SvdResult<double> f;
  if (opt.solver == Solver::randomized) {
    linalg::RandomizedSvdOptions ro;
    ro.rank = rank;
    ro.oversampling = opt.oversampling;
    ro.power_iterations = opt.power_iterations;
    ro.seed = opt.seed;
    f = linalg::randomized_svd(wt, ro);
  } else {
    f = linalg::svd(wt);
  }
  Decomposition d;
  d.complete = opt.solver != Solver::randomized;
  d.s = std::move(f.S);
  d.r = gemm(f.U, true, w, false);
  d.u = std::move(f.U);
  return d;
}

}  // namespace

RowMatrix<float> Factors::product() const { return a * b; }

Factors Decomposition::factors(int64_t rank) const {
  require(rank >= 1 && rank <= components(), "lowrank::Decomposition::factors: rank ", rank, " outside 1..",
          components());
  const int64_t m = u.rows(), n = r.cols();
  Factors f;
  f.a.resize(m, rank);
  f.b.resize(rank, n);
  // Components this far below the leading one are zero up to rounding; splitting them by sqrt(s_i)
  // would turn rounding noise into huge entries (overflowing float32) for a product that is nil.
  const double tiny = s.size() > 0 ? s(0) * 1e-30 : 0.0;
  for (int64_t i = 0; i < rank; ++i) {
    if (!(s(i) > tiny)) {
      f.a.col(i).setZero();
      f.b.row(i).setZero();
      continue;
    }
    const double root = std::sqrt(s(i));
    f.a.col(i) = (u.col(i) * root).cast<float>();
    f.b.row(i) = (r.row(i) / root).cast<float>();
  }
  return f;
}

Decomposition svd(const RowMatrix<float>& w, const SolverOptions& opt, int64_t rank) {
  constexpr std::string_view fn = "lowrank::svd";
  check_weight(fn, w);
  check_rank(fn, w, opt, rank);
  const Matrix<double> wd = w.cast<double>();
  return finish(wd, wd, opt, rank);
}

Decomposition asvd(const RowMatrix<float>& w, const Vector<double>& mean_abs, double alpha, const SolverOptions& opt,
                   int64_t rank) {
  constexpr std::string_view fn = "lowrank::asvd";
  check_weight(fn, w);
  check_rank(fn, w, opt, rank);
  require(mean_abs.size() == w.cols(), fn, ": mean |x| has ", mean_abs.size(), " channels for a weight with ",
          w.cols(), " inputs");
  require(std::isfinite(alpha) && alpha >= 0, fn, ": alpha must be finite and >= 0, got ", alpha);
  for (int64_t j = 0; j < mean_abs.size(); ++j)
    require(std::isfinite(mean_abs(j)) && mean_abs(j) >= 0, fn, ": mean |x| of channel ", j, " is ", mean_abs(j),
            " (must be finite and >= 0)");
  const double top = mean_abs.maxCoeff();
  require(top > 0, fn, ": mean |x| is zero on every channel: the calibration saw no input");
  const Vector<double> scale = mean_abs.cwiseMax(1e-6 * top).array().pow(alpha).matrix();
  const Matrix<double> wd = w.cast<double>();
  return finish(wd * scale.asDiagonal(), wd, opt, rank);
}

Decomposition svd_llm(const RowMatrix<float>& w, const Matrix<double>& h, const SolverOptions& opt, int64_t rank) {
  constexpr std::string_view fn = "lowrank::svd_llm";
  check_weight(fn, w);
  check_rank(fn, w, opt, rank);
  require(h.rows() == w.cols() && h.cols() == w.cols(), fn, ": Hessian is [", h.rows(), ", ", h.cols(),
          "] for a weight with ", w.cols(), " inputs");
  linalg::CholeskyResult<double> chol;
  try {
    chol = linalg::cholesky(h);
  } catch (const Error& e) {
    fail(fn, ": Hessian: ", e.what());
  }
  const Matrix<double> wd = w.cast<double>();
  Decomposition d = finish(gemm(wd, false, chol.L, false), wd, opt, rank);
  d.jitter = chol.jitter;
  // With jitter, L L^T = H + jitter I: the spectrum then measures error against H + jitter I, and
  // the exact curve needs H itself (error_curve computes it).
  d.whitened = chol.jitter == 0;
  return d;
}

namespace {

void check_curve(std::string_view fn, const Decomposition& d, const RowMatrix<float>& w) {
  require(d.complete, fn, ": needs a complete decomposition (full SVD); a randomized one holds only ",
          d.components(), " components");
  require(d.u.rows() == w.rows() && d.r.cols() == w.cols(), fn, ": decomposition of a [", d.u.rows(), ", ",
          d.r.cols(), "] matrix, weight is [", w.rows(), ", ", w.cols(), "]");
}

// errors[r] = sum_{i >= r} energy_i / sum_i energy_i, the tail sums taken from the smallest component
// up so that small errors keep their relative precision.
std::vector<double> tail_curve(Vector<double> energy) {
  const int64_t k = energy.size();
  energy = energy.cwiseMax(0.0);
  std::vector<double> tail(static_cast<size_t>(k) + 1, 0.0);
  for (int64_t i = k - 1; i >= 0; --i) tail[static_cast<size_t>(i)] = tail[static_cast<size_t>(i) + 1] + energy(i);
  const double total = tail[0];
  for (double& e : tail) e = total > 0 ? e / total : 0.0;
  return tail;
}

}  // namespace

std::vector<double> error_curve_diagonal(const Decomposition& d, const RowMatrix<float>& w,
                                         const Vector<double>& channel_weight) {
  constexpr std::string_view fn = "lowrank::error_curve_diagonal";
  check_curve(fn, d, w);
  require(channel_weight.size() == w.cols(), fn, ": ", channel_weight.size(), " channel weights for a weight with ",
          w.cols(), " inputs");
  require(channel_weight.allFinite() && (channel_weight.array() >= 0).all(), fn,
          ": channel weights must be finite and >= 0");
  // Component i's share of sum_j m_j ||W[:, j]||^2 is sum_j m_j r_ij^2 (U's columns are orthonormal).
  return tail_curve(d.r.array().square().matrix() * channel_weight);
}

std::vector<double> error_curve(const Decomposition& d, const RowMatrix<float>& w, const Matrix<double>* h) {
  constexpr std::string_view fn = "lowrank::error_curve";
  check_curve(fn, d, w);
  const int64_t k = d.components();
  // energy_i = s_i^2 z_i^T H z_i = r_i^T H r_i: component i's share of tr(W H W^T) (cross terms
  // vanish because U's columns are orthonormal).
  Vector<double> energy(k);
  if (d.whitened) {
    require(h != nullptr, fn, ": a whitened (SVD-LLM) decomposition measures output error: pass its Hessian");
    energy = d.s.array().square().matrix();
  } else if (h != nullptr) {
    require(h->rows() == w.cols() && h->cols() == w.cols(), fn, ": Hessian is [", h->rows(), ", ", h->cols(),
            "] for a weight with ", w.cols(), " inputs");
    const Matrix<double> rh = gemm(d.r, false, *h, false);
    energy = rh.cwiseProduct(d.r).rowwise().sum();
  } else {
    energy = d.r.rowwise().squaredNorm();
  }
  return tail_curve(std::move(energy));
}

int64_t rank_for_keep(int64_t rows, int64_t cols, double keep) {
  require(rows > 0 && cols > 0, "lowrank::rank_for_keep: empty layer (", rows, " x ", cols, ")");
  require(std::isfinite(keep) && keep > 0 && keep <= 1, "lowrank::rank_for_keep: keep must be in (0, 1], got ",
          keep);
  // As SVD-LLM computes it: int(m * n * ratio / (m + n)).
  const auto r = static_cast<int64_t>(static_cast<double>(rows * cols) * keep / static_cast<double>(rows + cols));
  return std::clamp<int64_t>(r, 1, std::min(rows, cols));
}

LowRankLinear::LowRankLinear(RowMatrix<float> a, RowMatrix<float> b) : a_(std::move(a)), b_(std::move(b)) {
  require(a_.rows() > 0 && b_.cols() > 0 && a_.cols() > 0, "LowRankLinear: empty factors A [", a_.rows(), ", ",
          a_.cols(), "], B [", b_.rows(), ", ", b_.cols(), "]");
  require(a_.cols() == b_.rows(), "LowRankLinear: A is [", a_.rows(), ", ", a_.cols(), "] but B is [", b_.rows(),
          ", ", b_.cols(), "]");
}

void LowRankLinear::forward(const float* x, int64_t tokens, float* y) const {
  // Per call, not a member: forward is const and engines may call it from several threads.
  std::vector<float> t(static_cast<size_t>(tokens * rank()));
  nn::matmul_wt(x, tokens, b_.data(), rank(), in_features(), t.data());
  nn::matmul_wt(t.data(), tokens, a_.data(), out_features(), rank(), y);
}

std::string LowRankLinear::describe() const {
  std::ostringstream out;
  out << "low-rank f32 [" << out_features() << ", " << in_features() << "] rank " << rank();
  return out.str();
}

}  // namespace strata::compress::lowrank

#pragma once
// Low-rank factorisation of weight matrices, W [out, in] ~ A B with A [out, r] and B [r, in]:
//   svd     plain truncated SVD (Eckart-Young: optimal in weight error),
//   asvd    ASVD (Yuan et al. 2023, hahnyuan/ASVD4LLM): SVD of W diag(E|x_j|)^alpha, so that columns
//           fed by large activations are kept more faithfully,
//   svd_llm SVD-LLM (Wang et al. 2024, AIoT-MLSys-Lab/SVD-LLM): SVD of W L with H = L L^T, which
//           makes the truncation optimal in *output* error on the calibration inputs and makes the
//           output error of every rank a tail sum of the singular values.
// All three are one computation: the SVD W T = U diag(s) V^T for an invertible column transform T
// (identity, diagonal, Cholesky factor); rank r keeps the first r components,
//   A = U_r sqrt(S_r),  B = sqrt(S_r) V_r^T T^-1 = S_r^-1/2 U_r^T W,
// the two forms of B being equal because U_r^T (W T) = S_r V_r^T. strata computes the second: one
// product for every transform (and for the randomized SVD), no triangular solve with T, and its
// rows are what the exact error curve needs. The approximation is the projection
// A B = U_r U_r^T W: each method only chooses which r-dimensional output subspace to keep.
//
// The functions are plain and typed; the WeightCompressor adapters ("lowrank.svd", "lowrank.asvd",
// "lowrank.svdllm", registered by add_lowrank_compressors) add knobs, costs and storage.
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "strata/compress/compressor.hpp"
#include "strata/core/eigen.hpp"
#include "strata/nn/linear.hpp"

namespace strata::compress::lowrank {

// How the SVD is computed. A full SVD gives every component (and so the whole error curve);
// a randomized one (Halko, Martinsson & Tropp; strata::linalg::randomized_svd) only the leading
// `rank`, at a fraction of the cost for large layers with r << min(out, in).
enum class Solver { full, randomized };

struct SolverOptions {
  Solver solver = Solver::full;
  int64_t oversampling = 10;  // randomized only: sketch of r + p columns
  int power_iterations = 2;   // randomized only
  uint64_t seed = 0x5eed;     // randomized only: results are reproducible for a seed
};

// W ~ A B in float32, as stored.
struct Factors {
  RowMatrix<float> a;  // [out, r]
  RowMatrix<float> b;  // [r, in]
  int64_t rank() const { return a.cols(); }
  RowMatrix<float> product() const;  // A B, [out, in]
};

// W T = U diag(s) V^T with the right factor kept as R = U^T W (= diag(s) V^T T^-1).
struct Decomposition {
  Matrix<double> u;  // [out, k], orthonormal columns
  Vector<double> s;  // [k], descending: singular values of W T
  Matrix<double> r;  // [k, in], U^T W
  // k = min(out, in) from a full SVD, so that W = U R exactly (up to rounding) and the error of
  // every rank follows from the decomposition (error_curve).
  bool complete = false;
  // T T^T = H for the H it was built from (SVD-LLM without jitter): the output error of rank r is
  // then sum_{i>=r} s_i^2 / sum_i s_i^2, read off the spectrum.
  bool whitened = false;
  double jitter = 0;  // SVD-LLM: what Cholesky had to add to H's diagonal (0: H was positive definite)

  int64_t components() const { return s.size(); }
  // A = U_r sqrt(S_r), B = S_r^-1/2 R_r, for 1 <= rank <= components(). Components with s_i below
  // 1e-30 s_0 (numerically zero) are stored as zeros.
  Factors factors(int64_t rank) const;
};

// Plain truncated SVD of W (T = I). `rank` is only used (and required, 1..min(out, in)) by the
// randomized solver; the full solver returns every component.
Decomposition svd(const RowMatrix<float>& w, const SolverOptions& opt = {}, int64_t rank = 0);

// ASVD: T = diag(m_j^alpha) with m_j = E|x_j| over the calibration tokens. Channels whose mean is
// below 1e-6 of the largest are treated as if at that floor, so that T stays invertible and B
// finite (such channels carry no signal, so their columns do not matter for the output).
Decomposition asvd(const RowMatrix<float>& w, const Vector<double>& mean_abs, double alpha = 0.5,
                   const SolverOptions& opt = {}, int64_t rank = 0);

// SVD-LLM: T = L with L L^T = H (= X^T X / N, [in, in]), by Cholesky with automatic jitter when H is
// only semi-definite (strata::linalg::cholesky). Truncating the SVD of W L is optimal in output
// error: ||(W - W') X||_F^2 = N ||(W - W') L||_F^2.
Decomposition svd_llm(const RowMatrix<float>& w, const Matrix<double>& h, const SolverOptions& opt = {},
                      int64_t rank = 0);

// errors[r] for r = 0 .. components(): the relative output error tr(dW H dW^T) / tr(W H W^T) of
// keeping the first r components (the relative weight error ||dW||^2 / ||W||^2 when h is null).
// Exact, from one decomposition: since U has orthonormal columns, dW = U_{>r} R_{>r} gives
// tr(dW H dW^T) = sum_{i>=r} r_i^T H r_i (rows r_i of R). For a whitened decomposition `h` must be the matrix
// it was whitened with, and the curve is the spectrum's tail alone (no product with H). Throws for
// a decomposition that is not complete (randomized).
std::vector<double> error_curve(const Decomposition& d, const RowMatrix<float>& w, const Matrix<double>* h);

// The same curve with the output error's diagonal proxy, sum_j m_j ||dW[:, j]||^2 / sum_j m_j ||W[:, j]||^2
// for channel weights m_j >= 0 (E[x_j^2], the diagonal of H), for callers with per-channel statistics
// only: activation-aware where the plain weight error is not. Exact for the decomposition's truncations
// (cross terms between components vanish, as above). Throws like error_curve and for a weight vector
// of the wrong size or with a negative or non-finite entry.
std::vector<double> error_curve_diagonal(const Decomposition& d, const RowMatrix<float>& w,
                                         const Vector<double>& channel_weight);

// SVD-LLM's parameter ratio: the rank whose factors hold `keep` of the layer's out * in numbers,
// r = floor(out * in * keep / (out + in)), at least 1 (tiny layers) and at most min(out, in).
// Throws unless 0 < keep <= 1.
int64_t rank_for_keep(int64_t rows, int64_t cols, double keep);

// A linear layer computing with the factors: y = (x B^T) A^T, 2 r (out + in) flops per token
// instead of 2 out in.
class LowRankLinear final : public nn::Linear {
 public:
  LowRankLinear(RowMatrix<float> a, RowMatrix<float> b);
  int64_t in_features() const override { return b_.cols(); }
  int64_t out_features() const override { return a_.rows(); }
  int64_t rank() const { return a_.cols(); }
  void forward(const float* x, int64_t tokens, float* y) const override;
  RowMatrix<float> dense_weight() const override { return a_ * b_; }
  uint64_t weight_bytes() const override { return static_cast<uint64_t>(a_.size() + b_.size()) * sizeof(float); }
  std::string describe() const override;
  const RowMatrix<float>& a() const { return a_; }
  const RowMatrix<float>& b() const { return b_; }

 private:
  RowMatrix<float> a_, b_;
};

// The registry's adapters, for callers that want other settings than the registered defaults.
//
// Knobs: "keep=F" (fraction of the layer's parameters kept, 0 < F <= 1, rank by rank_for_keep) or
// "rank=R" (1 <= R <= min(out, in)), plus "rsvd" to use the randomized solver for that setting and,
// for ASVD, "alpha=A". knobs() lists keep=0.1 .. keep=0.9, cheapest first; with
// options.solver.solver == Solver::randomized each of them carries ",rsvd".
// Storage: A [out, r] and B [r, in] as float32 tensors "a" and "b": 4 r (out + in) bytes, the
// figure cost() reports. options() takes every knob's error from one full SVD (error_curve); with
// the randomized solver it compresses and measures each knob instead. Without a Hessian, ASVD's errors are
// the diagonal proxy above with mean_sq (or mean |x|^2), so its curve stays activation-aware: that
// curve, (params, error) at keep=0.1 .. 0.9, is the per-layer sensitivity ASVD's rank search ranks
// (docs/lowrank.md: budget::Solver::minimax over a params budget is the search's global part).
enum class Method { svd, asvd, svd_llm };
struct CompressorOptions {
  SolverOptions solver;
  double alpha = 0.5;  // ASVD's exponent
};
std::unique_ptr<WeightCompressor> make_compressor(Method method, const CompressorOptions& options = {});

}  // namespace strata::compress::lowrank

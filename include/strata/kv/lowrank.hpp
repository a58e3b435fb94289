#pragma once
// PCA of calibration K/V rows: keys (or values) of a layer live close to a low-dimensional
// subspace, so a cache can hold r coefficients per token instead of the full row and reconstruct
// rows when attention needs them. The basis is fitted to cached rows recorded on calibration text
// (per head, or per layer), not to the projection weights: this is not Palu (Chang et al. 2024),
// which factorizes W_k / W_v and caches the latent of the factorization. The cross-layer variant
// follows xKV (Chang et al. 2025, "xKV: cross-layer SVD for KV-cache compression").
//
// These classes work on recorded caches (examples/kv_quant_eval); kv::Session does not run them.
//
// The basis comes from calibration caches X [tokens, features] (one head: features = head_dim; a
// whole layer: n_kv_heads * head_dim; several caches are stacked along tokens). With the SVD
// X = U diag(s) V^T, the basis is V_r (the leading r right singular vectors): project(x) = x V_r
// [tokens, r], reconstruct(p) = p V_r^T. On the calibration data itself the relative error
// ||X - X V_r V_r^T||_F^2 / ||X||_F^2 is exactly the discarded energy sum_{i>=r} s_i^2 / sum_i s_i^2
// (Eckart-Young), so one SVD gives the whole error-versus-rank curve.
//
// xKV's cross-layer variant concatenates several layers' caches of the same tokens along features,
// [X_1 | X_2 | ... | X_L], and fits one basis V_r = [V_1; ...; V_L] for all of them: each token then
// holds one set of r coefficients p = sum_l x_l V_l for the whole group of layers, and layer l is
// reconstructed as p V_l^T. When layers share their dominant subspace (xKV's observation), a group
// of L layers needs far fewer than L r coefficients for the same error.
#include <cstdint>
#include <span>
#include <vector>

#include "strata/core/eigen.hpp"

namespace strata::kv {

enum class SvdSolver { full, randomized };

struct LowRankOptions {
  // r; 0 keeps every component (min(tokens, features)). The randomized solver needs 1 <= r.
  int64_t rank = 0;
  SvdSolver solver = SvdSolver::full;
  int64_t oversampling = 10;  // randomized only
  int power_iterations = 2;   // randomized only
  uint64_t seed = 0x5eed;     // randomized only
};

class LowRankBasis {
 public:
  // From calibration rows [tokens, features], or several such caches stacked along tokens (all
  // with the same features). Throws strata::Error on empty or non-finite input or a rank outside
  // 1..min(tokens, features).
  static LowRankBasis fit(const RowMatrix<float>& calibration, const LowRankOptions& options = {});
  static LowRankBasis fit(std::span<const RowMatrix<float>> calibration, const LowRankOptions& options = {});

  int64_t features() const { return basis_.rows(); }
  int64_t rank() const { return basis_.cols(); }
  // [features, rank], orthonormal columns.
  const RowMatrix<float>& basis() const { return basis_; }
  // Singular values of the calibration matrix, descending: all min(tokens, features) of them from
  // the full solver, the leading `rank` from the randomized one.
  const Vector<double>& spectrum() const { return spectrum_; }
  // ||X||_F^2 of the calibration matrix.
  double calibration_energy() const { return energy_; }
  // Relative discarded energy on the calibration data at rank k (0 <= k <= spectrum().size()):
  // (||X||^2 - sum_{i<k} s_i^2) / ||X||^2.
  double relative_error(int64_t k) const;
  // relative_error(k) for k = 0 .. spectrum().size().
  std::vector<double> error_curve() const;
  // The same fit cut to its leading k columns (1 <= k <= rank()), for error-versus-rank sweeps.
  LowRankBasis truncated(int64_t k) const;

  // x [tokens, features] -> coefficients [tokens, rank], and back.
  RowMatrix<float> project(const RowMatrix<float>& x) const;
  RowMatrix<float> reconstruct(const RowMatrix<float>& coefficients) const;
  // Bytes of the basis (features * rank floats) and of `tokens` projected rows (tokens * rank floats).
  uint64_t basis_bytes() const { return static_cast<uint64_t>(basis_.size()) * sizeof(float); }
  uint64_t coefficient_bytes(int64_t tokens) const;

 private:
  RowMatrix<float> basis_;
  Vector<double> spectrum_;
  double energy_ = 0;
};

// One head's columns [tokens, head_dim] of a layer's cache [tokens, n_kv_heads * head_dim].
RowMatrix<float> head_slice(const RowMatrix<float>& layer_cache, int64_t head, int64_t head_dim);

// xKV: one basis shared by a group of layers (same tokens; features may differ per layer).
class CrossLayerBasis {
 public:
  // layers[l] is layer l's calibration cache [tokens, features_l], all with the same tokens.
  static CrossLayerBasis fit(std::span<const RowMatrix<float>> layers, const LowRankOptions& options = {});

  int64_t layers() const { return static_cast<int64_t>(offsets_.size()) - 1; }
  int64_t rank() const { return joint_.rank(); }
  // The basis of the concatenated features; its spectrum and error curve are those of the group.
  const LowRankBasis& joint() const { return joint_; }
  CrossLayerBasis truncated(int64_t k) const;

  // The group's caches (same tokens, the fitted features) -> shared coefficients [tokens, rank].
  RowMatrix<float> project(std::span<const RowMatrix<float>> layers) const;
  // Layer l's approximation [tokens, features_l] from the shared coefficients.
  RowMatrix<float> reconstruct(const RowMatrix<float>& coefficients, int64_t layer) const;

 private:
  LowRankBasis joint_;
  std::vector<int64_t> offsets_;  // layer l's features are columns offsets_[l] .. offsets_[l + 1] - 1
};

}  // namespace strata::kv

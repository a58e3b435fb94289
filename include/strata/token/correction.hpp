#pragma once
// A correction of the pooled embedding of a token-reduced encoder toward the dense encoder's, fitted on
// calibration passages encoded both ways. Merging averages tokens, so the mean of the final hidden states
// may drift systematically (a shift common to all passages, or a linear distortion); the correction maps
// the merged pool back before the L2 normalisation:
//
//   shift:  y = x + (mean(dense) - mean(merged))
//   affine: y = x W + b, the least-squares map with a ridge penalty lambda ||W - I||^2 (toward no change)
//           and an unpenalised intercept; lambda -> infinity gives the shift.
//
// A correction belongs to one reducer configuration (method, schedule, matching): fit one per configuration.
// Applying it costs one dim-vector add (shift) or a [dim, dim] product per passage (affine).
//
//   const auto c = token::EmbeddingCorrection::fit(merged_pools, dense_pools, {});
//   Tensor e = token::embed_corrected(encoder, batch, &merge, c);     // unit rows, as encoder.embed
#include <cstdint>
#include <string>
#include <vector>

#include "strata/core/eigen.hpp"
#include "strata/core/tensor.hpp"
#include "strata/nn/bert.hpp"

namespace strata::token {

// Mean pooling without the L2 normalisation: each sequence's mean over its packed rows of `states`
// ([total tokens, dim], as BertEncoder::forward returns them) -> [batch.size, dim].
RowMatrix<float> mean_pool(const nn::TokenBatch& batch, const Tensor& states);

enum class CorrectionKind { none, shift, affine };
CorrectionKind parse_correction(const std::string& name);  // "none", "shift" or "affine"

struct CorrectionOptions {
  CorrectionKind kind = CorrectionKind::affine;
  // Affine: candidate ridges, relative to the merged pools' mean variance per dimension times the number of
  // pairs (lambda = ridge * trace(Xc^T Xc) / dim), so that a ridge means the same whatever the scale.
  std::vector<double> ridges = {1e-4, 1e-3, 1e-2, 0.1, 1};
  // Affine with more than one ridge: every holdout_every-th pair (from the first) is held out, each ridge is
  // fitted on the others and scored by the held-out mean cosine to the dense pools; the best ridge is then
  // refitted on all pairs.
  int64_t holdout_every = 4;
};

class EmbeddingCorrection {
 public:
  EmbeddingCorrection() = default;  // no change

  // merged[i] and dense[i]: the pre-normalisation pools of passage i, [pairs, dim] each.
  static EmbeddingCorrection shift(const RowMatrix<float>& merged, const RowMatrix<float>& dense);
  // The ridge-regularised affine map for one ridge (relative, as in CorrectionOptions::ridges; > 0).
  static EmbeddingCorrection affine(const RowMatrix<float>& merged, const RowMatrix<float>& dense, double ridge);
  // options.kind, with the ridge chosen on held-out pairs for affine. Throws strata::Error naming the option at
  // fault (too few pairs for the holdout, a non-positive ridge, mismatched shapes).
  static EmbeddingCorrection fit(const RowMatrix<float>& merged, const RowMatrix<float>& dense,
                                 const CorrectionOptions& options);

  CorrectionKind kind() const { return kind_; }
  double ridge() const { return ridge_; }  // the relative ridge of an affine map; 0 otherwise
  // Held-out mean cosine per candidate ridge, in CorrectionOptions::ridges order (fit with several ridges).
  const std::vector<double>& holdout_cosine() const { return holdout_cosine_; }
  const Eigen::RowVectorXf& bias() const { return bias_; }
  const RowMatrix<float>& map() const { return map_; }  // [dim, dim]; empty unless affine

  // In place, rows are pre-normalisation pools: x -> x W + b (or x + b).
  void apply(RowMatrix<float>& pools) const;
  // apply, then each row divided by its norm (as sentence-transformers' Normalize) -> unit rows.
  RowMatrix<float> embed(RowMatrix<float> pools) const;

 private:
  CorrectionKind kind_ = CorrectionKind::none;
  double ridge_ = 0;
  std::vector<double> holdout_cosine_;
  Eigen::RowVectorXf bias_;
  RowMatrix<float> map_;
};

// encoder.embed with the correction between pooling and normalisation -> [batch.size, dim], unit rows.
Tensor embed_corrected(const nn::BertEncoder& encoder, const nn::TokenBatch& batch, nn::ForwardHooks* hooks,
                       const EmbeddingCorrection& correction);

}  // namespace strata::token

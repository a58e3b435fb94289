// Embedding correction of a token-reduced encoder: mean shift and ridge-regularised affine map (correction.hpp).
#include "strata/token/correction.hpp"

#include <algorithm>
#include <Eigen/Cholesky>
#include <cmath>
#include <limits>

#include "strata/core/error.hpp"

namespace strata::token {

namespace {

using MatrixD = Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic>;

void check_pairs(const RowMatrix<float>& merged, const RowMatrix<float>& dense, int64_t least) {
  require(merged.rows() == dense.rows() && merged.cols() == dense.cols(), "EmbeddingCorrection: merged pools are [",
          merged.rows(), ", ", merged.cols(), "], dense pools [", dense.rows(), ", ", dense.cols(),
          "]; they must match row for row");
  require(merged.cols() > 0 && merged.rows() >= least, "EmbeddingCorrection: ", merged.rows(),
          " pairs of width ", merged.cols(), "; at least ", least, " are needed");
}

double mean_cosine(const RowMatrix<float>& a, const RowMatrix<float>& b) {
  double sum = 0;
  for (int64_t i = 0; i < a.rows(); ++i) {
    const double na = a.row(i).norm(), nb = b.row(i).norm();
    sum += na > 0 && nb > 0 ? a.row(i).dot(b.row(i)) / (na * nb) : 0.0;
  }
  return sum / static_cast<double>(a.rows());
}

RowMatrix<float> rows_of(const RowMatrix<float>& m, const std::vector<int64_t>& idx) {
  RowMatrix<float> out(static_cast<int64_t>(idx.size()), m.cols());
  for (size_t i = 0; i < idx.size(); ++i) out.row(static_cast<int64_t>(i)) = m.row(idx[i]);
  return out;
}

}  // namespace

RowMatrix<float> mean_pool(const nn::TokenBatch& batch, const Tensor& states) {
  require(states.dtype() == DType::f32 && states.shape().rank() == 2, "mean_pool: states are ", states.shape().str(),
          "; float32 [tokens, dim] expected");
  const int64_t dim = states.dim(1);
  int64_t total = 0;
  for (int64_t s = 0; s < batch.size; ++s) total += batch.tokens(s);
  require(states.dim(0) == total, "mean_pool: states have ", states.dim(0), " rows, the batch ", total, " tokens");
  const Eigen::Map<const RowMatrix<float>> rows(states.view<const float>().data(), total, dim);
  RowMatrix<float> out(batch.size, dim);
  int64_t first = 0;
  for (int64_t s = 0; s < batch.size; ++s) {
    const int64_t n = batch.tokens(s);
    out.row(s) = rows.middleRows(first, n).colwise().sum() / static_cast<float>(n);
    first += n;
  }
  return out;
}

CorrectionKind parse_correction(const std::string& name) {
  if (name == "none") return CorrectionKind::none;
  if (name == "shift") return CorrectionKind::shift;
  if (name == "affine") return CorrectionKind::affine;
  throw Error("correction '" + name + "' is unknown; use none, shift or affine");
}

EmbeddingCorrection EmbeddingCorrection::shift(const RowMatrix<float>& merged, const RowMatrix<float>& dense) {
  check_pairs(merged, dense, 1);
  EmbeddingCorrection c;
  c.kind_ = CorrectionKind::shift;
  c.bias_ = (dense.cast<double>().colwise().mean() - merged.cast<double>().colwise().mean()).cast<float>();
  return c;
}

EmbeddingCorrection EmbeddingCorrection::affine(const RowMatrix<float>& merged, const RowMatrix<float>& dense,
                                                double ridge) {
  check_pairs(merged, dense, 2);
  require(ridge > 0 && std::isfinite(ridge), "EmbeddingCorrection: ridge is ", ridge, "; it must be positive");
  const int64_t d = merged.cols();
  const MatrixD x = merged.cast<double>(), y = dense.cast<double>();
  const Eigen::RowVectorXd mx = x.colwise().mean(), my = y.colwise().mean();
  const MatrixD xc = x.rowwise() - mx, yc = y.rowwise() - my;
  // argmin ||Yc - Xc W||^2 + lambda ||W - I||^2:  (Xc^T Xc + lambda I) W = Xc^T Yc + lambda I.
  MatrixD gram = xc.transpose() * xc;
  const double lambda = ridge * gram.trace() / static_cast<double>(d);
  require(lambda > 0, "EmbeddingCorrection: the merged pools do not vary; no affine map can be fitted");
  MatrixD rhs = xc.transpose() * yc;
  gram.diagonal().array() += lambda;
  rhs.diagonal().array() += lambda;
  const MatrixD w = gram.llt().solve(rhs);
  EmbeddingCorrection c;
  c.kind_ = CorrectionKind::affine;
  c.ridge_ = ridge;
  c.map_ = w.cast<float>();
  c.bias_ = (my - mx * w).cast<float>();
  return c;
}

EmbeddingCorrection EmbeddingCorrection::fit(const RowMatrix<float>& merged, const RowMatrix<float>& dense,
                                             const CorrectionOptions& o) {
  switch (o.kind) {
    case CorrectionKind::none:
      check_pairs(merged, dense, 0);
      return {};
    case CorrectionKind::shift:
      return shift(merged, dense);
    case CorrectionKind::affine:
      break;
  }
  require(!o.ridges.empty(), "EmbeddingCorrection: option 'ridges' is empty");
  if (o.ridges.size() == 1) return affine(merged, dense, o.ridges[0]);
  require(o.holdout_every >= 2, "EmbeddingCorrection: option 'holdout_every' is ", o.holdout_every,
          "; at least 2 (one pair in holdout_every is held out)");
  check_pairs(merged, dense, 2 * o.holdout_every);
  std::vector<int64_t> train, held;
  for (int64_t i = 0; i < merged.rows(); ++i) (i % o.holdout_every == 0 ? held : train).push_back(i);
  const RowMatrix<float> xt = rows_of(merged, train), yt = rows_of(dense, train), xh = rows_of(merged, held),
                         yh = rows_of(dense, held);
  std::vector<double> scores;
  double best = -std::numeric_limits<double>::infinity();
  double best_ridge = o.ridges[0];
  for (double ridge : o.ridges) {
    const EmbeddingCorrection c = affine(xt, yt, ridge);
    RowMatrix<float> p = xh;
    c.apply(p);
    scores.push_back(mean_cosine(p, yh));
    if (scores.back() > best) {
      best = scores.back();
      best_ridge = ridge;
    }
  }
  EmbeddingCorrection c = affine(merged, dense, best_ridge);
  c.holdout_cosine_ = std::move(scores);
  return c;
}

void EmbeddingCorrection::apply(RowMatrix<float>& pools) const {
  if (kind_ == CorrectionKind::none) return;
  require(pools.cols() == bias_.size(), "EmbeddingCorrection::apply: pools are ", pools.cols(),
          " wide, the correction was fitted on width ", bias_.size());
  if (kind_ == CorrectionKind::affine) pools = pools * map_;
  pools.rowwise() += bias_;
}

RowMatrix<float> EmbeddingCorrection::embed(RowMatrix<float> pools) const {
  apply(pools);
  for (int64_t i = 0; i < pools.rows(); ++i) pools.row(i) /= std::max(pools.row(i).norm(), 1e-12f);
  return pools;
}

Tensor embed_corrected(const nn::BertEncoder& encoder, const nn::TokenBatch& batch, nn::ForwardHooks* hooks,
                       const EmbeddingCorrection& correction) {
  const RowMatrix<float> e = correction.embed(mean_pool(batch, encoder.forward(batch, hooks)));
  Tensor out(DType::f32, Shape{e.rows(), e.cols()});
  std::copy(e.data(), e.data() + e.size(), out.view<float>().data());
  return out;
}

}  // namespace strata::token

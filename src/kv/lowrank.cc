#include "strata/kv/lowrank.hpp"

#include <algorithm>
#include <cmath>

#include "strata/core/error.hpp"
#include "strata/linalg/svd.hpp"

namespace strata::kv {

namespace {

void check_finite(const RowMatrix<float>& x, const char* fn) {
  if (x.allFinite()) return;
  for (int64_t i = 0; i < x.rows(); ++i)
    for (int64_t j = 0; j < x.cols(); ++j)
      if (!std::isfinite(x(i, j))) fail(fn, ": calibration cache has a non-finite value (", x(i, j), ") at (", i, ", ", j, ")");
}

}  // namespace

LowRankBasis LowRankBasis::fit(const RowMatrix<float>& calibration, const LowRankOptions& options) {
  return fit(std::span<const RowMatrix<float>>(&calibration, 1), options);
}

LowRankBasis LowRankBasis::fit(std::span<const RowMatrix<float>> calibration, const LowRankOptions& options) {
  require(!calibration.empty(), "kv::LowRankBasis::fit: no calibration caches");
  const int64_t f = calibration[0].cols();
  int64_t n = 0;
  for (const auto& c : calibration) {
    require(c.cols() == f, "kv::LowRankBasis::fit: calibration caches have ", f, " and ", c.cols(), " features");
    check_finite(c, "kv::LowRankBasis::fit");
    n += c.rows();
  }
  require(n > 0 && f > 0, "kv::LowRankBasis::fit: calibration data is empty (", n, " x ", f, ")");
  Matrix<double> x(n, f);
  int64_t at = 0;
  for (const auto& c : calibration) {
    x.middleRows(at, c.rows()) = c.cast<double>();
    at += c.rows();
  }
  const int64_t k = std::min(n, f);
  require(options.rank >= 0 && options.rank <= k, "kv::LowRankBasis::fit: rank ", options.rank, " outside 0..", k,
          " for calibration data [", n, ", ", f, "]");

  linalg::SvdResult<double> s;
  if (options.solver == SvdSolver::randomized) {
    require(options.rank >= 1, "kv::LowRankBasis::fit: the randomized solver needs a rank >= 1");
    linalg::RandomizedSvdOptions ro;
    ro.rank = options.rank;
    ro.oversampling = options.oversampling;
    ro.power_iterations = options.power_iterations;
    ro.seed = options.seed;
    s = linalg::randomized_svd(x, ro);
  } else {
    s = linalg::svd(x);
  }
  const int64_t r = options.rank == 0 ? k : options.rank;
  LowRankBasis b;
  b.basis_ = s.V.leftCols(r).cast<float>();
  b.spectrum_ = std::move(s.S);
  b.energy_ = x.squaredNorm();
  return b;
}

double LowRankBasis::relative_error(int64_t k) const {
  require(k >= 0 && k <= spectrum_.size(), "kv::LowRankBasis::relative_error: rank ", k, " outside 0..",
          spectrum_.size());
  if (energy_ == 0) return 0;
  const double kept = spectrum_.head(k).squaredNorm();
  return std::max(0.0, energy_ - kept) / energy_;
}

std::vector<double> LowRankBasis::error_curve() const {
  std::vector<double> e;
  for (int64_t k = 0; k <= spectrum_.size(); ++k) e.push_back(relative_error(k));
  return e;
}

LowRankBasis LowRankBasis::truncated(int64_t k) const {
  require(k >= 1 && k <= rank(), "kv::LowRankBasis::truncated: rank ", k, " outside 1..", rank());
  LowRankBasis b = *this;
  b.basis_ = basis_.leftCols(k);
  return b;
}

RowMatrix<float> LowRankBasis::project(const RowMatrix<float>& x) const {
  require(x.cols() == features(), "kv::LowRankBasis::project: rows have ", x.cols(), " features, the basis ",
          features());
  return x * basis_;
}

RowMatrix<float> LowRankBasis::reconstruct(const RowMatrix<float>& coefficients) const {
  require(coefficients.cols() == rank(), "kv::LowRankBasis::reconstruct: ", coefficients.cols(),
          " coefficients per token, the basis has rank ", rank());
  return coefficients * basis_.transpose();
}

uint64_t LowRankBasis::coefficient_bytes(int64_t tokens) const {
  require(tokens >= 0, "kv::LowRankBasis::coefficient_bytes: negative token count ", tokens);
  return static_cast<uint64_t>(tokens * rank()) * sizeof(float);
}

RowMatrix<float> head_slice(const RowMatrix<float>& layer_cache, int64_t head, int64_t head_dim) {
  require(head_dim >= 1 && layer_cache.cols() % head_dim == 0, "kv::head_slice: ", layer_cache.cols(),
          " columns are not whole heads of ", head_dim);
  require(head >= 0 && head < layer_cache.cols() / head_dim, "kv::head_slice: head ", head, " outside 0..",
          layer_cache.cols() / head_dim - 1);
  return layer_cache.middleCols(head * head_dim, head_dim);
}

CrossLayerBasis CrossLayerBasis::fit(std::span<const RowMatrix<float>> layers, const LowRankOptions& options) {
  require(!layers.empty(), "kv::CrossLayerBasis::fit: no layers");
  const int64_t n = layers[0].rows();
  CrossLayerBasis c;
  c.offsets_.push_back(0);
  for (size_t l = 0; l < layers.size(); ++l) {
    require(layers[l].rows() == n, "kv::CrossLayerBasis::fit: layer ", l, " has ", layers[l].rows(),
            " tokens, layer 0 has ", n);
    c.offsets_.push_back(c.offsets_.back() + layers[l].cols());
  }
  RowMatrix<float> joint(n, c.offsets_.back());
  for (size_t l = 0; l < layers.size(); ++l) joint.middleCols(c.offsets_[l], layers[l].cols()) = layers[l];
  c.joint_ = LowRankBasis::fit(joint, options);
  return c;
}

CrossLayerBasis CrossLayerBasis::truncated(int64_t k) const {
  CrossLayerBasis c = *this;
  c.joint_ = joint_.truncated(k);
  return c;
}

RowMatrix<float> CrossLayerBasis::project(std::span<const RowMatrix<float>> layers) const {
  require(static_cast<int64_t>(layers.size()) == this->layers(), "kv::CrossLayerBasis::project: got ", layers.size(),
          " layers, the basis was fitted on ", this->layers());
  const int64_t n = layers[0].rows();
  RowMatrix<float> p = RowMatrix<float>::Zero(n, rank());
  for (size_t l = 0; l < layers.size(); ++l) {
    const int64_t f = offsets_[l + 1] - offsets_[l];
    require(layers[l].rows() == n && layers[l].cols() == f, "kv::CrossLayerBasis::project: layer ", l, " is [",
            layers[l].rows(), ", ", layers[l].cols(), "], expected [", n, ", ", f, "]");
    p.noalias() += layers[l] * joint_.basis().middleRows(offsets_[l], f);
  }
  return p;
}

RowMatrix<float> CrossLayerBasis::reconstruct(const RowMatrix<float>& coefficients, int64_t layer) const {
  require(layer >= 0 && layer < layers(), "kv::CrossLayerBasis::reconstruct: layer ", layer, " outside 0..",
          layers() - 1);
  require(coefficients.cols() == rank(), "kv::CrossLayerBasis::reconstruct: ", coefficients.cols(),
          " coefficients per token, the basis has rank ", rank());
  const size_t l = static_cast<size_t>(layer);
  return coefficients * joint_.basis().middleRows(offsets_[l], offsets_[l + 1] - offsets_[l]).transpose();
}

}  // namespace strata::kv

// Patterns, score-based masks, magnitude and Wanda pruning.
#include <algorithm>
#include <cmath>
#include <numeric>

#include "strata/compress/prune/prune.hpp"
#include "strata/core/parallel.hpp"

namespace strata::compress::prune {

Pattern Pattern::unstructured(double sparsity) {
  require(std::isfinite(sparsity) && sparsity >= 0.0 && sparsity < 1.0, "prune: sparsity must be in [0, 1), got ",
          sparsity);
  Pattern p;
  p.sparsity = sparsity;
  return p;
}

Pattern Pattern::n_of_m(int n, int m) {
  require(m >= 2 && m <= 64 && n >= 1 && n < m, "prune: pattern ", n, ":", m,
          " must have 1 <= N < M <= 64 (N of every M inputs are zero)");
  Pattern p;
  p.sparsity = static_cast<double>(n) / m;
  p.n = n;
  p.m = m;
  return p;
}

int64_t Pattern::pruned_per_row(int64_t cols) const {
  if (semi_structured()) {
    require(cols % m == 0, "prune: pattern ", n, ":", m, " needs the input count to be a multiple of ", m, ", got ",
            cols);
    return cols / m * n;
  }
  // The epsilon keeps 0.29 * 100 from flooring to 28; masks round down like Wanda and SparseGPT do.
  const auto pruned = static_cast<int64_t>(std::floor(sparsity * static_cast<double>(cols) + 1e-9));
  return std::clamp<int64_t>(pruned, 0, cols);
}

std::string Pattern::str() const {
  if (semi_structured()) return "pattern=" + std::to_string(n) + ":" + std::to_string(m);
  std::string s = std::to_string(sparsity);
  while (s.size() > 1 && s.back() == '0') s.pop_back();
  if (!s.empty() && s.back() == '.') s.pop_back();
  return "sparsity=" + s;
}

namespace detail {

void check_weight(const RowMatrix<float>& w, std::string_view name) {
  require(w.rows() > 0 && w.cols() > 0, "layer '", name, "': empty weight [", w.rows(), ", ", w.cols(), "]");
  for (int64_t r = 0; r < w.rows(); ++r)
    for (int64_t c = 0; c < w.cols(); ++c)
      require(std::isfinite(w(r, c)), "layer '", name, "': weight has a non-finite value (", w(r, c), ") at (", r,
              ", ", c, ")");
}

void prune_lowest(const double* scores, int64_t count, int64_t drop, uint8_t* keep, int64_t* order) {
  std::iota(order, order + count, int64_t{0});
  for (int64_t j = 0; j < count; ++j) keep[j] = 1;
  if (drop <= 0) return;
  const auto lower = [scores](int64_t a, int64_t b) { return scores[a] < scores[b] || (scores[a] == scores[b] && a < b); };
  if (drop < count) std::nth_element(order, order + drop, order + count, lower);
  for (int64_t j = 0; j < std::min(drop, count); ++j) keep[order[j]] = 0;
}

}  // namespace detail

Mask mask_from_scores(const RowMatrix<double>& scores, const Pattern& pattern) {
  const int64_t rows = scores.rows(), cols = scores.cols();
  const int64_t drop = pattern.pruned_per_row(cols);
  Mask mask(rows, cols);
  parallel_for(rows, 16, [&](int64_t r0, int64_t r1) {
    std::vector<int64_t> order(static_cast<size_t>(cols));
    for (int64_t r = r0; r < r1; ++r) {
      const double* s = scores.data() + r * cols;
      uint8_t* k = mask.data() + r * cols;
      if (pattern.semi_structured()) {
        for (int64_t g = 0; g < cols; g += pattern.m) detail::prune_lowest(s + g, pattern.m, pattern.n, k + g, order.data());
      } else {
        detail::prune_lowest(s, cols, drop, k, order.data());
      }
    }
  });
  return mask;
}

namespace {

Pruned apply_mask(const RowMatrix<float>& w, Mask mask) {
  Pruned p{w, std::move(mask)};
  for (int64_t i = 0; i < p.weight.size(); ++i)
    if (!p.mask.data()[i]) p.weight.data()[i] = 0.0f;
  return p;
}

}  // namespace

Pruned magnitude(const RowMatrix<float>& w, const Pattern& pattern, std::string_view name) {
  detail::check_weight(w, name);
  (void)pattern.pruned_per_row(w.cols());
  const RowMatrix<double> scores = w.cast<double>().cwiseAbs();
  return apply_mask(w, mask_from_scores(scores, pattern));
}

Pruned wanda(const RowMatrix<float>& w, const Vector<double>& mean_sq, const Pattern& pattern, std::string_view name) {
  detail::check_weight(w, name);
  require(mean_sq.size() == w.cols(), "layer '", name, "': input statistics have ", mean_sq.size(),
          " channels, the weight has ", w.cols(), " inputs");
  for (int64_t j = 0; j < mean_sq.size(); ++j)
    require(std::isfinite(mean_sq[j]) && mean_sq[j] >= 0, "layer '", name, "': input mean square of channel ", j,
            " is ", mean_sq[j]);
  (void)pattern.pruned_per_row(w.cols());
  const Eigen::RowVectorXd norm = mean_sq.cwiseSqrt().transpose();
  RowMatrix<double> scores = w.cast<double>().cwiseAbs();
  scores.array().rowwise() *= norm.array();
  return apply_mask(w, mask_from_scores(scores, pattern));
}

}  // namespace strata::compress::prune

// Logistic regression by Newton's method with an L2 penalty, and the recall-calibrated threshold.
#include "strata/gated/logistic.hpp"

#include <Eigen/Cholesky>
#include <algorithm>
#include <cmath>
#include <functional>
#include <vector>

#include "strata/core/error.hpp"

namespace strata::gated {

namespace {

// log(1 + exp(z)) without overflow.
double softplus(double z) { return z > 0 ? z + std::log1p(std::exp(-z)) : std::log1p(std::exp(z)); }
double sigmoid(double z) {
  if (z >= 0) return 1.0 / (1.0 + std::exp(-z));
  const double e = std::exp(z);
  return e / (1.0 + e);
}

}  // namespace

double LogisticModel::logit(std::span<const float> x) const {
  require(static_cast<int64_t>(x.size()) == features(), "LogisticModel: features has ", x.size(),
          " values, the model takes ", features());
  double z = bias;
  for (int64_t j = 0; j < features(); ++j)
    z += weights[j] * (static_cast<double>(x[static_cast<std::size_t>(j)]) - mean[j]) * inv_std[j];
  return z;
}

Vector<double> LogisticModel::logits(const RowMatrix<float>& x) const {
  require(x.cols() == features(), "LogisticModel: features has ", x.cols(), " columns, the model takes ", features());
  const Vector<double> w = weights.cwiseProduct(inv_std);
  const double b = bias - w.dot(mean);
  return (x.cast<double>() * w).array() + b;
}

LogisticModel fit_logistic(const RowMatrix<float>& features, std::span<const uint8_t> labels,
                           const LogisticOptions& options) {
  const int64_t n = features.rows(), d = features.cols();
  require(n > 0 && d > 0, "fit_logistic: features is empty (", n, " x ", d, ")");
  require(static_cast<int64_t>(labels.size()) == n, "fit_logistic: features has ", n, " rows, labels has ",
          labels.size(), " entries");
  require(features.allFinite(), "fit_logistic: features has a non-finite value");
  require(options.l2 > 0 && std::isfinite(options.l2), "fit_logistic: l2 must be positive and finite, got ",
          options.l2);
  require(options.positive_weight > 0 && std::isfinite(options.positive_weight),
          "fit_logistic: positive_weight must be positive and finite, got ", options.positive_weight);
  require(options.max_iterations > 0, "fit_logistic: max_iterations must be positive, got ", options.max_iterations);
  require(options.tolerance > 0, "fit_logistic: tolerance must be positive, got ", options.tolerance);
  int64_t positives = 0;
  for (std::size_t i = 0; i < labels.size(); ++i) {
    require(labels[i] <= 1, "fit_logistic: labels[", i, "] is ", int{labels[i]}, "; labels are 0 or 1");
    positives += labels[i];
  }
  require(positives > 0 && positives < n, "fit_logistic: labels hold one class only (", positives,
          " positives among ", n, "); the gate needs both");

  LogisticModel m;
  Matrix<double> x = features.cast<double>();
  m.mean = Vector<double>::Zero(d);
  m.inv_std = Vector<double>::Ones(d);
  if (options.standardize) {
    m.mean = x.colwise().mean().transpose();
    x.rowwise() -= m.mean.transpose();
    for (int64_t j = 0; j < d; ++j) {
      const double sd = std::sqrt(x.col(j).squaredNorm() / static_cast<double>(n));
      m.inv_std[j] = sd > 0 ? 1.0 / sd : 0.0;
    }
    x = x * m.inv_std.asDiagonal();
  }

  Vector<double> y(n), c(n);
  for (int64_t i = 0; i < n; ++i) {
    y[i] = labels[static_cast<std::size_t>(i)];
    c[i] = y[i] > 0 ? options.positive_weight : 1.0;
  }
  const double total = c.sum();
  const double l2 = options.l2;

  // theta = [w; b].
  Vector<double> theta = Vector<double>::Zero(d + 1);
  const auto objective = [&](const Vector<double>& t) {
    const Vector<double> z = (x * t.head(d)).array() + t[d];
    double loss = 0;
    for (int64_t i = 0; i < n; ++i) loss += c[i] * (softplus(z[i]) - y[i] * z[i]);
    return loss / total + 0.5 * l2 * t.head(d).squaredNorm();
  };
  double f = objective(theta);
  Vector<double> grad(d + 1), p(n), r(n);
  for (int it = 0; it < options.max_iterations; ++it) {
    const Vector<double> z = (x * theta.head(d)).array() + theta[d];
    for (int64_t i = 0; i < n; ++i) {
      p[i] = sigmoid(z[i]);
      r[i] = c[i] * (p[i] - y[i]) / total;
    }
    grad.head(d) = x.transpose() * r + l2 * theta.head(d);
    grad[d] = r.sum();
    m.gradient_max = grad.cwiseAbs().maxCoeff();
    if (m.gradient_max < options.tolerance) break;

    Vector<double> s(n);
    for (int64_t i = 0; i < n; ++i) s[i] = c[i] * p[i] * (1.0 - p[i]) / total;
    Matrix<double> h(d + 1, d + 1);
    const Matrix<double> xs = x.transpose() * s.asDiagonal();
    h.topLeftCorner(d, d).noalias() = xs * x;
    h.topLeftCorner(d, d).diagonal().array() += l2;
    h.col(d).head(d) = xs.rowwise().sum();
    h.row(d).head(d) = h.col(d).head(d).transpose();
    // A hair of curvature on the intercept keeps the system definite when every p is 0 or 1.
    h(d, d) = s.sum() + 1e-12;
    const Vector<double> step = h.ldlt().solve(grad);
    double alpha = 1.0, f_new = f;
    Vector<double> next;
    for (int halving = 0; halving < 40; ++halving, alpha *= 0.5) {
      next = theta - alpha * step;
      f_new = objective(next);
      if (f_new <= f) break;
    }
    m.iterations = it + 1;
    if (!(f_new <= f)) break;  // no decrease along the Newton direction: at the optimum to rounding
    theta = next;
    f = f_new;
  }
  m.weights = theta.head(d);
  m.bias = theta[d];
  return m;
}

double threshold_for_recall(std::span<const double> scores, std::span<const uint8_t> labels, double recall) {
  require(recall > 0 && recall <= 1, "threshold_for_recall: recall must be in (0, 1], got ", recall);
  require(!scores.empty(), "threshold_for_recall: scores is empty (an empty calibration split)");
  require(scores.size() == labels.size(), "threshold_for_recall: scores has ", scores.size(), " entries, labels has ",
          labels.size());
  std::vector<double> positive;
  for (std::size_t i = 0; i < scores.size(); ++i)
    if (labels[i] != 0) {
      require(std::isfinite(scores[i]), "threshold_for_recall: scores[", i, "] is not finite");
      positive.push_back(scores[i]);
    }
  require(!positive.empty(), "threshold_for_recall: labels hold no positive; a recall needs positives");
  // Inputs that must pass; the small slack keeps 0.97 * 100 from rounding up to 98.
  const auto need = static_cast<std::size_t>(
      std::clamp(std::ceil(recall * static_cast<double>(positive.size()) - 1e-9), 1.0,
                 static_cast<double>(positive.size())));
  std::nth_element(positive.begin(), positive.begin() + static_cast<std::ptrdiff_t>(need - 1), positive.end(),
                   std::greater<>());
  return positive[need - 1];
}

}  // namespace strata::gated

#pragma once
// Binary logistic regression fitted by Newton's method (iteratively reweighted least squares) with an
// L2 penalty, and the threshold that keeps a requested share of the positives: the two halves of a
// gate that stops most inputs of an always-on model early.
#include <cstdint>
#include <span>

#include "strata/core/eigen.hpp"

namespace strata::gated {

struct LogisticOptions {
  double l2 = 1e-3;                // lambda in (lambda / 2) ||w||^2; the intercept is not penalised
  double positive_weight = 1.0;    // weight of a positive example's loss (a negative's is 1)
  bool standardize = true;         // fit on features shifted to mean 0 and scaled to variance 1
  int max_iterations = 100;        // Newton steps
  double tolerance = 1e-8;         // stop when the gradient's largest entry is below it
};

// The fitted head. logit(x) = weights . ((x - mean) * inv_std) + bias; with standardize off, mean is 0
// and inv_std is 1.
struct LogisticModel {
  Vector<double> mean, inv_std, weights;
  double bias = 0.0;
  int iterations = 0;           // Newton steps taken
  double gradient_max = 0.0;    // largest gradient entry at the solution

  int64_t features() const { return weights.size(); }
  double logit(std::span<const float> x) const;
  // One logit per row of x [n, features].
  Vector<double> logits(const RowMatrix<float>& x) const;
};

// Minimises  (1 / sum_i c_i) sum_i c_i [log(1 + exp(z_i)) - y_i z_i] + (l2 / 2) ||w||^2,
// z_i = w . x~_i + b, c_i = positive_weight for y_i = 1 and 1 otherwise, x~ the (standardised)
// features. Newton steps solve the (features + 1)-square Hessian system with LDLT and halve the step
// until the objective decreases. labels[i] is 0 or 1. Throws strata::Error naming the option at fault:
// "features" (empty, non-finite, rows != labels), "labels" (a value other than 0/1, one class only),
// "l2", "positive_weight", "max_iterations", "tolerance".
LogisticModel fit_logistic(const RowMatrix<float>& features, std::span<const uint8_t> labels,
                           const LogisticOptions& options = {});

// The gate's threshold for a target recall on positives: with P positives among `scores`, the
// ceil(recall * P)-th highest positive score, so that inputs scoring >= threshold include at least that
// share of the positives. Throws strata::Error naming "recall" outside (0, 1], "scores" when empty or of a
// length other than the labels', and "labels" when there is no positive.
double threshold_for_recall(std::span<const double> scores, std::span<const uint8_t> labels, double recall);

}  // namespace strata::gated

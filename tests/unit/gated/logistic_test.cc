// The gate's logistic fit against its optimality condition written out directly, a separable case and
// a hand-standardised refit; its recall threshold against direct counting; the refusals.
#include "strata/gated/logistic.hpp"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <random>
#include <vector>

#include "strata/core/error.hpp"

namespace strata::gated {
namespace {

using ::testing::HasSubstr;

struct Data {
  RowMatrix<float> x;
  std::vector<uint8_t> y;
};

// Labels drawn from a logistic model on correlated features, so the classes overlap.
Data noisy(int64_t n, int64_t d, uint64_t seed, double positive_rate_shift = 0.0) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> g(0.0f, 1.0f);
  std::uniform_real_distribution<double> u(0.0, 1.0);
  Data data{RowMatrix<float>(n, d), std::vector<uint8_t>(static_cast<std::size_t>(n))};
  std::vector<double> w(static_cast<std::size_t>(d));
  for (auto& v : w) v = g(rng);
  for (int64_t i = 0; i < n; ++i) {
    double z = positive_rate_shift;
    const float common = g(rng);
    for (int64_t j = 0; j < d; ++j) {
      data.x(i, j) = g(rng) + 0.5f * common + (j == 0 ? 3.0f : 0.0f);
      z += w[static_cast<std::size_t>(j)] * (data.x(i, j) - (j == 0 ? 3.0 : 0.0));
    }
    data.y[static_cast<std::size_t>(i)] = u(rng) < 1.0 / (1.0 + std::exp(-z)) ? 1 : 0;
  }
  return data;
}

// The objective's gradient with respect to (w, b), written out from its definition in raw features.
Vector<double> gradient(const Data& d, const Vector<double>& w, double b, double l2, double positive_weight) {
  const int64_t n = d.x.rows(), m = d.x.cols();
  Vector<double> g = Vector<double>::Zero(m + 1);
  double total = 0;
  for (int64_t i = 0; i < n; ++i) {
    double z = b;
    for (int64_t j = 0; j < m; ++j) z += w[j] * d.x(i, j);
    const double y = d.y[static_cast<std::size_t>(i)];
    const double c = y > 0 ? positive_weight : 1.0;
    const double r = c * (1.0 / (1.0 + std::exp(-z)) - y);
    for (int64_t j = 0; j < m; ++j) g[j] += r * d.x(i, j);
    g[m] += r;
    total += c;
  }
  g /= total;
  g.head(m) += l2 * w;
  return g;
}

TEST(Logistic, GradientVanishesAtTheSolution) {
  const Data d = noisy(600, 10, 7);
  for (double pw : {1.0, 4.0}) {
    LogisticOptions o;
    o.l2 = 1e-2;
    o.positive_weight = pw;
    o.standardize = false;
    const LogisticModel m = fit_logistic(d.x, d.y, o);
    const Vector<double> g = gradient(d, m.weights, m.bias, o.l2, pw);
    EXPECT_LT(g.cwiseAbs().maxCoeff(), 1e-7) << "positive_weight " << pw;
    EXPECT_GT(m.weights.norm(), 0.1);
    // A step away from the solution raises the gradient: the check is not vacuous.
    Vector<double> w = m.weights;
    w[0] += 0.1;
    EXPECT_GT(gradient(d, w, m.bias, o.l2, pw).cwiseAbs().maxCoeff(), 1e-3);
  }
}

TEST(Logistic, StandardisedFitEqualsAFitOnHandStandardisedFeatures) {
  const Data d = noisy(500, 6, 11);
  LogisticOptions o;
  o.l2 = 5e-3;
  const LogisticModel m = fit_logistic(d.x, d.y, o);

  Data s = d;
  for (int64_t j = 0; j < d.x.cols(); ++j) {
    double mean = 0, var = 0;
    for (int64_t i = 0; i < d.x.rows(); ++i) mean += d.x(i, j);
    mean /= static_cast<double>(d.x.rows());
    for (int64_t i = 0; i < d.x.rows(); ++i) var += (d.x(i, j) - mean) * (d.x(i, j) - mean);
    const double sd = std::sqrt(var / static_cast<double>(d.x.rows()));
    for (int64_t i = 0; i < d.x.rows(); ++i) s.x(i, j) = static_cast<float>((d.x(i, j) - mean) / sd);
  }
  o.standardize = false;
  const LogisticModel r = fit_logistic(s.x, s.y, o);
  EXPECT_LT((m.weights - r.weights).cwiseAbs().maxCoeff(), 1e-4);
  EXPECT_NEAR(m.bias, r.bias, 1e-4);
  // logits() in raw features equals the hand-standardised model's.
  const Vector<double> a = m.logits(d.x), b = r.logits(s.x);
  EXPECT_LT((a - b).cwiseAbs().maxCoeff(), 1e-3);
  for (int64_t i = 0; i < 5; ++i)
    EXPECT_NEAR(m.logit(std::span<const float>(d.x.row(i).data(), static_cast<std::size_t>(d.x.cols()))), a[i],
                1e-4);
}

TEST(Logistic, SeparableCaseIsClassifiedExactly) {
  // Positives have x0 > 0.5, negatives x0 < -0.5; the second feature is noise.
  std::mt19937_64 rng(3);
  std::uniform_real_distribution<float> u(0.5f, 3.0f), noise(-1.0f, 1.0f);
  const int64_t n = 200;
  RowMatrix<float> x(n, 2);
  std::vector<uint8_t> y(static_cast<std::size_t>(n));
  for (int64_t i = 0; i < n; ++i) {
    const bool pos = i % 5 == 0;
    x(i, 0) = pos ? u(rng) : -u(rng);
    x(i, 1) = noise(rng);
    y[static_cast<std::size_t>(i)] = pos;
  }
  LogisticOptions o;
  o.l2 = 1e-4;
  const LogisticModel m = fit_logistic(x, y, o);
  const Vector<double> z = m.logits(x);
  for (int64_t i = 0; i < n; ++i) EXPECT_EQ(z[i] > 0, y[static_cast<std::size_t>(i)] == 1) << "row " << i;
  EXPECT_GT(m.weights[0], 5.0 * std::abs(m.weights[1]));
}

TEST(Logistic, RefusesBadInput) {
  const Data d = noisy(50, 3, 5);
  const auto message = [](auto&& f) {
    try {
      f();
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  const std::vector<uint8_t> zeros(50, 0), ones(50, 1);
  EXPECT_THAT(message([&] { fit_logistic(d.x, zeros); }), HasSubstr("labels hold one class only"));
  EXPECT_THAT(message([&] { fit_logistic(d.x, ones); }), HasSubstr("labels hold one class only"));
  EXPECT_THAT(message([&] { fit_logistic(RowMatrix<float>(0, 3), {}); }), HasSubstr("features is empty"));
  EXPECT_THAT(message([&] { fit_logistic(d.x, std::span(d.y).first(10)); }), HasSubstr("labels has 10"));
  std::vector<uint8_t> two = d.y;
  two[3] = 2;
  EXPECT_THAT(message([&] { fit_logistic(d.x, two); }), HasSubstr("labels[3] is 2"));
  RowMatrix<float> bad = d.x;
  bad(4, 1) = std::numeric_limits<float>::quiet_NaN();
  EXPECT_THAT(message([&] { fit_logistic(bad, d.y); }), HasSubstr("non-finite"));
  LogisticOptions o;
  o.l2 = 0;
  EXPECT_THAT(message([&] { fit_logistic(d.x, d.y, o); }), HasSubstr("l2"));
  o = {};
  o.positive_weight = -1;
  EXPECT_THAT(message([&] { fit_logistic(d.x, d.y, o); }), HasSubstr("positive_weight"));
}

TEST(RecallThreshold, MeetsTheRecallByDirectCounting) {
  std::mt19937_64 rng(9);
  std::normal_distribution<double> g(0.0, 1.0);
  for (int trial = 0; trial < 20; ++trial) {
    const int64_t n = 50 + 37 * trial;
    std::vector<double> s(static_cast<std::size_t>(n));
    std::vector<uint8_t> y(static_cast<std::size_t>(n));
    for (int64_t i = 0; i < n; ++i) {
      y[static_cast<std::size_t>(i)] = i % 7 == 0;
      // Coarse scores make ties, the case where >= and > differ.
      s[static_cast<std::size_t>(i)] = std::round((g(rng) + (y[static_cast<std::size_t>(i)] ? 1.5 : 0.0)) * 4) / 4;
    }
    int64_t positives = 0;
    for (auto v : y) positives += v;
    for (double recall : {0.3, 0.5, 0.9, 0.97, 0.99, 1.0}) {
      const double t = threshold_for_recall(s, y, recall);
      int64_t at_or_above = 0, above = 0;
      for (int64_t i = 0; i < n; ++i)
        if (y[static_cast<std::size_t>(i)]) {
          at_or_above += s[static_cast<std::size_t>(i)] >= t;
          above += s[static_cast<std::size_t>(i)] > t;
        }
      const double need = std::ceil(recall * static_cast<double>(positives) - 1e-9);
      EXPECT_GE(static_cast<double>(at_or_above), need) << "recall " << recall << " n " << n;
      // The highest such threshold: any higher one misses the target.
      EXPECT_LT(static_cast<double>(above), need) << "recall " << recall << " n " << n;
    }
  }
}

TEST(RecallThreshold, RefusesBadInput) {
  const std::vector<double> s = {0.1, 0.5, 0.9};
  const std::vector<uint8_t> y = {0, 1, 1}, none = {0, 0, 0};
  for (double r : {0.0, -0.2, 1.01, std::numeric_limits<double>::quiet_NaN()}) {
    try {
      threshold_for_recall(s, y, r);
      ADD_FAILURE() << "recall " << r << " accepted";
    } catch (const Error& e) {
      EXPECT_THAT(e.what(), HasSubstr("recall must be in (0, 1]"));
    }
  }
  EXPECT_THROW(threshold_for_recall({}, {}, 0.9), Error);
  try {
    threshold_for_recall(s, none, 0.9);
    ADD_FAILURE() << "no positives accepted";
  } catch (const Error& e) {
    EXPECT_THAT(e.what(), HasSubstr("labels hold no positive"));
  }
  EXPECT_DOUBLE_EQ(threshold_for_recall(s, y, 1.0), 0.5);
  EXPECT_DOUBLE_EQ(threshold_for_recall(s, y, 0.5), 0.9);
}

}  // namespace
}  // namespace strata::gated

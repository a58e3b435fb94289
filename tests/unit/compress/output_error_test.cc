// The relative output error tr(dW H dW^T) / tr(W H W^T) every compressor's table entries use, against
// the formula evaluated directly in double: for a positive definite H, and for a semidefinite one
// (dead input channels, fewer samples than inputs), which takes the pivoted factorization.
#include <gtest/gtest.h>

#include <random>

#include "strata/compress/compressor.hpp"

namespace strata::compress {
namespace {

double direct(const RowMatrix<float>& w, const RowMatrix<float>& w_hat, const Matrix<double>& h) {
  const Matrix<double> d = (w - w_hat).cast<double>(), wd = w.cast<double>();
  return (d * h * d.transpose()).trace() / (wd * h * wd.transpose()).trace();
}

// H = X^T X / n for n samples of `cols` inputs with channel scales over two orders of magnitude;
// channels in `dead` are always zero.
Matrix<double> gram(int64_t n, int64_t cols, const std::vector<int64_t>& dead, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<double> g;
  Matrix<double> x(n, cols);
  for (int64_t j = 0; j < cols; ++j) {
    const double scale = std::pow(10.0, 2.0 * j / static_cast<double>(cols));
    for (int64_t i = 0; i < n; ++i) x(i, j) = scale * g(rng) + 0.3 * (j > 0 ? x(i, j - 1) : 0.0);
  }
  for (int64_t j : dead) x.col(j).setZero();
  return x.transpose() * x / static_cast<double>(n);
}

TEST(OutputErrorMeter, EqualsTheDirectFormula) {
  const int64_t rows = 40, cols = 96;
  std::mt19937 rng(5);
  std::normal_distribution<float> g;
  RowMatrix<float> w(rows, cols);
  for (int64_t i = 0; i < w.size(); ++i) w.data()[i] = g(rng);
  struct Case {
    const char* name;
    Matrix<double> h;
  };
  const std::vector<Case> cases = {{"positive definite", gram(400, cols, {}, 1)},
                                   {"dead channels", gram(400, cols, {3, 50, 95}, 2)},
                                   {"fewer samples than inputs", gram(60, cols, {}, 3)}};
  for (const auto& c : cases) {
    const OutputErrorMeter meter(w, &c.h);
    for (float noise : {1e-3f, 1e-2f, 0.3f}) {
      RowMatrix<float> w_hat = w;
      for (int64_t i = 0; i < w_hat.size(); ++i) w_hat.data()[i] += noise * g(rng);
      const double want = direct(w, w_hat, c.h);
      EXPECT_NEAR(meter(w_hat), want, 1e-5 * want) << c.name << ", noise " << noise;
      EXPECT_NEAR(output_error(w, w_hat, &c.h), want, 1e-5 * want) << c.name;
    }
    EXPECT_EQ(meter(w), 0.0) << c.name;
  }
  // Without H: the plain relative squared error.
  RowMatrix<float> w_hat = w * 0.9f;
  EXPECT_NEAR(output_error(w, w_hat, nullptr), 0.01, 1e-6);
  const Matrix<double> wrong = Matrix<double>::Identity(cols + 1, cols + 1);
  EXPECT_THROW(OutputErrorMeter(w, &wrong), Error);
}

}  // namespace
}  // namespace strata::compress

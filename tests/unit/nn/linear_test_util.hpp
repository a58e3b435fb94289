#pragma once
// What the compressed-layer tests share: inputs, an independent product, and the tolerance check.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "strata/core/eigen.hpp"

namespace strata::linear_test {

inline std::vector<float> inputs(int64_t n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> g;
  std::vector<float> x(static_cast<size_t>(n));
  for (auto& v : x) v = g(rng);
  return x;
}

// y = W x by a plain loop in double over the dense weights: a reference independent of the layers.
inline std::vector<float> plain_product(const RowMatrix<float>& w, const std::vector<float>& x, int64_t tokens) {
  std::vector<float> y(static_cast<size_t>(tokens * w.rows()));
  for (int64_t t = 0; t < tokens; ++t)
    for (int64_t r = 0; r < w.rows(); ++r) {
      double s = 0;
      for (int64_t j = 0; j < w.cols(); ++j) s += static_cast<double>(w(r, j)) * x[static_cast<size_t>(t * w.cols() + j)];
      y[static_cast<size_t>(t * w.rows() + r)] = static_cast<float>(s);
    }
  return y;
}

// |a - b| <= tol * sum_j |w_j x_j| for every output: the bound float summation in any order keeps.
// w is [rows, cols] and x [tokens, cols], row-major; a and b are [tokens, rows].
inline void expect_close(const std::vector<float>& a, const std::vector<float>& b, const float* w, const float* x,
                         int64_t rows, int64_t cols, int64_t tokens, double tol, const std::string& what) {
  for (int64_t t = 0; t < tokens; ++t)
    for (int64_t r = 0; r < rows; ++r) {
      double mag = 0;
      for (int64_t j = 0; j < cols; ++j) mag += std::abs(static_cast<double>(w[r * cols + j]) * x[t * cols + j]);
      const size_t i = static_cast<size_t>(t * rows + r);
      ASSERT_LE(std::abs(static_cast<double>(a[i]) - b[i]), tol * mag + 1e-30)
          << what << ": token " << t << " row " << r << " of [" << rows << ", " << cols << "], " << tokens << " tokens";
    }
}

}  // namespace strata::linear_test

// InputStats: the Hessian against X^T X / N computed directly, before and after packing.
#include "strata/nn/calibration.hpp"

#include <gtest/gtest.h>

#include <random>

#include "strata/core/error.hpp"

namespace strata::nn {
namespace {

TEST(InputStats, PackedHessianIsTheSameNumbersInHalfTheMemory) {
  const int64_t n = 37, tokens = 101;
  std::mt19937 rng(5);
  std::normal_distribution<float> d(0.0f, 2.0f);
  RowMatrix<float> x(tokens, n);
  for (int64_t i = 0; i < x.size(); ++i) x.data()[i] = d(rng);
  InputStats st(n, /*keep_gram=*/true);
  st.add(x.data(), 60, n);  // two calls, as windows arrive
  st.add(x.data() + 60 * n, tokens - 60, n);
  const Matrix<double> before = st.hessian();
  const Matrix<double> xd = x.cast<double>();
  const Matrix<double> direct = xd.transpose() * xd / static_cast<double>(tokens);
  EXPECT_LT((before - direct).cwiseAbs().maxCoeff(), 1e-9 * direct.cwiseAbs().maxCoeff());
  const uint64_t full_bytes = st.bytes();
  st.pack();
  EXPECT_EQ(st.gram.size(), 0);
  EXPECT_LT(st.bytes(), full_bytes / 2 + static_cast<uint64_t>(4 * n) * sizeof(double));
  const Matrix<double> after = st.hessian();
  EXPECT_EQ(after, before);  // the same sums, bit for bit
  EXPECT_THROW(st.add(x.data(), 1, n), Error);
}

}  // namespace
}  // namespace strata::nn

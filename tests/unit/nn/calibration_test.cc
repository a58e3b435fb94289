// InputStats: the Hessian against X^T X / N computed directly, before and after packing, also with
// the Gram matrix leaving out or clipping a pass's loudest tokens.
#include "strata/nn/calibration.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <string>
#include <utility>
#include <vector>

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

// The Gram of the rows of x whose factor in `scale` is not 0, each scaled by it, in double, over
// their count.
Matrix<double> gram_of(const RowMatrix<float>& x, const std::vector<double>& scale) {
  Matrix<double> g = Matrix<double>::Zero(x.cols(), x.cols());
  int64_t n = 0;
  for (int64_t t = 0; t < x.rows(); ++t) {
    if (scale[static_cast<size_t>(t)] == 0) continue;
    const Vector<double> r = x.row(t).transpose().cast<double>() * scale[static_cast<size_t>(t)];
    g += r * r.transpose();
    ++n;
  }
  return g / static_cast<double>(n);
}

// Two windows of 60 and 41 tokens whose first two tokens are 30x louder than the rest, as the first
// positions of a small LLM are.
RowMatrix<float> loud_first_tokens(int64_t n) {
  std::mt19937 rng(7);
  std::normal_distribution<float> d(0.0f, 1.0f);
  RowMatrix<float> x(101, n);
  for (int64_t i = 0; i < x.size(); ++i) x.data()[i] = d(rng);
  for (const int64_t t : {0, 1, 60, 61}) x.row(t) *= 30.0f;
  return x;
}

TEST(Calibration, GramWithoutTheFirstTokensOfEachPassKeepsTheImatrix) {
  const int64_t n = 24;
  const RowMatrix<float> x = loud_first_tokens(n);
  Calibration all(CalibrationOptions{true, false}), skip(CalibrationOptions{true, false, 2});
  const std::string names[2] = {"blk.0.ffn_gate.weight", "blk.0.ffn_up.weight"};
  for (Calibration* c : {&all, &skip}) {
    c->on_linear_input(0, names, x.data(), 60, n);
    c->on_linear_input(0, names, x.data() + 60 * n, 41, n);
  }
  std::vector<double> keep(101, 1.0);
  for (const int64_t t : {0, 1, 60, 61}) keep[static_cast<size_t>(t)] = 0;
  const Matrix<double> expected = gram_of(x, keep);
  const Matrix<double> h = skip.stats("blk.0.ffn_up.weight").hessian();
  EXPECT_LT((h - expected).cwiseAbs().maxCoeff(), 1e-9 * expected.cwiseAbs().maxCoeff());
  // Every token still counts in the imatrix; and leaving the loud tokens out changed the Hessian.
  EXPECT_EQ(skip.stats("blk.0.ffn_gate.weight").tokens, 101);
  EXPECT_EQ(skip.stats("blk.0.ffn_gate.weight").mean_sq(), all.stats("blk.0.ffn_gate.weight").mean_sq());
  EXPECT_GT((all.stats("blk.0.ffn_gate.weight").hessian() - expected).cwiseAbs().maxCoeff(),
            0.5 * expected.cwiseAbs().maxCoeff());
}

TEST(Calibration, GramClippedAtAQuantileOfEachPassesTokenNorms) {
  const int64_t n = 24;
  const RowMatrix<float> x = loud_first_tokens(n);
  const double q = 0.9;
  Calibration clip(CalibrationOptions{true, false, 1, q});
  const std::string names[1] = {"blk.0.ffn_down.weight"};
  clip.on_linear_input(0, names, x.data(), 60, n);
  clip.on_linear_input(0, names, x.data() + 60 * n, 41, n);
  // Direct: per window, the first token out; the others' squared norms sorted, the cap at rank
  // floor(q * (kept - 1)), a token above it scaled to the cap.
  std::vector<double> scale(101, 0.0);
  const std::pair<int64_t, int64_t> windows[2] = {{0, 60}, {60, 101}};
  for (const auto& [begin, end] : windows) {
    std::vector<double> norms;
    for (int64_t t = begin + 1; t < end; ++t) norms.push_back(x.row(t).cast<double>().squaredNorm());
    std::vector<double> sorted = norms;
    std::sort(sorted.begin(), sorted.end());
    const double cap = sorted[static_cast<size_t>(q * static_cast<double>(sorted.size() - 1))];
    int clipped = 0;
    for (int64_t t = begin + 1; t < end; ++t) {
      const double v = norms[static_cast<size_t>(t - begin - 1)];
      scale[static_cast<size_t>(t)] = v > cap ? std::sqrt(cap / v) : 1.0;
      clipped += v > cap;
    }
    EXPECT_GE(clipped, 2);  // the loud second token and the largest ordinary ones
  }
  const Matrix<double> expected = gram_of(x, scale);
  const Matrix<double> h = clip.stats("blk.0.ffn_down.weight").hessian();
  EXPECT_LT((h - expected).cwiseAbs().maxCoeff(), 1e-9 * expected.cwiseAbs().maxCoeff());
  EXPECT_EQ(clip.stats("blk.0.ffn_down.weight").tokens, 101);
}

TEST(Calibration, RefusesBadGramOptions) {
  for (const CalibrationOptions& bad :
       {CalibrationOptions{true, false, -1}, CalibrationOptions{true, false, 0, 1.5},
        CalibrationOptions{true, false, 0, -0.5}}) {
    EXPECT_THROW({ Calibration c(bad); }, Error);
  }
  // A pass no longer than the tokens skipped adds nothing to the Gram matrix.
  Calibration c(CalibrationOptions{true, false, 4});
  const std::string names[1] = {"x"};
  const std::vector<float> x(3 * 5, 1.0f);
  c.on_linear_input(0, names, x.data(), 3, 5);
  EXPECT_THROW(c.stats("x").hessian(), Error);
}

}  // namespace
}  // namespace strata::nn

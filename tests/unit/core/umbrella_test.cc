// The umbrella header alone is enough to use every module: this file includes nothing else of
// strata, and touches one piece of each module (a missing include fails to compile here).
#include "strata/strata.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <string>
#include <vector>

namespace strata {
namespace {

TEST(Umbrella, EveryModuleIsReachable) {
  // core
  const Tensor t(DType::f32, Shape{2, 3});
  EXPECT_EQ(t.nbytes(), 24u);
  EXPECT_GE(STRATA_VERSION_MAJOR, 0);

  // linalg: the singular values of diag(2, 3), largest first
  Matrix<double> a = Matrix<double>::Zero(2, 2);
  a(0, 0) = 2;
  a(1, 1) = 3;
  const auto s = linalg::svd(a);
  EXPECT_NEAR(s.S[0], 3.0, 1e-12);
  EXPECT_NEAR(s.S[1], 2.0, 1e-12);

  // kernels: ggml's Q4_0 packs 32 weights per block
  EXPECT_EQ(kernels::ggml_block_size(kernels::GgmlType::Q4_0), 32u);

  // io
  EXPECT_EQ(io::format_name(io::FileFormat::gguf), "gguf");

  // nn: [[1, 2], [3, 4]] times (1, 1)
  RowMatrix<float> w(2, 2);
  w << 1, 2, 3, 4;
  const nn::DenseLinear lin(w);
  const float x[2] = {1, 1};
  float y[2] = {0, 0};
  lin.forward(x, 1, y);
  EXPECT_EQ(y[0], 3.0f);
  EXPECT_EQ(y[1], 7.0f);

  // compress
  EXPECT_EQ(compress::find_compressor("prune.channels").name(), "prune.channels");

  // budget
  EXPECT_TRUE(budget::glob_match("blk.*.ffn_down.weight", "blk.12.ffn_down.weight"));
  EXPECT_FALSE(budget::glob_match("blk.*.ffn_down.weight", "blk.12.ffn_up.weight"));

  // kv
  const auto names = kv::scorer_names();
  EXPECT_NE(std::find(names.begin(), names.end(), "h2o"), names.end());

  // gated: the threshold that keeps both of two positives
  const std::vector<double> scores = {0.2, 0.7, 0.9};
  const std::vector<uint8_t> labels = {0, 1, 1};
  EXPECT_EQ(gated::threshold_for_recall(scores, labels, 1.0), 0.7);

  // pipeline
  const pipeline::CalibrateOptions calibrate;
  EXPECT_GT(calibrate.sequences, 0);
}

}  // namespace
}  // namespace strata

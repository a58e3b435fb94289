// Layers in ggml block formats against a plain loop over their dequantized weights, and SmolLM2 run
// in its file's own types against its float32 copy.
#include "strata/nn/ggml_linear.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <vector>

#include "strata/compress/ggml/quantize.hpp"
#include "strata/core/error.hpp"
#include "strata/io/model.hpp"
#include "strata/kernels/ggml_dequant.hpp"
#include "strata/nn/llama.hpp"
#include "test_util.hpp"

namespace strata::nn {
namespace {

using kernels::GgmlType;

std::filesystem::path smollm_path() { return strata::testing::models_dir() / "smollm2-135m-instruct-q4_1.gguf"; }

std::vector<float> random_floats(int64_t n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> d(0.0f, 1.0f);
  std::vector<float> v(static_cast<size_t>(n));
  for (auto& x : v) x = d(rng);
  return v;
}

struct Case {
  GgmlType type;
  int64_t rows, cols;
};

// y = W x over the dequantized weights, in double: independent of the layer's kernels and tiling.
std::vector<double> reference_product(GgmlType t, const std::vector<std::byte>& blocks, int64_t rows, int64_t cols,
                                      const std::vector<float>& x, int64_t tokens, std::vector<double>* scale) {
  std::vector<float> w(static_cast<size_t>(rows * cols));
  kernels::dequantize(t, blocks, w.data(), rows * cols);
  std::vector<double> y(static_cast<size_t>(tokens * rows));
  scale->assign(y.size(), 0.0);
  for (int64_t k = 0; k < tokens; ++k)
    for (int64_t r = 0; r < rows; ++r) {
      double acc = 0, mag = 0;
      for (int64_t c = 0; c < cols; ++c) {
        const double p = static_cast<double>(w[static_cast<size_t>(r * cols + c)]) * x[static_cast<size_t>(k * cols + c)];
        acc += p;
        mag += std::abs(p);
      }
      y[static_cast<size_t>(k * rows + r)] = acc;
      (*scale)[static_cast<size_t>(k * rows + r)] = mag;
    }
  return y;
}

TEST(GgmlLinear, EveryBatchSizeMatchesTheDequantizedProduct) {
  const std::vector<Case> cases = {{GgmlType::Q4_0, 37, 96},   {GgmlType::Q4_1, 64, 576},  {GgmlType::Q5_0, 5, 64},
                                   {GgmlType::Q5_1, 17, 128},  {GgmlType::Q8_0, 33, 320},  {GgmlType::IQ4_NL, 9, 64},
                                   {GgmlType::Q2_K, 11, 256},  {GgmlType::Q3_K, 7, 512},   {GgmlType::Q4_K, 300, 768},
                                   {GgmlType::Q5_K, 3, 256},   {GgmlType::Q6_K, 65, 1536}};
  for (const Case& c : cases) {
    const auto w = random_floats(c.rows * c.cols, 7);
    const GgmlLinear layer(c.type, c.rows, c.cols, compress::ggml::quantize(c.type, w.data(), c.rows, c.cols));
    for (int64_t tokens : {1, 3, 16, 17, 40}) {
      const auto x = random_floats(tokens * c.cols, 100 + tokens);
      std::vector<float> y(static_cast<size_t>(tokens * c.rows), std::nanf(""));
      layer.forward(x.data(), tokens, y.data());
      std::vector<double> scale;
      std::vector<std::byte> blocks(layer.blocks().begin(), layer.blocks().end());
      const auto want = reference_product(c.type, blocks, c.rows, c.cols, x, tokens, &scale);
      for (size_t i = 0; i < y.size(); ++i)
        ASSERT_NEAR(y[i], want[i], 2e-6 * scale[i] + 1e-6)
            << layer.describe() << ", " << tokens << " tokens, output " << i;
    }
    EXPECT_EQ(layer.weight_bytes(), kernels::ggml_row_size(c.type, c.cols) * static_cast<uint64_t>(c.rows));
    const RowMatrix<float> dense = layer.dense_weight();
    std::vector<float> row(static_cast<size_t>(c.cols));
    layer.dequantize_row(c.rows - 1, row.data());
    for (int64_t j = 0; j < c.cols; ++j) ASSERT_EQ(row[static_cast<size_t>(j)], dense(c.rows - 1, j));
  }
}

TEST(GgmlLinear, BorrowedBytesAtAnyAlignment) {
  const int64_t rows = 6, cols = 256;
  const auto w = random_floats(rows * cols, 3);
  const auto blocks = compress::ggml::quantize(GgmlType::Q4_K, w.data(), rows, cols);
  auto owner = std::make_shared<std::vector<std::byte>>(blocks.size() + 1);
  std::copy(blocks.begin(), blocks.end(), owner->begin() + 1);  // one byte off any alignment
  const GgmlLinear borrowed(GgmlType::Q4_K, rows, cols, std::span<const std::byte>(owner->data() + 1, blocks.size()),
                            owner);
  const GgmlLinear owned(GgmlType::Q4_K, rows, cols, blocks);
  const auto x = random_floats(cols, 4);
  std::vector<float> a(rows), b(rows);
  borrowed.forward(x.data(), 1, a.data());
  owned.forward(x.data(), 1, b.data());
  EXPECT_EQ(a, b);
}

TEST(GgmlLinear, BadShapesAndShortBuffersAreErrors) {
  const std::vector<std::byte> q4k(kernels::ggml_row_size(GgmlType::Q4_K, 256) * 2);
  EXPECT_THROW(GgmlLinear(GgmlType::Q4_K, 2, 256, std::vector<std::byte>(q4k.begin(), q4k.end() - 1)), Error);
  EXPECT_THROW(GgmlLinear(GgmlType::Q4_K, 4, 128, q4k), Error);  // 128 columns: no whole super-block
  EXPECT_THROW(GgmlLinear(GgmlType::Q4_K, 0, 256, std::vector<std::byte>{}), Error);
  EXPECT_THROW(GgmlLinear(GgmlType::Q8_1, 2, 32, std::vector<std::byte>(72)), Error);  // strata cannot read Q8_1
}

TEST(GgmlEmbedding, LookupIsTheDequantizedRow) {
  const int64_t rows = 40, cols = 64;
  const auto w = random_floats(rows * cols, 9);
  auto table = std::make_shared<const GgmlLinear>(GgmlType::Q8_0, rows, cols,
                                                  compress::ggml::quantize(GgmlType::Q8_0, w.data(), rows, cols));
  const GgmlEmbedding e(table);
  const RowMatrix<float> dense = e.dense();
  std::vector<float> row(cols);
  for (int32_t tok : {0, 17, 39}) {
    e.lookup(tok, row.data());
    for (int64_t j = 0; j < cols; ++j) ASSERT_EQ(row[static_cast<size_t>(j)], dense(tok, j));
  }
  EXPECT_EQ(e.as_linear().get(), table.get());  // a tied head reads the same bytes
}

// ---- SmolLM2 in its stored types ----

class SmolLM2Stored : public ::testing::Test {
 protected:
  void SetUp() override { STRATA_REQUIRE_FILE(smollm_path(), "run scripts/fetch-models.sh"); }
};

int32_t argmax(const std::vector<float>& v) {
  return static_cast<int32_t>(std::max_element(v.begin(), v.end()) - v.begin());
}

// The margin between the best and the second-best logit.
float top2_gap(const std::vector<float>& v) {
  std::vector<float> s = v;
  std::partial_sort(s.begin(), s.begin() + 2, s.end(), std::greater<float>());
  return s[0] - s[1];
}

TEST_F(SmolLM2Stored, HoldsAboutTheFileAndDecodesTheSameGreedyTokensAsItsFloatCopy) {
  std::shared_ptr<const io::Model> file = io::open_model(smollm_path());
  const LlamaModel stored = LlamaModel::load_stored(file);
  const LlamaModel dense = LlamaModel::load(*file);
  // Every linear layer and the embedding stay in the file's types: the model holds what the file does.
  EXPECT_LE(stored.weight_bytes(), file->total_bytes() + file->total_bytes() / 4);
  EXPECT_GT(dense.weight_bytes(), 4 * file->total_bytes());
  EXPECT_NE(stored.linear("blk.0.attn_q.weight").describe().find("Q4_1"), std::string::npos);

  const int64_t vocab = stored.config().vocab_size;
  const std::vector<int32_t> prompt = {1, 504, 3070, 28, 253, 1565, 30, 216};
  LlamaSession a(stored, 64), b(dense, 64);
  std::vector<float> la(static_cast<size_t>(vocab)), lb(static_cast<size_t>(vocab));
  a.forward(prompt, la.data(), Logits::last);  // prefill: the tiled path
  b.forward(prompt, lb.data(), Logits::last);
  for (int step = 0; step < 32; ++step) {
    const int32_t ta = argmax(la), tb = argmax(lb);
    // Kernels and BLAS add in different orders; tokens may only part where the two best logits are
    // within that rounding of each other.
    if (ta != tb) {
      EXPECT_LT(top2_gap(lb), 1e-3f) << "greedy tokens part at step " << step << ": " << ta << " vs " << tb;
      return;
    }
    float max_diff = 0;
    for (int64_t v = 0; v < vocab; ++v) max_diff = std::max(max_diff, std::abs(la[static_cast<size_t>(v)] - lb[static_cast<size_t>(v)]));
    ASSERT_LT(max_diff, 1e-2f) << "step " << step;
    const int32_t tok[1] = {ta};
    a.forward(tok, la.data(), Logits::last);  // decode: the block kernels
    b.forward(tok, lb.data(), Logits::last);
  }
}

}  // namespace
}  // namespace strata::nn

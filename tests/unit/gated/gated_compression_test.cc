// GatedCompression on all-MiniLM-L6-v2 (skipped when it is not fetched): the split forward pass equals
// the whole one, the compressed hand-off keeps the embeddings, the threshold keeps the calibration
// recall by direct counting, and the refusals name the option.
#include "strata/gated/gated_compression.hpp"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <vector>

#include "strata/core/error.hpp"
#include "test_util.hpp"

namespace strata::gated {
namespace {

using ::testing::HasSubstr;

const std::vector<std::string>& sentences() {
  static const std::vector<std::string> s = {
      "Call me Ishmael.",
      "The whale rose slowly from the deep, white and silent under the grey sky.",
      "The harpooneers sharpened their irons on the deck before dawn.",
      "The ship sailed south past the cape with every sail set.",
      "Congress must act to balance the federal budget this year.",
      "Our economy has added millions of new jobs since the last address.",
      "I ask the Senate to ratify the treaty without delay.",
      "The revenue from customs duties exceeded the estimates of the Treasury.",
  };
  return s;
}
const std::vector<uint8_t> kLabels = {1, 1, 1, 1, 0, 0, 0, 0};

class MiniLm : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    const auto dir = strata::testing::models_dir() / "all-minilm-l6-v2";
    if (std::filesystem::exists(dir / "model.safetensors")) model_ = new nn::SentenceEncoder(nn::SentenceEncoder::open(dir));
  }
  static void TearDownTestSuite() {
    delete model_;
    model_ = nullptr;
  }
  void SetUp() override {
    if (model_ == nullptr) GTEST_SKIP() << "all-minilm-l6-v2 not fetched (scripts/fetch-models.sh)";
  }
  static nn::TokenBatch batch() {
    nn::TokenBatch b;
    std::vector<std::vector<int32_t>> ids;
    for (const auto& s : sentences()) {
      ids.push_back(model_->tokenizer().encode(s));
      b.length = std::max<int64_t>(b.length, static_cast<int64_t>(ids.back().size()));
    }
    b.size = static_cast<int64_t>(ids.size());
    b.ids.assign(static_cast<std::size_t>(b.size * b.length), 0);
    b.attention_mask.assign(b.ids.size(), 0);
    for (std::size_t i = 0; i < ids.size(); ++i) {
      std::copy(ids[i].begin(), ids[i].end(), b.ids.begin() + static_cast<std::ptrdiff_t>(i) * b.length);
      std::fill_n(b.attention_mask.begin() + static_cast<std::ptrdiff_t>(i) * b.length, ids[i].size(), 1);
    }
    return b;
  }
  static inline nn::SentenceEncoder* model_ = nullptr;
};

TEST_F(MiniLm, SplitForwardEqualsTheWholeOne) {
  const nn::BertEncoder& enc = model_->encoder();
  const nn::TokenBatch b = batch();
  const Tensor whole = enc.forward(b);
  for (int64_t k : {0, 2, 5, 6}) {
    const Tensor front = enc.run_layers(b, enc.input_states(b), 0, k);
    const Tensor back = enc.run_layers(b, front, k, enc.config().n_layers);
    const float* a = whole.view<const float>().data();
    const float* c = back.view<const float>().data();
    float diff = 0;
    for (int64_t i = 0; i < whole.numel(); ++i) diff = std::max(diff, std::abs(a[i] - c[i]));
    EXPECT_LT(diff, 1e-5f) << "split at " << k;
  }
  const Tensor e = enc.embed(b), p = enc.pool(b, whole);
  for (int64_t i = 0; i < e.numel(); ++i) EXPECT_FLOAT_EQ(e.view<const float>().data()[i], p.view<const float>().data()[i]);
  EXPECT_THROW(enc.run_layers(b, whole, 4, 7), Error);
  EXPECT_THROW(enc.run_layers(b, Tensor(DType::f32, Shape{3, enc.config().dim}), 0, 1), Error);
}

TEST_F(MiniLm, GateAndHandOffKeepTheEmbeddings) {
  const nn::BertEncoder& enc = model_->encoder();
  const nn::TokenBatch b = batch();
  const int64_t k = 2, dim = enc.config().dim;
  const Tensor states = enc.run_layers(b, enc.input_states(b), 0, k);
  std::vector<int64_t> tokens;
  for (int64_t s = 0; s < b.size; ++s) tokens.push_back(b.tokens(s));
  const RowMatrix<float> pooled = mean_pool(tokens, states.view<const float>().data(), dim);
  // mean_pool against a direct sum over the first sequence's rows.
  for (int64_t j = 0; j < dim; j += 37) {
    double sum = 0;
    for (int64_t t = 0; t < tokens[0]; ++t) sum += states.view<const float>().data()[t * dim + j];
    EXPECT_NEAR(pooled(0, j), sum / static_cast<double>(tokens[0]), 1e-4);
  }
  const RowMatrix<float> rows = as_eigen(states.view<const float>());
  const ActivationCodec codec = ActivationCodec::fit(rows, {});
  LogisticOptions lo;
  lo.l2 = 1e-1;
  GatedCompression g = GatedCompression::fit(enc.config(), k, pooled, kLabels, pooled, kLabels, 1.0, codec, lo);
  const GatedCompression::Front f = g.front(enc, b);
  // Recall 1 on the calibration split, counted directly.
  for (std::size_t s = 0; s < kLabels.size(); ++s) {
    if (kLabels[s]) {
      EXPECT_TRUE(f.passed[s]) << "positive " << s;
    }
    EXPECT_EQ(f.passed[s] != 0, f.logits[s] >= g.threshold());
    EXPECT_EQ(f.payloads[s].empty(), !f.passed[s]);
  }
  std::vector<std::vector<uint8_t>> go;
  std::vector<int64_t> which;
  for (std::size_t s = 0; s < kLabels.size(); ++s)
    if (f.passed[s]) {
      go.push_back(f.payloads[s]);
      which.push_back(static_cast<int64_t>(s));
    }
  const Tensor e = g.back(enc, go), full = enc.embed(b);
  for (std::size_t i = 0; i < which.size(); ++i) {
    const std::span<const float> a(e.view<const float>().data() + static_cast<int64_t>(i) * dim,
                                   static_cast<std::size_t>(dim));
    const std::span<const float> c(full.view<const float>().data() + which[i] * dim, static_cast<std::size_t>(dim));
    EXPECT_GT(nn::cosine(a, c), 0.99f) << "sentence " << which[i];
  }
  // A corrupted payload is refused, naming it.
  go[0][ActivationCodec::kHeaderBytes + 5] ^= 0x10;
  try {
    g.back(enc, go);
    ADD_FAILURE() << "corrupted payload accepted";
  } catch (const Error& err) {
    EXPECT_THAT(err.what(), HasSubstr("payload"));
  }
}

TEST_F(MiniLm, RefusesBadInput) {
  const nn::BertEncoder& enc = model_->encoder();
  const int64_t dim = enc.config().dim;
  RowMatrix<float> x = RowMatrix<float>::Random(8, dim);
  const ActivationCodec codec = ActivationCodec::fit(x, {});
  const auto message = [&](auto&& f) {
    try {
      f();
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  const std::vector<uint8_t> one_class(8, 0);
  EXPECT_THAT(message([&] { GatedCompression::fit(enc.config(), 2, x, one_class, x, kLabels, 0.99, codec); }),
              HasSubstr("labels hold one class only"));
  EXPECT_THAT(message([&] {
                GatedCompression::fit(enc.config(), 2, x, kLabels, RowMatrix<float>(0, dim), {}, 0.99, codec);
              }),
              HasSubstr("calibration split is empty"));
  EXPECT_THAT(message([&] { GatedCompression::fit(enc.config(), 2, RowMatrix<float>(0, dim), {}, x, kLabels, 0.99, codec); }),
              HasSubstr("features is empty"));
  for (double r : {0.0, 1.5})
    EXPECT_THAT(message([&] { GatedCompression::fit(enc.config(), 2, x, kLabels, x, kLabels, r, codec); }),
                HasSubstr("recall must be in (0, 1]"));
  for (int64_t layer : {0, 6})
    EXPECT_THAT(message([&] { GatedCompression::fit(enc.config(), layer, x, kLabels, x, kLabels, 0.9, codec); }),
                HasSubstr("layer " + std::to_string(layer) + " is outside"));
  EXPECT_THAT(message([&] {
                GatedCompression g = GatedCompression::fit(enc.config(), 2, x, kLabels, x, kLabels, 0.9, codec);
                const std::vector<std::vector<uint8_t>> stopped(1);
                g.back(enc, stopped);
              }),
              HasSubstr("payload has 0 bytes"));
}

}  // namespace
}  // namespace strata::gated

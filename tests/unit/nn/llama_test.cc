#include "strata/nn/llama.hpp"

#include <gtest/gtest.h>

#include <cmath>
#include <map>

#include "strata/core/parallel.hpp"
#include "strata/io/model.hpp"
#include "strata/nn/calibration.hpp"
#include "strata/nn/eval.hpp"
#include "test_util.hpp"

namespace strata::nn {
namespace {

std::filesystem::path stories_path() {
  return strata::testing::shared_data_dir() / "models/stories260K/stories260K.bin";
}
std::filesystem::path smollm_path() {
  return strata::testing::models_dir() / "smollm2-135m-instruct-q4_1.gguf";
}

class Stories : public ::testing::Test {
 protected:
  void SetUp() override {
    STRATA_REQUIRE_FILE(stories_path(), "shared data: ../shared/data/models/stories260K");
    file_ = io::open_model(stories_path());
    model_ = std::make_unique<LlamaModel>(LlamaModel::load(*file_));
  }
  std::unique_ptr<io::Model> file_;
  std::unique_ptr<LlamaModel> model_;
};

float max_rel_diff(const std::vector<float>& a, const std::vector<float>& b) {
  float worst = 0, scale = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    worst = std::max(worst, std::abs(a[i] - b[i]));
    scale = std::max(scale, std::abs(a[i]));
  }
  return worst / scale;
}

TEST_F(Stories, ConfigFromCheckpoint) {
  const auto& c = model_->config();
  EXPECT_EQ(c.dim, 64);
  EXPECT_EQ(c.hidden_dim, 172);
  EXPECT_EQ(c.n_layers, 5);
  EXPECT_EQ(c.n_heads, 8);
  EXPECT_EQ(c.n_kv_heads, 4);
  EXPECT_EQ(c.vocab_size, 512);
  EXPECT_EQ(model_->linear_names().size(), 5u * 7 + 1);
}

// Batched prefill and token-by-token decode must give the same logits.
TEST_F(Stories, PrefillEqualsDecode) {
  const int64_t vocab = model_->config().vocab_size;
  const auto seqs = sample_sequences(*model_, 1, 48, 1, 5);
  const auto& toks = seqs[0];
  const int64_t n = static_cast<int64_t>(toks.size());
  std::vector<float> batched(static_cast<size_t>(n * vocab)), stepped(static_cast<size_t>(n * vocab));
  LlamaSession a(*model_, n), b(*model_, n);
  a.forward(toks, batched.data(), Logits::all);
  for (int64_t t = 0; t < n; ++t)
    b.forward(std::span<const int32_t>(toks).subspan(static_cast<size_t>(t), 1), stepped.data() + t * vocab,
              Logits::last);
  EXPECT_LT(max_rel_diff(batched, stepped), 1e-4f);
  // A prefill split in two chunks continues from the cache exactly as well.
  std::vector<float> chunked(static_cast<size_t>(n * vocab));
  LlamaSession c(*model_, n);
  c.forward(std::span<const int32_t>(toks).first(20), chunked.data(), Logits::all);
  c.forward(std::span<const int32_t>(toks).subspan(20), chunked.data() + 20 * vocab, Logits::all);
  EXPECT_LT(max_rel_diff(batched, chunked), 1e-4f);
}

// The attention probabilities a decode step hands its hooks (split over chunks of 256 cached tokens)
// are the last rows of those a prefill of the same tokens hands out (one query head at a time).
TEST_F(Stories, DecodeStepAttentionEqualsPrefillRows) {
  struct Recorder : ForwardHooks {
    bool wants_attention(int) const override { return true; }
    void on_attention(int layer, int head, const float* probs, int64_t q_len, int64_t k_len, int64_t) override {
      auto& row = last[{layer, head}];
      row.assign(probs + (q_len - 1) * k_len, probs + q_len * k_len);
    }
    std::map<std::pair<int, int>, std::vector<float>> last;
  };
  const auto seqs = sample_sequences(*model_, 1, 300, 1, 11);
  const std::span<const int32_t> toks(seqs[0]);
  const int64_t n = static_cast<int64_t>(toks.size()), vocab = model_->config().vocab_size;
  ASSERT_GT(n, 256);
  std::vector<float> logits(static_cast<size_t>(n * vocab));
  Recorder prefill, decode;
  LlamaSession(*model_, n).forward(toks, logits.data(), Logits::last, &prefill);
  LlamaSession stepped(*model_, n);
  stepped.forward(toks.first(static_cast<size_t>(n - 1)), logits.data(), Logits::last);
  stepped.forward(toks.subspan(static_cast<size_t>(n - 1)), logits.data(), Logits::last, &decode);
  ASSERT_EQ(decode.last.size(), static_cast<size_t>(model_->config().n_layers * model_->config().n_heads));
  for (const auto& [key, row] : decode.last) {
    const auto& want = prefill.last.at(key);
    ASSERT_EQ(row.size(), want.size());
    double sum = 0, worst = 0;
    for (size_t j = 0; j < row.size(); ++j) {
      sum += row[j];
      worst = std::max(worst, static_cast<double>(std::abs(row[j] - want[j])));
    }
    EXPECT_NEAR(sum, 1.0, 1e-5) << "layer " << key.first << " head " << key.second;
    EXPECT_LT(worst, 1e-5) << "layer " << key.first << " head " << key.second;
  }
}

// strata's own parallel loops give the same bits on any thread count, but OpenBLAS's sgemm need not:
// on an AMD EPYC (Zen 4) its 2-thread split rounds 64 x 172 x 64 products differently from one
// thread, so the logits agree to float rounding, not bit for bit.
TEST_F(Stories, ResultsAgreeForOneAndTwoThreads) {
  const auto seqs = sample_sequences(*model_, 1, 64, 1, 9);
  const int64_t vocab = model_->config().vocab_size;
  const int saved = num_threads();
  std::vector<float> one(seqs[0].size() * static_cast<size_t>(vocab)), two(one.size());
  set_num_threads(1);
  LlamaSession(*model_, 64).forward(seqs[0], one.data(), Logits::all);
  set_num_threads(2);
  LlamaSession(*model_, 64).forward(seqs[0], two.data(), Logits::all);
  set_num_threads(saved);
  EXPECT_LT(max_rel_diff(one, two), 1e-5f);
}

// The shared data README's sanity figure: the model's own samples (from BOS, up to the next BOS)
// have a mean NLL near 2.9-3.0 nats per token under the model.
TEST_F(Stories, OwnSamplesHaveExpectedLikelihood) {
  const int64_t vocab = model_->config().vocab_size;
  double nll = 0;
  int64_t count = 0;
  for (uint64_t s = 0; s < 24; ++s) {
    const int32_t bos[1] = {1};
    auto gen = generate(*model_, bos, 255, 1.0f, 1000 + s, /*stop_token=*/1);
    if (!gen.empty() && gen.back() == 1) gen.pop_back();
    std::vector<int32_t> seq = {1};
    seq.insert(seq.end(), gen.begin(), gen.end());
    if (seq.size() < 2) continue;
    std::vector<float> logits(seq.size() * static_cast<size_t>(vocab));
    LlamaSession(*model_, static_cast<int64_t>(seq.size())).forward(seq, logits.data(), Logits::all);
    for (size_t t = 1; t < seq.size(); ++t) {
      const float* row = logits.data() + (t - 1) * static_cast<size_t>(vocab);
      const float mx = *std::max_element(row, row + vocab);
      double sum = 0;
      for (int64_t v = 0; v < vocab; ++v) sum += std::exp(static_cast<double>(row[v] - mx));
      nll -= static_cast<double>(row[seq[t]] - mx) - std::log(sum);
      ++count;
    }
  }
  const double mean = nll / static_cast<double>(count);
  EXPECT_GT(mean, 2.6) << "mean NLL " << mean;
  EXPECT_LT(mean, 3.3) << "mean NLL " << mean;
}

TEST_F(Stories, ReplacingALayerChangesOutputAndKl) {
  LlamaModel perturbed = model_->clone();
  RowMatrix<float> w = model_->linear("blk.2.ffn_down.weight").dense_weight();
  w *= 0.5f;
  perturbed.set_linear("blk.2.ffn_down.weight", std::make_shared<DenseLinear>(w));
  auto seqs = sample_sequences(*model_, 1, 128, 1, 3);
  const auto kl = kl_divergence(*model_, perturbed, seqs[0], {128, 128, 0});
  EXPECT_GT(kl.mean_kl, 1e-4);
  RowMatrix<float> wrong(3, 3);
  EXPECT_THROW(perturbed.set_linear("blk.2.ffn_down.weight", std::make_shared<DenseLinear>(wrong)), Error);
  EXPECT_THROW(perturbed.set_linear("blk.9.nope", std::make_shared<DenseLinear>(w)), Error);
}

TEST_F(Stories, CalibrationCollectsGramAndChannelStatistics) {
  auto seqs = sample_sequences(*model_, 4, 64, 1, 21);
  size_t i = 0;
  Calibration calib;
  const auto report = calibrate(*model_, [&](std::vector<int32_t>& s) {
    if (i == seqs.size()) return false;
    s = seqs[i++];
    return true;
  }, calib);
  EXPECT_EQ(report.sequences, 4);
  for (const auto& name : model_->linear_names()) {
    if (name == "output.weight") continue;
    ASSERT_TRUE(calib.has(name)) << name;
    const auto& st = calib.stats(name);
    EXPECT_EQ(st.tokens, 4 * 64) << name;
    EXPECT_EQ(st.features, model_->linear(name).in_features());
    const auto h = st.hessian();
    EXPECT_NEAR((h - h.transpose()).norm(), 0.0, 1e-12);
    EXPECT_NEAR(h.diagonal().sum(), st.mean_sq().sum(), 1e-6 * st.mean_sq().sum()) << name;
  }
  // q, k and v share one input and therefore one set of statistics.
  EXPECT_EQ(&calib.stats("blk.0.attn_q.weight"), &calib.stats("blk.0.attn_v.weight"));
  const auto bi = calib.block_influence();
  ASSERT_EQ(bi.size(), 5u);
  for (double b : bi) EXPECT_TRUE(b > 0 && b < 1) << b;
  EXPECT_THROW(calib.stats("nope"), Error);
}

TEST_F(Stories, BadInputIsRejected) {
  LlamaSession s(*model_, 4);
  const int32_t bad[1] = {9999};
  EXPECT_THROW(s.forward(bad, nullptr, Logits::none), Error);
  const int32_t five[5] = {1, 2, 3, 4, 5};
  EXPECT_THROW(s.forward(five, nullptr, Logits::none), Error);
}

TEST(SmolLM2, GreedyDecodeIsConsistentWithPrefill) {
  STRATA_REQUIRE_FILE(smollm_path(), "run scripts/fetch-models.sh");
  auto file = io::open_model(smollm_path());
  const LlamaModel model = LlamaModel::load(*file);
  EXPECT_EQ(model.config().n_layers, 30);
  EXPECT_EQ(model.config().n_kv_heads, 3);
  const int64_t vocab = model.config().vocab_size;
  // "The capital of France is" in SmolLM2's vocabulary is irrelevant here: any ids will do.
  const std::vector<int32_t> toks = {504, 3575, 282, 4649, 314, 253, 1345, 30, 2};
  const int64_t n = static_cast<int64_t>(toks.size());
  std::vector<float> batched(static_cast<size_t>(n * vocab)), stepped(batched.size());
  LlamaSession a(model, n), b(model, n);
  a.forward(toks, batched.data(), Logits::all);
  for (int64_t t = 0; t < n; ++t)
    b.forward(std::span<const int32_t>(toks).subspan(static_cast<size_t>(t), 1), stepped.data() + t * vocab,
              Logits::last);
  EXPECT_LT(max_rel_diff(batched, stepped), 1e-4f);
}

}  // namespace
}  // namespace strata::nn

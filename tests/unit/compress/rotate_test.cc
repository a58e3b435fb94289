#include "strata/compress/rotate.hpp"

#include <gtest/gtest.h>

#include <cmath>
#include <unistd.h>

#include "strata/core/error.hpp"
#include "strata/io/gguf.hpp"
#include "strata/nn/llama.hpp"
#include "test_util.hpp"

namespace strata::compress {
namespace {

std::filesystem::path stories_path() {
  return strata::testing::shared_data_dir() / "models/stories260K/stories260K.bin";
}
std::filesystem::path smollm_path() { return strata::testing::models_dir() / "smollm2-135m-instruct-q4_1.gguf"; }
std::filesystem::path minilm_path() { return strata::testing::models_dir() / "all-minilm-l6-v2"; }

std::vector<float> logits_of(const nn::LlamaModel& m, const std::vector<int32_t>& tokens) {
  std::vector<float> out(tokens.size() * static_cast<size_t>(m.config().vocab_size));
  nn::LlamaSession s(m, static_cast<int64_t>(tokens.size()));
  s.forward(tokens, out.data(), nn::Logits::all);
  return out;
}

// Largest difference over the largest magnitude of the reference logits.
double rel_diff(const std::vector<float>& ref, const std::vector<float>& got) {
  double worst = 0, scale = 0;
  for (size_t i = 0; i < ref.size(); ++i) {
    worst = std::max(worst, std::abs(static_cast<double>(ref[i]) - got[i]));
    scale = std::max(scale, std::abs(static_cast<double>(ref[i])));
  }
  return worst / scale;
}

std::vector<int32_t> some_tokens(int64_t vocab, int n) {
  std::vector<int32_t> t;
  for (int i = 0; i < n; ++i) t.push_back(static_cast<int32_t>((1 + 37 * i * i + 11 * i) % vocab));
  return t;
}

TEST(Hadamard, OrdersMultiplyToN) {
  for (int64_t n : {1, 2, 4, 8, 12, 20, 24, 48, 64, 72, 384, 576, 768, 1536}) {
    const auto orders = hadamard_orders(n);
    ASSERT_FALSE(orders.empty()) << n;
    int64_t prod = 1;
    for (auto o : orders) prod *= o;
    EXPECT_EQ(prod, n);
  }
  EXPECT_TRUE(hadamard_orders(9).empty());
  EXPECT_TRUE(hadamard_orders(6).empty());
  EXPECT_THROW(hadamard_matrix(9), Error);
}

// H H^T = n I exactly, entries +-1: checked entry by entry.
TEST(Hadamard, MatricesAreHadamard) {
  for (int64_t n : {2, 4, 12, 20, 24, 44, 64, 72, 576}) {
    const Matrix<double> h = hadamard_matrix(n);
    ASSERT_EQ(h.rows(), n);
    for (int64_t i = 0; i < h.size(); ++i) ASSERT_EQ(std::abs(h.data()[i]), 1.0) << n;
    for (int64_t i = 0; i < n; ++i)
      for (int64_t j = 0; j < n; ++j) {
        double dot = 0;
        for (int64_t k = 0; k < n; ++k) dot += h(i, k) * h(j, k);
        ASSERT_EQ(dot, i == j ? static_cast<double>(n) : 0.0) << "order " << n << " rows " << i << ", " << j;
      }
  }
}

TEST(Rotation, OrthogonalAndSeeded) {
  for (auto kind : {RotationKind::hadamard, RotationKind::random}) {
    for (int64_t n : {64, 576}) {
      const Matrix<double> q = rotation_matrix(n, kind, 7);
      const double err = (q.transpose() * q - Matrix<double>::Identity(n, n)).cwiseAbs().maxCoeff();
      EXPECT_LT(err, 1e-6) << rotation_kind_name(kind) << " " << n;
      // The float copy fused into the weights is orthogonal to float precision too.
      const Matrix<float> qf = q.cast<float>();
      EXPECT_LT((qf.transpose() * qf - Matrix<float>::Identity(n, n)).cwiseAbs().maxCoeff(), 1e-5f);
      EXPECT_EQ(q, rotation_matrix(n, kind, 7));
      EXPECT_NE(q, rotation_matrix(n, kind, 8));
    }
  }
  EXPECT_LT((rotation_matrix(100, RotationKind::random, 1).transpose() * rotation_matrix(100, RotationKind::random, 1) -
             Matrix<double>::Identity(100, 100))
                .cwiseAbs()
                .maxCoeff(),
            1e-6);
  EXPECT_THROW(rotation_matrix(100, RotationKind::hadamard, 1), Error);
  EXPECT_THROW(parse_rotation_kind("givens"), Error);
}

class Stories : public ::testing::Test {
 protected:
  void SetUp() override {
    STRATA_REQUIRE_FILE(stories_path(), "shared data: ../shared/data/models/stories260K");
    file_ = io::open_model(stories_path());
    ref_ = logits_of(nn::LlamaModel::load(*file_), tokens_);
  }
  std::unique_ptr<io::Model> file_;
  std::vector<int32_t> tokens_ = some_tokens(512, 40);
  std::vector<float> ref_;
};

TEST_F(Stories, NormFoldingAlonePreservesLogits) {
  ASSERT_TRUE(file_->config().tied_embeddings);
  RotateOptions o;
  o.rotate = false;
  const auto folded = rotate_model(*file_, o);
  const Tensor g = folded->to_f32("blk.2.ffn_norm.weight");
  for (int64_t i = 0; i < g.numel(); ++i) ASSERT_EQ(g.view<float>().data()[i], 1.0f);
  EXPECT_NE(folded->find("output.weight"), nullptr);  // the folded head is no longer the embedding
  EXPECT_LT(rel_diff(ref_, logits_of(nn::LlamaModel::load(*folded), tokens_)), 1e-5);
}

TEST_F(Stories, RotatedModelComputesTheSameFunction) {
  for (auto kind : {RotationKind::hadamard, RotationKind::random}) {
    RotateOptions o;
    o.kind = kind;
    o.seed = 3;
    const auto rotated = rotate_model(*file_, o);
    const auto got = logits_of(nn::LlamaModel::load(*rotated), tokens_);
    EXPECT_LT(rel_diff(ref_, got), 1e-4) << rotation_kind_name(kind);
    // The weights did change: the embedding's rows are rotated.
    const Tensor a = rotated->to_f32("token_embd.weight"), b = file_->to_f32("token_embd.weight");
    double diff = 0;
    for (int64_t i = 0; i < a.numel(); ++i) diff += std::abs(a.view<float>().data()[i] - b.view<float>().data()[i]);
    EXPECT_GT(diff, 1.0);
  }
}

TEST_F(Stories, WrittenGgufReloadsWithTheSameLogits) {
  const auto rotated = rotate_model(*file_, {});
  const std::filesystem::path out =
      std::filesystem::temp_directory_path() / ("strata_rotate_" + std::to_string(::getpid()) + ".gguf");
  write_f32_gguf(*rotated, *file_, out, "hadamard seed 0");
  const auto reread = io::open_model(out);
  EXPECT_EQ(reread->config().dim, 64);
  EXPECT_FALSE(reread->config().tied_embeddings);
  const auto got = logits_of(nn::LlamaModel::load(*reread), tokens_);
  EXPECT_EQ(got, logits_of(nn::LlamaModel::load(*rotated), tokens_));  // the same floats, bit for bit
  EXPECT_LT(rel_diff(ref_, got), 1e-4);
  std::filesystem::remove(out);
}

TEST(SmolLM2, RotatedModelComputesTheSameFunction) {
  STRATA_REQUIRE_FILE(smollm_path(), "scripts/fetch-models.sh");
  const auto file = io::open_model(smollm_path());
  ASSERT_EQ(file->config().dim, 576);
  const std::vector<int32_t> tokens = some_tokens(file->config().vocab_size, 12);
  const auto ref = logits_of(nn::LlamaModel::load(*file), tokens);
  RotateOptions o;
  o.seed = 11;
  const auto rotated = rotate_model(*file, o);
  EXPECT_LT(rel_diff(ref, logits_of(nn::LlamaModel::load(*rotated), tokens)), 1e-4);
}

TEST(Refusals, EncoderRefusedBeforeAnyWork) {
  STRATA_REQUIRE_FILE(minilm_path(), "scripts/fetch-models.sh");
  const auto file = io::open_model(minilm_path());
  try {
    rotate_model(*file, {});
    FAIL() << "a BERT encoder was rotated";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("architecture"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace strata::compress

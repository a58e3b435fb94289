// Sliding-window evaluation against brute force: which positions a window pass scores (and from which
// prefix), the log-likelihood and perplexity of every scored position, and KL divergence between two
// different models, each recomputed here by running a fresh session on exactly the tokens the
// position's window shows the model.
#include "strata/nn/eval.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "strata/io/model.hpp"
#include "strata/nn/llama.hpp"
#include "test_util.hpp"

namespace strata::nn {
namespace {

std::filesystem::path stories_path() {
  return strata::testing::shared_data_dir() / "models/stories260K/stories260K.bin";
}

class Eval : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    if (!std::filesystem::exists(stories_path())) return;
    file_ = io::open_model(stories_path());
    model_ = std::make_unique<LlamaModel>(LlamaModel::load(*file_));
  }
  static void TearDownTestSuite() {
    model_.reset();
    file_.reset();
  }
  void SetUp() override { STRATA_REQUIRE_FILE(stories_path(), "shared data: ../shared/data/models/stories260K"); }

  // Evaluation text: the model's own samples, several back to back, so that windows start both at
  // a BOS and in the middle of a story.
  static std::vector<int32_t> text(int64_t length, uint64_t seed) {
    std::vector<int32_t> out;
    for (const auto& s : sample_sequences(*model_, (length + 39) / 40, 40, 1, seed))
      out.insert(out.end(), s.begin(), s.end());
    out.resize(static_cast<size_t>(length));
    return out;
  }

  static inline std::unique_ptr<io::Model> file_;
  static inline std::unique_ptr<LlamaModel> model_;
};

// What a sliding-window pass promises, spelled out position by position: windows start at
// 0, stride, 2 stride, ... and span `context` tokens (the last one clipped at the end of the text);
// position p is predicted by the first window that holds both p and at least one token before it,
// from that window's tokens up to p. Positions in increasing order, cut after max_tokens.
struct ScoredPosition {
  int64_t position, window_begin;
};
std::vector<ScoredPosition> expected_positions(int64_t n, const WindowOptions& o) {
  std::vector<ScoredPosition> out;
  std::vector<bool> seen(static_cast<size_t>(n), false);
  for (int64_t b = 0; b < n; b += o.stride) {
    for (int64_t p = b + 1; p < std::min(b + o.context, n); ++p) {
      if (seen[static_cast<size_t>(p)]) continue;
      seen[static_cast<size_t>(p)] = true;
      out.push_back({p, b});
    }
  }
  std::sort(out.begin(), out.end(), [](const auto& a, const auto& b) { return a.position < b.position; });
  if (o.max_tokens > 0 && static_cast<int64_t>(out.size()) > o.max_tokens)
    out.resize(static_cast<size_t>(o.max_tokens));
  return out;
}

// The logits that predict position p from tokens [begin, p) alone: a fresh session fed exactly that
// prefix. Attention is causal, so the rest of the window cannot matter.
std::vector<float> logits_from_prefix(const LlamaModel& model, std::span<const int32_t> tokens, int64_t begin,
                                      int64_t p) {
  const auto prefix = tokens.subspan(static_cast<size_t>(begin), static_cast<size_t>(p - begin));
  std::vector<float> row(static_cast<size_t>(model.config().vocab_size));
  LlamaSession session(model, p - begin);
  session.forward(prefix, row.data(), Logits::last);
  return row;
}

// log p(v) in double, written out here rather than taken from the library under test.
std::vector<double> log_probs(const std::vector<float>& logits) {
  double mx = logits[0];
  for (float v : logits) mx = std::max(mx, static_cast<double>(v));
  double sum = 0;
  for (float v : logits) sum += std::exp(static_cast<double>(v) - mx);
  std::vector<double> out(logits.size());
  for (size_t i = 0; i < logits.size(); ++i) out[i] = static_cast<double>(logits[i]) - mx - std::log(sum);
  return out;
}

struct Case {
  int64_t context, stride, length, max_tokens;
};
std::string describe(const Case& c) {
  return "context " + std::to_string(c.context) + ", stride " + std::to_string(c.stride) + ", length " +
         std::to_string(c.length) + ", max_tokens " + std::to_string(c.max_tokens);
}

TEST_F(Eval, ScoredPositionsAndTheirLogitsMatchBruteForce) {
  const int64_t vocab = model_->config().vocab_size;
  const std::vector<Case> cases = {
      {16, 8, 61, 0},   // overlapping windows, the last one partial (starts at 48, ends at 61)
      {16, 5, 50, 0},   // stride not dividing the context
      {16, 15, 47, 0},  // one token of overlap
      {16, 1, 24, 0},   // every window adds one scored position
      {16, 16, 50, 0},  // disjoint windows: each window's first token has no prefix inside it
      {64, 32, 20, 0},  // a single window longer than the text
      {16, 8, 61, 23},  // cut in the middle of a window
      {8, 3, 2, 0},     // the shortest text there is
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(describe(c));
    const WindowOptions o{c.context, c.stride, c.max_tokens};
    const auto toks = text(c.length, 100 + static_cast<uint64_t>(c.length));
    const auto want = expected_positions(c.length, o);
    std::vector<int64_t> got_positions;
    std::vector<int32_t> got_targets;
    std::vector<std::vector<float>> got_rows;
    for_each_scored_position(*model_, toks, o, [&](const float* logits, int32_t target, int64_t position) {
      got_positions.push_back(position);
      got_targets.push_back(target);
      got_rows.emplace_back(logits, logits + vocab);
    });
    ASSERT_EQ(got_positions.size(), want.size());
    double nll = 0;
    for (size_t i = 0; i < want.size(); ++i) {
      const int64_t p = want[i].position;
      ASSERT_EQ(got_positions[i], p) << "scored position #" << i;
      EXPECT_EQ(got_targets[i], toks[static_cast<size_t>(p)]) << "position " << p;
      const auto row = logits_from_prefix(*model_, toks, want[i].window_begin, p);
      float worst = 0, scale = 0;
      for (int64_t v = 0; v < vocab; ++v) {
        worst = std::max(worst, std::abs(row[static_cast<size_t>(v)] - got_rows[i][static_cast<size_t>(v)]));
        scale = std::max(scale, std::abs(row[static_cast<size_t>(v)]));
      }
      EXPECT_LT(worst, 1e-4f * scale) << "position " << p << " seen from " << want[i].window_begin;
      const double want_nll = -log_probs(row)[static_cast<size_t>(toks[static_cast<size_t>(p)])];
      const double got_nll = -log_probs(got_rows[i])[static_cast<size_t>(toks[static_cast<size_t>(p)])];
      EXPECT_NEAR(got_nll, want_nll, 1e-4) << "position " << p;
      nll += want_nll;
    }
    const auto ppl = perplexity(*model_, toks, o);
    ASSERT_EQ(ppl.tokens, static_cast<int64_t>(want.size()));
    const double mean = nll / static_cast<double>(want.size());
    EXPECT_NEAR(ppl.mean_nll, mean, 1e-5);
    EXPECT_NEAR(ppl.perplexity, std::exp(mean), 1e-5 * std::exp(mean));
  }
}

// The position sets themselves, for many shapes: every position after the first is scored exactly
// once and in order, except the first token of a window when windows do not overlap (nothing in
// that window precedes it).
TEST_F(Eval, EveryPositionScoredOnceInOrder) {
  const auto toks = text(41, 5);
  for (int64_t context : {2, 3, 7, 12}) {
    for (int64_t stride = 1; stride <= context; ++stride) {
      for (int64_t n : {2, 3, 11, 12, 13, 41}) {
        const WindowOptions o{context, stride, 0};
        SCOPED_TRACE(describe({context, stride, n, 0}));
        std::vector<int64_t> got;
        for_each_scored_position(*model_, std::span<const int32_t>(toks).first(static_cast<size_t>(n)), o,
                                 [&](const float*, int32_t, int64_t p) { got.push_back(p); });
        std::vector<int64_t> want;
        for (int64_t p = 1; p < n; ++p)
          if (stride < context || p % context != 0) want.push_back(p);
        EXPECT_EQ(got, want);
      }
    }
  }
}

TEST_F(Eval, BadWindowsAreRejected) {
  const auto toks = text(20, 6);
  const auto ignore = [](const float*, int32_t, int64_t) {};
  EXPECT_THROW(for_each_scored_position(*model_, toks, {1, 1, 0}, ignore), Error);   // context < 2
  EXPECT_THROW(for_each_scored_position(*model_, toks, {8, 0, 0}, ignore), Error);   // stride 0
  EXPECT_THROW(for_each_scored_position(*model_, toks, {8, 9, 0}, ignore), Error);   // stride > context
  EXPECT_THROW(for_each_scored_position(*model_, std::span<const int32_t>(toks).first(1), {8, 4, 0}, ignore), Error);
  EXPECT_THROW(perplexity(*model_, toks, {8, 9, 0}), Error);
}

// KL(reference || model) between two different models, every statistic recomputed from both models'
// brute-force logits. 52 scored positions make both the median (position 25.5 of the sorted values)
// and the 99th percentile (50.49) fall between two values, so the interpolated definition the library
// documents is pinned: nearest rank would give another number.
TEST_F(Eval, KlBetweenTwoModelsMatchesDirectFormula) {
  LlamaModel perturbed = model_->clone();
  RowMatrix<float> w = model_->linear("blk.1.attn_v.weight").dense_weight();
  std::mt19937 rng(11);
  std::normal_distribution<float> g(0.0f, 1.0f);
  const float rms = std::sqrt(w.squaredNorm() / static_cast<float>(w.size()));
  for (int64_t i = 0; i < w.size(); ++i) w.data()[i] += 0.25f * rms * g(rng);
  perturbed.set_linear("blk.1.attn_v.weight", std::make_shared<DenseLinear>(w));

  const WindowOptions o{24, 10, 0};
  const auto toks = text(53, 31);
  const auto positions = expected_positions(53, o);
  ASSERT_EQ(positions.size(), 52u);
  std::vector<double> kls;
  double nll_ref = 0, nll = 0;
  int64_t agree = 0;
  for (const auto& sp : positions) {
    const auto ref_row = logits_from_prefix(*model_, toks, sp.window_begin, sp.position);
    const auto row = logits_from_prefix(perturbed, toks, sp.window_begin, sp.position);
    const auto lp_ref = log_probs(ref_row), lp = log_probs(row);
    double kl = 0;
    for (size_t v = 0; v < lp.size(); ++v) kl += std::exp(lp_ref[v]) * (lp_ref[v] - lp[v]);
    kls.push_back(kl);
    const auto target = static_cast<size_t>(toks[static_cast<size_t>(sp.position)]);
    nll_ref -= lp_ref[target];
    nll -= lp[target];
    agree += std::max_element(ref_row.begin(), ref_row.end()) - ref_row.begin() ==
             std::max_element(row.begin(), row.end()) - row.begin();
  }
  std::vector<double> sorted = kls;
  std::sort(sorted.begin(), sorted.end());
  const double count = static_cast<double>(kls.size());
  double mean = 0;
  for (double k : kls) mean += k / count;
  const double median = 0.5 * (sorted[25] + sorted[26]);
  const double p99 = sorted[50] + 0.49 * (sorted[51] - sorted[50]);

  const KlResult r = kl_divergence(*model_, perturbed, toks, o);
  ASSERT_EQ(r.tokens, 52);
  const double tol = 1e-5 * sorted.back() + 1e-9;
  EXPECT_NEAR(r.mean_kl, mean, tol);
  EXPECT_NEAR(r.median_kl, median, tol);
  EXPECT_NEAR(r.p99_kl, p99, tol);
  EXPECT_NEAR(r.max_kl, sorted.back(), tol);
  // The data must separate the definitions for the checks above to mean anything.
  ASSERT_GT(sorted[51] - sorted[50], 100 * tol);
  ASSERT_GT(sorted[26] - sorted[25], 100 * tol);
  EXPECT_NEAR(r.top1_agreement, static_cast<double>(agree) / count, 1e-12);
  EXPECT_GT(agree, 0);
  EXPECT_LT(agree, 52) << "the perturbation should change some predictions";
  EXPECT_NEAR(r.reference.mean_nll, nll_ref / count, 1e-5);
  EXPECT_NEAR(r.model.mean_nll, nll / count, 1e-5);
  EXPECT_EQ(r.reference.tokens, 52);
  EXPECT_NEAR(r.reference.perplexity, std::exp(nll_ref / count), 1e-5 * std::exp(nll_ref / count));
  // The reference side is the dense model's own perplexity over the same windows.
  EXPECT_NEAR(r.reference.perplexity, perplexity(*model_, toks, o).perplexity, 1e-9 * r.reference.perplexity);
  // KL is not symmetric: swapping the models measures something else.
  EXPECT_GT(std::abs(kl_divergence(perturbed, *model_, toks, o).mean_kl - r.mean_kl), 100 * tol);
}

// A copy of the model with one linear layer's weight perturbed (a different Linear object).
LlamaModel with_noisy(const LlamaModel& base, const std::string& name, uint32_t seed) {
  LlamaModel out = base.clone();
  RowMatrix<float> w = base.linear(name).dense_weight();
  std::mt19937 rng(seed);
  std::normal_distribution<float> g(0.0f, 1.0f);
  const float rms = std::sqrt(w.squaredNorm() / static_cast<float>(w.size()));
  for (int64_t i = 0; i < w.size(); ++i) w.data()[i] += 0.3f * rms * g(rng);
  out.set_linear(name, std::make_shared<DenseLinear>(w));
  return out;
}

// Several models on several sequences in one variant pass give what a fresh session per (model,
// sequence) gives: from the tokens (each model its own embedding) and from cached hidden states.
TEST_F(Eval, VariantPassEqualsOneSessionPerModelAndSequence) {
  const LlamaConfig& c = model_->config();
  LlamaModel ffn = with_noisy(*model_, "blk.2.ffn_up.weight", 3);
  LlamaModel attn = with_noisy(*model_, "blk.3.attn_q.weight", 4);
  LlamaModel embedding = model_->clone();
  {
    RowMatrix<float> e(c.vocab_size, c.dim);
    for (int32_t t = 0; t < c.vocab_size; ++t) model_->token_embedding().lookup(t, e.row(t).data());
    e *= 1.5f;
    embedding.set_token_embedding(std::make_shared<const RowMatrix<float>>(std::move(e)));
  }
  const LlamaModel same = model_->clone();  // shares every layer with the model: one product for both
  const std::vector<const LlamaModel*> models = {model_.get(), &same, &ffn, &attn, &embedding};
  const int64_t sequences = 3, length = 17;
  const auto toks = text(sequences * length, 5);
  const int64_t vocab = c.vocab_size;

  for (int first_block : {0, 2}) {
    SCOPED_TRACE("first block " + std::to_string(first_block));
    // The hidden states entering first_block, per sequence, from the reference model.
    RowMatrix<float> hidden(sequences * length, c.dim);
    for (int64_t s = 0; s < sequences; ++s) {
      LlamaSession session(*model_, length);
      RowMatrix<float> x(length, c.dim);
      for (int64_t t = 0; t < length; ++t)
        model_->token_embedding().lookup(toks[static_cast<size_t>(s * length + t)], x.row(t).data());
      session.forward_blocks(0, first_block, x.data(), length);
      hidden.middleRows(s * length, length) = x;
    }
    std::vector<float> batched(static_cast<size_t>(5 * sequences * length * vocab));
    forward_variants(models, sequences, length, first_block, toks, first_block == 0 ? nullptr : hidden.data(),
                     batched.data());
    for (size_t v = 0; v < models.size(); ++v) {
      if (first_block > 0 && models[v] == &embedding) continue;  // hidden states bypass the embedding
      for (int64_t s = 0; s < sequences; ++s) {
        std::vector<float> alone(static_cast<size_t>(length * vocab));
        LlamaSession session(*models[v], length);
        if (first_block == 0)
          session.forward(std::span(toks).subspan(static_cast<size_t>(s * length), static_cast<size_t>(length)),
                          alone.data(), Logits::all);
        else
          session.forward_hidden(first_block, hidden.row(s * length).data(), length, alone.data(), Logits::all);
        const float* got = batched.data() + (static_cast<int64_t>(v) * sequences + s) * length * vocab;
        float scale = 0, worst = 0;
        for (size_t i = 0; i < alone.size(); ++i) {
          scale = std::max(scale, std::abs(alone[i]));
          worst = std::max(worst, std::abs(alone[i] - got[i]));
        }
        EXPECT_LE(worst, 1e-5f * scale) << "model " << v << ", sequence " << s;
      }
    }
    // The variants really differ from the reference (else the comparison above proves little).
    const auto off = [&](size_t v) { return static_cast<size_t>(static_cast<int64_t>(v) * sequences * length * vocab); };
    float diff = 0;
    for (size_t i = 0; i < off(1); ++i) diff = std::max(diff, std::abs(batched[off(2) + i] - batched[i]));
    EXPECT_GT(diff, 1e-2f);
  }
  EXPECT_THROW(forward_variants(models, sequences, length, 0, std::span(toks).subspan(1), nullptr, nullptr),
               strata::Error);
  std::vector<float> out(static_cast<size_t>(sequences * length * vocab));
  EXPECT_THROW(forward_variants(models, sequences, length, 0, std::span(toks).subspan(1), nullptr, out.data()),
               strata::Error);
  EXPECT_THROW(forward_variants(models, sequences, length, 1, toks, nullptr, out.data()), strata::Error);
  EXPECT_THROW(forward_variants({}, sequences, length, 0, toks, nullptr, out.data()), strata::Error);
}

// The KL of several models judged together equals each judged alone, whatever the group size, and
// windows of several lengths fall back to one model at a time.
TEST_F(Eval, KlOfSeveralModelsEqualsEachAlone) {
  LlamaModel a = with_noisy(*model_, "blk.1.ffn_down.weight", 7);
  LlamaModel b = with_noisy(*model_, "blk.1.attn_k.weight", 8);
  LlamaModel d = with_noisy(*model_, "blk.4.attn_output.weight", 9);
  const std::vector<const LlamaModel*> models = {&a, model_.get(), &b, &d};
  const auto toks = text(60, 21);
  for (bool one_length : {true, false}) {
    std::vector<std::vector<int32_t>> windows = {{toks.begin(), toks.begin() + 20}, {toks.begin() + 20, toks.begin() + 40},
                                                 {toks.begin() + 40, toks.begin() + (one_length ? 60 : 55)}};
    const KlEvaluator probe(*model_, windows, /*keep_hidden=*/true);
    for (int from : {0, 1}) {
      for (int64_t max_rows : {1, 120, 1024}) {
        const std::vector<double> together = probe.mean_kl(models, from, max_rows);
        ASSERT_EQ(together.size(), models.size());
        for (size_t v = 0; v < models.size(); ++v) {
          const double alone = probe.mean_kl(*models[v], from);
          // Taller products round differently: float32 logits leave a KL floor near 1e-7 nats.
          EXPECT_NEAR(together[v], alone, 1e-5 * alone + 1e-6)
              << "model " << v << " from block " << from << ", rows " << max_rows << ", one length " << one_length;
        }
        EXPECT_LT(together[1], 1e-6);  // the reference itself
        EXPECT_GT(together[0], 1e-3);
      }
    }
  }
}

}  // namespace
}  // namespace strata::nn

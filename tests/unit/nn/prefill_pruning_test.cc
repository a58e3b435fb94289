#include "strata/nn/prefill_pruning.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <memory>
#include <numeric>
#include <string>
#include <vector>

#include "strata/core/error.hpp"
#include "strata/io/model.hpp"
#include "strata/kv/session.hpp"
#include "strata/nn/dataset.hpp"
#include "strata/nn/eval.hpp"
#include "strata/nn/llama.hpp"
#include "strata/nn/tokenizer.hpp"
#include "test_util.hpp"

namespace strata::nn {
namespace {

std::filesystem::path stories_path() {
  return strata::testing::shared_data_dir() / "models/stories260K/stories260K.bin";
}
std::filesystem::path smollm_path() { return strata::testing::models_dir() / "smollm2-135m-instruct-q4_1.gguf"; }
std::filesystem::path moby_path() { return strata::testing::shared_data_dir() / "corpora/moby_dick.txt"; }

struct Models {
  std::unique_ptr<io::Model> stories_file, smollm_file;
  std::unique_ptr<LlamaModel> stories, smollm;
  std::vector<int32_t> stories_tokens, smollm_tokens;  // 64 sampled tokens + 3 to decode; 240 of Moby-Dick
};
Models& models() {
  static Models m = [] {
    Models r;
    if (std::filesystem::exists(stories_path())) {
      r.stories_file = io::open_model(stories_path());
      r.stories = std::make_unique<LlamaModel>(LlamaModel::load(*r.stories_file));
      r.stories_tokens = sample_sequences(*r.stories, 1, 66, 1, 5)[0];
    }
    if (std::filesystem::exists(smollm_path()) && std::filesystem::exists(moby_path())) {
      r.smollm_file = io::open_model(smollm_path());
      r.smollm = std::make_unique<LlamaModel>(LlamaModel::load(*r.smollm_file));
      const auto tok = BpeTokenizer::from_model(*r.smollm_file);
      r.smollm_tokens = tokenize_slice(tok, TextSlice{moby_path(), 0.95, 0.9515}, 243);
    }
    return r;
  }();
  return m;
}

#define REQUIRE_STORIES()                                                          \
  do {                                                                             \
    STRATA_REQUIRE_FILE(stories_path(), "shared data: models/stories260K");        \
    ASSERT_TRUE(models().stories);                                                 \
  } while (0)

// ---- an independent reference: the decoder written out in double precision ----

using Md = Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

Md rms_rows(const Md& x, const Vector<float>& w, double eps) {
  Md out(x.rows(), x.cols());
  for (int64_t t = 0; t < x.rows(); ++t) {
    const double s = 1.0 / std::sqrt(x.row(t).squaredNorm() / static_cast<double>(x.cols()) + eps);
    for (int64_t i = 0; i < x.cols(); ++i) out(t, i) = x(t, i) * s * w[i];
  }
  return out;
}

Md product(const Md& x, const Linear& layer) { return x * layer.dense_weight().cast<double>().transpose(); }

// RoPE on adjacent pairs, row t at position t.
void rope_rows(Md& x, int64_t heads, int64_t hd, double theta) {
  for (int64_t t = 0; t < x.rows(); ++t)
    for (int64_t h = 0; h < heads; ++h)
      for (int64_t i = 0; i < hd / 2; ++i) {
        const double freq = static_cast<float>(std::pow(theta, -2.0 * static_cast<double>(i) / static_cast<double>(hd)));
        const double a = static_cast<double>(t) * freq, c = std::cos(a), s = std::sin(a);
        double& x0 = x(t, h * hd + 2 * i);
        double& x1 = x(t, h * hd + 2 * i + 1);
        const double u = x0, v = x1;
        x0 = u * c - v * s;
        x1 = u * s + v * c;
      }
}

// Which key j query i sees in block l (besides causality).
using Visible = std::function<bool(int layer, int64_t query, int64_t key)>;

struct Reference {
  Md logits;                  // [tokens, vocab]
  std::vector<Md> probs;      // of block `probs_layer`, per query head [tokens, tokens]
};

// Every token through every block; key j hidden from query i in block l when !visible(l, i, j). With
// merge_layer >= 0, before that block each row r in `merge_rows` becomes the mean of the rows
// merge_from[r] .. r.
Reference reference(const LlamaModel& model, std::span<const int32_t> tokens, const Visible& visible,
                    int probs_layer = -1, int merge_layer = -1, const std::vector<int64_t>& merge_rows = {},
                    const std::vector<int64_t>& merge_from = {}) {
  const LlamaConfig& c = model.config();
  const int64_t n = static_cast<int64_t>(tokens.size()), hd = c.head_dim, group = c.n_heads / c.n_kv_heads;
  const RowMatrix<float> table = model.token_embedding().dense();
  Md x(n, c.dim);
  for (int64_t t = 0; t < n; ++t) x.row(t) = table.row(tokens[static_cast<size_t>(t)]).cast<double>();
  Reference r;
  for (int l = 0; l < c.n_layers; ++l) {
    if (l == merge_layer)
      for (size_t m = 0; m < merge_rows.size(); ++m) {
        const int64_t to = merge_rows[m], from = merge_from[m];
        Eigen::RowVectorXd mean = x.middleRows(from, to - from + 1).colwise().mean();
        x.row(to) = mean;
      }
    const auto& blk = model.blocks()[static_cast<size_t>(l)];
    Md xn = rms_rows(x, blk.attn_norm, c.norm_eps);
    Md q = product(xn, model.layer(l, LlamaModel::kQ)), k = product(xn, model.layer(l, LlamaModel::kK)),
       v = product(xn, model.layer(l, LlamaModel::kV));
    rope_rows(q, c.n_heads, hd, c.rope_theta);
    rope_rows(k, c.n_kv_heads, hd, c.rope_theta);
    Md att = Md::Zero(n, c.n_heads * hd);
    if (l == probs_layer) r.probs.assign(static_cast<size_t>(c.n_heads), Md(Md::Zero(n, n)));
    for (int64_t h = 0; h < c.n_heads; ++h) {
      const int64_t kvh = h / group;
      for (int64_t i = 0; i < n; ++i) {
        std::vector<double> p(static_cast<size_t>(i + 1), 0.0);
        double mx = -INFINITY;
        for (int64_t j = 0; j <= i; ++j) {
          if (!visible(l, i, j)) continue;
          p[static_cast<size_t>(j)] = q.row(i).segment(h * hd, hd).dot(k.row(j).segment(kvh * hd, hd)) /
                                      std::sqrt(static_cast<double>(hd));
          mx = std::max(mx, p[static_cast<size_t>(j)]);
        }
        double sum = 0;
        for (int64_t j = 0; j <= i; ++j) {
          p[static_cast<size_t>(j)] = visible(l, i, j) ? std::exp(p[static_cast<size_t>(j)] - mx) : 0.0;
          sum += p[static_cast<size_t>(j)];
        }
        for (int64_t j = 0; j <= i; ++j) {
          const double a = p[static_cast<size_t>(j)] / sum;
          att.row(i).segment(h * hd, hd) += a * v.row(j).segment(kvh * hd, hd);
          if (l == probs_layer) r.probs[static_cast<size_t>(h)](i, j) = a;
        }
      }
    }
    x += product(att, model.layer(l, LlamaModel::kO));
    xn = rms_rows(x, blk.ffn_norm, c.norm_eps);
    Md g = product(xn, model.layer(l, LlamaModel::kGate));
    const Md u = product(xn, model.layer(l, LlamaModel::kUp));
    for (int64_t i = 0; i < g.size(); ++i) g.data()[i] = g.data()[i] / (1.0 + std::exp(-g.data()[i])) * u.data()[i];
    x += product(g, model.layer(l, LlamaModel::kDown));
  }
  r.logits = product(rms_rows(x, model.output_norm(), c.norm_eps), model.output());
  return r;
}

double max_abs_diff(std::span<const float> got, const Md& want, int64_t row) {
  double worst = 0;
  for (int64_t v = 0; v < want.cols(); ++v)
    worst = std::max(worst, std::abs(static_cast<double>(got[static_cast<size_t>(v)]) - want(row, v)));
  return worst;
}

std::vector<int64_t> cache_positions(const kv::Session& s, int layer, int head) {
  const auto p = s.cache().positions(layer, head);
  return {p.begin(), p.end()};
}

bool contains(std::span<const int64_t> sorted, int64_t x) { return std::binary_search(sorted.begin(), sorted.end(), x); }

std::string message_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "(no error)";
}

PrefillPruning small_options(int layer, double drop, PruneScore score = PruneScore::window) {
  PrefillPruning o = PrefillPruning::at(layer, drop);
  o.sinks = 2;
  o.window = 8;
  o.score = score;
  return o;
}

// A kv::Session that has read `prompt` pruned by `options`, its last logits and the pruner.
struct Pruned {
  std::unique_ptr<kv::Session> session;
  std::unique_ptr<PrefillPruner> pruner;
  std::vector<float> logits;
};
Pruned read_pruned(const LlamaModel& model, std::span<const int32_t> prompt, const PrefillPruning& options) {
  Pruned r{std::make_unique<kv::Session>(model, 512), std::make_unique<PrefillPruner>(options),
           std::vector<float>(static_cast<size_t>(model.config().vocab_size))};
  r.session->forward(prompt, r.logits.data(), Logits::last, r.pruner.get());
  return r;
}

// ---- tests ----

void expect_unpruned_is_plain(const LlamaModel& model, std::span<const int32_t> all, int64_t prompt) {
  const auto c = model.config();
  const std::span<const int32_t> p = all.first(static_cast<size_t>(prompt));
  std::vector<float> plain(static_cast<size_t>(c.vocab_size)), dense(plain.size()), pruned(plain.size());
  kv::Session a(model, 512), b(model, 512);
  LlamaSession d(model, 512);
  PrefillPruner pruner(PrefillPruning::at(static_cast<int>(c.n_layers / 2), 0.0));
  a.forward(p, plain.data(), Logits::last);
  d.forward(p, dense.data(), Logits::last);
  b.forward(p, pruned.data(), Logits::last, &pruner);
  EXPECT_EQ(pruned, plain);
  EXPECT_EQ(pruned, dense);
  for (int l = 0; l < c.n_layers; ++l)
    for (int h = 0; h < c.n_kv_heads; ++h) {
      ASSERT_EQ(cache_positions(b, l, h), cache_positions(a, l, h));
      EXPECT_EQ(0, std::memcmp(b.cache().keys(l, h), a.cache().keys(l, h),
                               static_cast<size_t>(prompt * c.head_dim) * sizeof(float)));
    }
  for (int64_t t = prompt; t < static_cast<int64_t>(all.size()); ++t) {
    a.forward(all.subspan(static_cast<size_t>(t), 1), plain.data(), Logits::last);
    b.forward(all.subspan(static_cast<size_t>(t), 1), pruned.data(), Logits::last, &pruner);
    EXPECT_EQ(pruned, plain) << "decode step at position " << t;
  }
}

TEST(PrefillPruning, NothingDroppedIsThePlainPrefillBitForBit) {
  REQUIRE_STORIES();
  expect_unpruned_is_plain(*models().stories, models().stories_tokens, 64);
}

TEST(PrefillPruning, NothingDroppedIsThePlainPrefillBitForBitOnSmolLM2) {
  STRATA_REQUIRE_FILE(smollm_path(), "scripts/fetch-models.sh");
  STRATA_REQUIRE_FILE(moby_path(), "shared data: corpora");
  expect_unpruned_is_plain(*models().smollm, models().smollm_tokens, 240);
}

// Dropping tokens after block L equals the whole model with those tokens' keys hidden from every query in
// blocks >= L; decoding then continues at the original positions.
TEST(PrefillPruning, DroppedTokensAreTokensNoLaterBlockAttendsTo) {
  REQUIRE_STORIES();
  const LlamaModel& model = *models().stories;
  const auto& all = models().stories_tokens;
  const int64_t n = 64;
  const int layer = 2;
  Pruned r = read_pruned(model, std::span(all).first(n), small_options(layer, 0.5));
  kv::Session& s = *r.session;
  std::vector<float>& logits = r.logits;
  const auto kept = r.pruner->kept_positions();
  ASSERT_EQ(static_cast<int64_t>(kept.size()), 32);
  const auto masked = [&](int l, int64_t, int64_t j) { return l < layer || j >= n || contains(kept, j); };
  const Reference want = reference(model, std::span(all).first(n + 2), masked);
  const Reference full = reference(model, std::span(all).first(n), [](int, int64_t, int64_t) { return true; });
  const double tol = 1e-4 * want.logits.row(n - 1).cwiseAbs().maxCoeff();
  EXPECT_LE(max_abs_diff(logits, want.logits, n - 1), tol);
  // The test can fail: without the mask the logits are far from the pruned ones.
  EXPECT_GT(max_abs_diff(logits, full.logits, n - 1), 50 * tol);
  // Two decode steps: the new tokens at positions 64 and 65 see the kept tokens in the later blocks.
  for (int64_t t = n; t < n + 2; ++t) {
    s.forward(std::span(all).subspan(static_cast<size_t>(t), 1), logits.data(), Logits::last);
    EXPECT_LE(max_abs_diff(logits, want.logits, t), tol) << "decode at position " << t;
  }
}

// The kept set is the sinks, the window, and the best-attended others by the scores written out here from
// the reference's attention; the cache holds every prompt position before the step and the kept ones after.
TEST(PrefillPruning, KeepsTheMostAttendedTokensAtTheirOriginalPositions) {
  REQUIRE_STORIES();
  const LlamaModel& model = *models().stories;
  const auto c = model.config();
  const int64_t n = 64;
  const int layer = 3;
  const auto prompt = std::span(models().stories_tokens).first(n);
  const Reference ref = reference(model, prompt, [](int, int64_t, int64_t) { return true; }, layer - 1);
  for (PruneScore score : {PruneScore::window, PruneScore::prompt}) {
    SCOPED_TRACE(std::string(prune_score_name(score)));
    const PrefillPruning o = small_options(layer, 0.75, score);
    std::vector<std::pair<double, int64_t>> ranked;
    for (int64_t j = o.sinks; j < n - o.window; ++j) {
      double sc = 0;
      for (const Md& p : ref.probs)
        for (int64_t i = score == PruneScore::window ? n - o.window : 0; i < n; ++i) sc += p(i, j);
      ranked.push_back({-sc, j});
    }
    std::sort(ranked.begin(), ranked.end());
    const int64_t kept_count = n - std::llround(0.75 * n);
    std::vector<int64_t> expected;
    for (int64_t j = 0; j < o.sinks; ++j) expected.push_back(j);
    for (int64_t r = 0; r < kept_count - o.sinks - o.window; ++r) expected.push_back(ranked[static_cast<size_t>(r)].second);
    for (int64_t j = n - o.window; j < n; ++j) expected.push_back(j);
    std::sort(expected.begin(), expected.end());

    const Pruned r = read_pruned(model, prompt, o);
    const kv::Session& s = *r.session;
    const auto kept = r.pruner->kept_positions();
    EXPECT_EQ(std::vector<int64_t>(kept.begin(), kept.end()), expected);
    std::vector<int64_t> everything(static_cast<size_t>(n));
    std::iota(everything.begin(), everything.end(), int64_t{0});
    for (int l = 0; l < c.n_layers; ++l)
      for (int h = 0; h < c.n_kv_heads; ++h)
        EXPECT_EQ(cache_positions(s, l, h), l < layer ? everything : expected) << "block " << l << " head " << h;
    EXPECT_EQ(s.position(), n);
    EXPECT_EQ(r.pruner->rows_per_layer(), (std::vector<int64_t>{n, n, n, kept_count, kept_count}));
  }
}

// Two steps: each block sees the keys its step kept; the second kept set lies inside the first.
TEST(PrefillPruning, ScheduleOverTwoBlocks) {
  REQUIRE_STORIES();
  const LlamaModel& model = *models().stories;
  const auto c = model.config();
  const int64_t n = 64;
  PrefillPruning o = small_options(1, 0.25);
  o.steps.push_back({3, 0.5});
  const auto prompt = std::span(models().stories_tokens).first(n);
  const Pruned r = read_pruned(model, prompt, o);
  const kv::Session& s = *r.session;
  const auto k1 = r.pruner->kept_positions(0), k2 = r.pruner->kept_positions(1);
  ASSERT_EQ(k1.size(), 48u);
  ASSERT_EQ(k2.size(), 32u);
  for (int64_t p : k2) EXPECT_TRUE(contains(k1, p)) << p;
  for (int h = 0; h < c.n_kv_heads; ++h) {
    EXPECT_EQ(s.cache().length(0, h), n);
    EXPECT_EQ(cache_positions(s, 2, h), std::vector<int64_t>(k1.begin(), k1.end()));
    EXPECT_EQ(cache_positions(s, 4, h), std::vector<int64_t>(k2.begin(), k2.end()));
  }
  const auto masked = [&](int l, int64_t, int64_t j) {
    return l < 1 || (l < 3 ? contains(k1, j) : contains(k2, j));
  };
  const Reference want = reference(model, prompt, masked);
  EXPECT_LE(max_abs_diff(r.logits, want.logits, n - 1), 1e-4 * want.logits.row(n - 1).cwiseAbs().maxCoeff());
}

// Merging: each kept row becomes the mean of itself and the dropped rows since the previous kept one.
TEST(PrefillPruning, MergeAveragesDroppedRowsIntoTheNextKeptOne) {
  REQUIRE_STORIES();
  const LlamaModel& model = *models().stories;
  const int64_t n = 64;
  const int layer = 2;
  PrefillPruning o = small_options(layer, 0.5);
  o.mode = PruneMode::merge;
  const auto prompt = std::span(models().stories_tokens).first(n);
  const Pruned r = read_pruned(model, prompt, o);
  const auto kept = r.pruner->kept_positions();
  std::vector<int64_t> rows, from;
  for (size_t i = 0; i < kept.size(); ++i) {
    rows.push_back(kept[i]);
    from.push_back(i == 0 ? 0 : kept[i - 1] + 1);
  }
  const auto masked = [&](int l, int64_t, int64_t j) { return l < layer || contains(kept, j); };
  const Reference want = reference(model, prompt, masked, -1, layer, rows, from);
  const double tol = 1e-4 * want.logits.row(n - 1).cwiseAbs().maxCoeff();
  EXPECT_LE(max_abs_diff(r.logits, want.logits, n - 1), tol);
  const Reference dropped = reference(model, prompt, masked);
  EXPECT_GT(max_abs_diff(r.logits, dropped.logits, n - 1), 50 * tol);
}

// evict_early_layers: the blocks before the step keep only the kept tokens too, and the next token sees
// only those in every block.
TEST(PrefillPruning, EvictEarlyLayersKeepsTheSameTokensEverywhere) {
  REQUIRE_STORIES();
  const LlamaModel& model = *models().stories;
  const auto c = model.config();
  const int64_t n = 64;
  const int layer = 2;
  PrefillPruning o = small_options(layer, 0.5);
  o.evict_early_layers = true;
  const auto& all = models().stories_tokens;
  Pruned r = read_pruned(model, std::span(all).first(n), o);
  kv::Session& s = *r.session;
  std::vector<float>& logits = r.logits;
  const auto kept = r.pruner->kept_positions();
  for (int l = 0; l < c.n_layers; ++l)
    for (int h = 0; h < c.n_kv_heads; ++h)
      EXPECT_EQ(cache_positions(s, l, h), std::vector<int64_t>(kept.begin(), kept.end()));
  s.forward(std::span(all).subspan(static_cast<size_t>(n), 1), logits.data(), Logits::last);
  const auto masked = [&](int l, int64_t i, int64_t j) {
    return j >= n || contains(kept, j) || (l < layer && i < n);
  };
  const Reference want = reference(model, std::span(all).first(n + 1), masked);
  EXPECT_LE(max_abs_diff(logits, want.logits, n), 1e-4 * want.logits.row(n).cwiseAbs().maxCoeff());
}

TEST(PrefillPruning, BadInputIsRefusedNamingTheOption) {
  REQUIRE_STORIES();
  const LlamaModel& model = *models().stories;
  const auto prompt = std::span(models().stories_tokens).first(64);
  std::vector<float> logits(static_cast<size_t>(model.config().vocab_size) * 64);
  // Refused when built: the message names the field.
  const auto built = [](const std::function<void(PrefillPruning&)>& edit) {
    PrefillPruning o = PrefillPruning::at(2, 0.5);
    edit(o);
    return message_of([&] { PrefillPruner p(o); });
  };
  EXPECT_NE(built([](PrefillPruning& o) { o.steps[0].drop = 1.0; }).find("steps[0].drop = 1"), std::string::npos);
  EXPECT_NE(built([](PrefillPruning& o) { o.steps[0].drop = -0.1; }).find("steps[0].drop"), std::string::npos);
  EXPECT_NE(built([](PrefillPruning& o) { o.steps.push_back({1, 0.6}); }).find("steps[1].layer"), std::string::npos);
  EXPECT_NE(built([](PrefillPruning& o) { o.steps.push_back({3, 0.4}); }).find("steps[1].drop"), std::string::npos);
  EXPECT_NE(built([](PrefillPruning& o) { o.window = 0; }).find("window"), std::string::npos);
  EXPECT_NE(built([](PrefillPruning& o) { o.pool = 4; }).find("pool"), std::string::npos);
  EXPECT_NE(built([](PrefillPruning& o) { o.sinks = -1; }).find("sinks"), std::string::npos);
  EXPECT_NE(message_of([] { parse_prune_score("max", "--score"); }).find("--score"), std::string::npos);
  EXPECT_NE(message_of([] { parse_prune_mode("fuse", "--mode"); }).find("--mode"), std::string::npos);
  // Refused by the prompt, before any work: the session is left as it was.
  const auto refused = [&](PrefillPruning o, Logits which = Logits::last) {
    kv::Session s(model, 512);
    PrefillPruner p(o);
    const std::string m = message_of([&] { s.forward(prompt, logits.data(), which, &p); });
    EXPECT_EQ(s.position(), 0) << m;
    EXPECT_EQ(s.cache().total_tokens(), 0) << m;
    return m;
  };
  EXPECT_NE(refused(PrefillPruning::at(0, 0.5)).find("steps[0].layer = 0"), std::string::npos);
  EXPECT_NE(refused(PrefillPruning::at(5, 0.5)).find("steps[0].layer = 5"), std::string::npos);
  PrefillPruning tight = PrefillPruning::at(2, 0.9);  // keeps 6 of 64, protects 4 + 32
  const std::string m = refused(tight);
  EXPECT_NE(m.find("steps[0].drop = 0.9"), std::string::npos) << m;
  EXPECT_NE(m.find("protected"), std::string::npos) << m;
  EXPECT_NE(refused(PrefillPruning::at(2, 0.5), Logits::all).find("Logits::all"), std::string::npos);
  // The dense session keeps no positions per head.
  LlamaSession dense(model, 512);
  PrefillPruner p(PrefillPruning::at(2, 0.5));
  EXPECT_NE(message_of([&] { dense.forward(prompt, logits.data(), Logits::last, &p); }).find("KV store"),
            std::string::npos);
  EXPECT_EQ(dense.position(), 0);
}

}  // namespace
}  // namespace strata::nn

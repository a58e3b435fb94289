#include "strata/kv/allocate.hpp"

#include <gtest/gtest.h>

#include <cmath>
#include <memory>
#include <numeric>
#include <vector>

#include "strata/core/error.hpp"
#include "strata/io/model.hpp"
#include "strata/kv/session.hpp"
#include "strata/nn/eval.hpp"
#include "strata/nn/llama.hpp"
#include "test_util.hpp"

namespace strata::kv {
namespace {

std::filesystem::path stories_path() {
  return strata::testing::shared_data_dir() / "models/stories260K/stories260K.bin";
}

struct Stories {
  std::unique_ptr<io::Model> file;
  std::unique_ptr<nn::LlamaModel> model;
  std::vector<int32_t> tokens;  // 80 sampled tokens: a 64-token prompt and 16 probe tokens
};
const Stories& stories() {
  static Stories s = [] {
    Stories r;
    if (!std::filesystem::exists(stories_path())) return r;
    r.file = io::open_model(stories_path());
    r.model = std::make_unique<nn::LlamaModel>(nn::LlamaModel::load(*r.file));
    r.tokens = nn::sample_sequences(*r.model, 1, 80, 1, 5)[0];
    return r;
  }();
  return s;
}

// Records the attention output of one layer the way the engine computes it (rows times values).
class OutputHooks : public nn::ForwardHooks {
 public:
  OutputHooks(int layer, const Session& session, int64_t n_heads, int64_t group, int64_t head_dim)
      : layer_(layer), session_(session), group_(group), hd_(head_dim), out_(static_cast<size_t>(n_heads)) {}
  bool wants_attention(int layer) const override { return layer == layer_; }
  void on_attention(int layer, int head, const float* probs, int64_t q_len, int64_t k_len, int64_t) override {
    const float* v = session_.cache().values(layer, static_cast<int>(head / group_));
    auto& o = out_[static_cast<size_t>(head)];
    o.assign(static_cast<size_t>(q_len * hd_), 0.0);
    for (int64_t t = 0; t < q_len; ++t)
      for (int64_t j = 0; j < k_len; ++j)
        for (int64_t d = 0; d < hd_; ++d)
          o[static_cast<size_t>(t * hd_ + d)] += static_cast<double>(probs[t * k_len + j]) * v[j * hd_ + d];
  }
  const std::vector<std::vector<double>>& out() const { return out_; }

 private:
  int layer_;
  const Session& session_;
  int64_t group_, hd_;
  std::vector<std::vector<double>> out_;
};

TEST(KvAllocate, ProbeErrorIsTheEvictedSessionsAttentionError) {
  STRATA_REQUIRE_FILE(stories_path(), "the stories260K llama2.c checkpoint");
  const auto& s = stories();
  const nn::LlamaConfig& c = s.model->config();
  const std::span<const int32_t> all(s.tokens);
  const auto prompt = all.first(64), probe = all.subspan(64);
  auto scorer = make_scorer("h2o");
  const AttentionProbe ap(*s.model, prompt, probe, scorer);
  EXPECT_EQ(ap.prompt_tokens(), 64);
  EXPECT_EQ(ap.probe_tokens(), 16);
  ASSERT_EQ(static_cast<int64_t>(ap.scores(0).size()), c.n_kv_heads);
  EXPECT_EQ(static_cast<int64_t>(ap.scores(0)[0].size()), 64);

  // Keeping every prompt token loses nothing.
  std::vector<std::vector<int64_t>> every(static_cast<size_t>(c.n_kv_heads), std::vector<int64_t>(64));
  for (auto& e : every) std::iota(e.begin(), e.end(), 0);
  for (int l = 0; l < c.n_layers; ++l) EXPECT_EQ(ap.error(l, every), 0.0);

  // Compress only layer `layer` in a real session at prefill, read the probe over the evicted cache,
  // and compare its attention output with the dense one: the probe must predict that error from
  // the kept positions alone.
  const int layer = 1;
  const int64_t budget = 20;
  std::vector<int64_t> per_layer(static_cast<size_t>(c.n_layers), 80);
  per_layer[layer] = budget;
  const Policy policy = Policy::layerwise(per_layer, 4, 4);
  std::vector<float> logits(static_cast<size_t>(c.vocab_size));
  auto run = [&](std::optional<Eviction> comp, std::vector<std::vector<int64_t>>* kept) {
    Session session(*s.model, 80, std::move(comp));
    session.forward(prompt, logits.data(), nn::Logits::last);
    if (kept) {
      kept->clear();
      for (int h = 0; h < c.n_kv_heads; ++h) {
        const auto pos = session.cache().positions(layer, h);
        kept->emplace_back(pos.begin(), pos.end());
      }
    }
    OutputHooks hooks(layer, session, c.n_heads, c.n_heads / c.n_kv_heads, c.head_dim);
    session.forward(probe, logits.data(), nn::Logits::last, &hooks);
    return hooks.out();
  };
  const auto dense = run(std::nullopt, nullptr);
  std::vector<std::vector<int64_t>> kept;
  const auto evicted = run(Eviction{make_scorer("h2o"), policy, 0}, &kept);
  ASSERT_EQ(static_cast<int64_t>(kept[0].size()), budget);
  double err = 0, ref = 0;
  for (size_t h = 0; h < dense.size(); ++h)
    for (size_t i = 0; i < dense[h].size(); ++i) {
      err += (dense[h][i] - evicted[h][i]) * (dense[h][i] - evicted[h][i]);
      ref += dense[h][i] * dense[h][i];
    }
  const double want = std::sqrt(err / ref);
  EXPECT_GT(want, 1e-3);
  EXPECT_NEAR(ap.error(layer, kept), want, 1e-4 * want + 1e-6);

  // The same kept sets come out of kv::select on the probe's scores (H2O scores after the prompt).
  const std::vector<int64_t> lengths(static_cast<size_t>(c.n_kv_heads), 64);
  EXPECT_EQ(select(Policy::uniform(4, 4), budget, lengths, ap.scores(layer)), kept);
  const auto errs = ap.errors(policy, 0);
  ASSERT_EQ(static_cast<int64_t>(errs.size()), c.n_layers);
  EXPECT_NEAR(errs[layer], want, 1e-4 * want + 1e-6);
  for (int l = 0; l < c.n_layers; ++l)
    if (l != layer) {
      EXPECT_EQ(errs[static_cast<size_t>(l)], 0.0);
    }

  EXPECT_THROW(ap.error(layer, std::vector<std::vector<int64_t>>(1)), Error);
  std::vector<std::vector<int64_t>> outside = every;
  outside[0].push_back(64);
  EXPECT_THROW(ap.error(layer, outside), Error);
}

TEST(KvAllocate, SensitivityTableAndAllocation) {
  STRATA_REQUIRE_FILE(stories_path(), "the stories260K llama2.c checkpoint");
  const auto& s = stories();
  const nn::LlamaConfig& c = s.model->config();
  const std::span<const int32_t> all(s.tokens);
  const AttentionProbe ap(*s.model, all.first(64), all.subspan(64), make_scorer("tova"));
  const Policy within = Policy::uniform(4, 4);
  const std::vector<int64_t> grid = {8, 16, 32, 100};
  const budget::Table table = sensitivity_table(ap, within, grid);
  table.validate();
  ASSERT_EQ(static_cast<int64_t>(table.layers.size()), c.n_layers);
  const std::vector<int64_t> lengths(static_cast<size_t>(c.n_kv_heads), 64);
  for (int l = 0; l < c.n_layers; ++l) {
    const auto& row = table.layers[static_cast<size_t>(l)];
    EXPECT_EQ(row.tensor, "blk." + std::to_string(l) + ".attn_kv");
    // 100 is beyond the prompt: the options are 8, 16, 32 and the whole prompt.
    ASSERT_EQ(row.options.size(), 4u);
    for (size_t i = 0; i < 3; ++i) {
      const int64_t b = grid[i];
      EXPECT_EQ(row.options[i].cost.bytes, static_cast<double>(b));
      EXPECT_EQ(row.options[i].knob, "tokens=" + std::to_string(b));
      const double e = ap.error(l, select(within, b, lengths, ap.scores(l)));
      EXPECT_DOUBLE_EQ(row.options[i].error, e * e);
    }
    EXPECT_EQ(row.options[3].cost.bytes, 64.0);
    EXPECT_EQ(row.options[3].error, 0.0);
  }

  // The allocation meets the total and is the exact optimum of the table (brute force over the
  // 4^L plans of stories260K's few layers).
  const int64_t budget = 24;
  const auto alloc = allocate_layer_budgets(table, budget);
  ASSERT_EQ(static_cast<int64_t>(alloc.size()), c.n_layers);
  EXPECT_LE(std::accumulate(alloc.begin(), alloc.end(), int64_t{0}), budget * c.n_layers);
  double got = 0;
  for (int l = 0; l < c.n_layers; ++l)
    for (const auto& o : table.layers[static_cast<size_t>(l)].options)
      if (o.cost.bytes == static_cast<double>(alloc[static_cast<size_t>(l)])) got += o.error;
  double best = 1e300;
  const int n = static_cast<int>(c.n_layers);
  int64_t plans = 1;
  for (int l = 0; l < n; ++l) plans *= 4;
  for (int64_t code = 0; code < plans; ++code) {
    int64_t cost = 0, k = code;
    double err = 0;
    for (int l = 0; l < n; ++l, k /= 4) {
      const auto& o = table.layers[static_cast<size_t>(l)].options[static_cast<size_t>(k % 4)];
      cost += static_cast<int64_t>(o.cost.bytes);
      err += o.error;
    }
    if (cost <= budget * c.n_layers) best = std::min(best, err);
  }
  EXPECT_NEAR(got, best, 1e-12 + 1e-9 * best);
  EXPECT_THROW(allocate_layer_budgets(table, 7), Error);  // below the cheapest option of every layer

  Policy headwise = Policy::adakv(0.3, 4, 4);
  const Policy p = allocated_policy(table, budget, headwise);
  EXPECT_EQ(p.layers, LayerBudget::layerwise);
  EXPECT_EQ(p.per_layer, alloc);
  EXPECT_TRUE(p.headwise);
  EXPECT_EQ(p.adakv_floor, 0.3);
  EXPECT_EQ(p.sinks, 4);
  EXPECT_EQ(p.recent, 4);

  // A session under the allocated policy holds each layer at its allocated budget.
  Session session(*s.model, 80, Eviction{make_scorer("tova"), allocated_policy(table, budget, within), 0});
  std::vector<float> logits(static_cast<size_t>(c.vocab_size));
  session.forward(all.first(64), logits.data(), nn::Logits::last);
  for (int l = 0; l < c.n_layers; ++l)
    for (int h = 0; h < c.n_kv_heads; ++h)
      EXPECT_EQ(session.cache().length(l, h), std::min<int64_t>(64, alloc[static_cast<size_t>(l)]));
}

TEST(KvAllocate, AllocationOnAHandMadeTable) {
  // Layer a is sensitive, layer b is not: at an average of 20 tokens the optimum gives a 30 and b 10.
  budget::Table t;
  for (const auto& [name, errs] : std::vector<std::pair<std::string, std::vector<double>>>{
           {"a", {9.0, 4.0, 1.0}}, {"b", {0.3, 0.2, 0.1}}}) {
    budget::LayerCandidates row{name, 0, {}};
    const int64_t costs[3] = {10, 20, 30};
    for (size_t i = 0; i < 3; ++i)
      row.options.push_back({"kv.evict", "tokens=" + std::to_string(costs[i]),
                             compress::Cost{static_cast<double>(costs[i]), 0, 0}, errs[i]});
    t.layers.push_back(row);
  }
  EXPECT_EQ(allocate_layer_budgets(t, 20), (std::vector<int64_t>{30, 10}));
  EXPECT_EQ(allocate_layer_budgets(t, 20, budget::Solver::greedy), (std::vector<int64_t>{30, 10}));
  EXPECT_EQ(allocate_layer_budgets(t, 15), (std::vector<int64_t>{20, 10}));
  EXPECT_EQ(allocate_layer_budgets(t, 30), (std::vector<int64_t>{30, 30}));
  EXPECT_THROW(allocate_layer_budgets(t, 9), Error);
  EXPECT_THROW(allocate_layer_budgets(t, 0), Error);
}

}  // namespace
}  // namespace strata::kv

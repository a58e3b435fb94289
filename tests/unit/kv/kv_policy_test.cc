#include "strata/kv/policy.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>
#include <vector>

#include "strata/core/error.hpp"

namespace strata::kv {
namespace {

std::vector<int64_t> range(int64_t b, int64_t e) {
  std::vector<int64_t> r(static_cast<size_t>(e - b));
  std::iota(r.begin(), r.end(), b);
  return r;
}

std::vector<int64_t> concat(std::vector<int64_t> a, const std::vector<int64_t>& b) {
  a.insert(a.end(), b.begin(), b.end());
  std::sort(a.begin(), a.end());
  return a;
}

TEST(KvPolicy, UniformAndLayerwiseBudgets) {
  EXPECT_EQ(layer_budgets(Policy::uniform(), 64, 3), (std::vector<int64_t>{64, 64, 64}));
  EXPECT_EQ(layer_budgets(Policy::layerwise({40, 50, 90}), 0, 3), (std::vector<int64_t>{40, 50, 90}));
  EXPECT_THROW(layer_budgets(Policy::layerwise({40, 50}), 0, 3), Error);
  EXPECT_THROW(layer_budgets(Policy::layerwise({40, 30, 90}), 0, 3), Error);  // 30 < 4 sinks + 32 recent
  EXPECT_THROW(layer_budgets(Policy::uniform(), 35, 3), Error);
  EXPECT_EQ(layer_budgets(Policy::streaming_llm(4), 4, 2), (std::vector<int64_t>{4, 4}));
  EXPECT_THROW(layer_budgets(Policy::streaming_llm(4), 3, 2), Error);
}

TEST(KvPolicy, PyramidFollowsKvpressFormulaWithTheSameTotal) {
  const Policy p = Policy::pyramid(20, 4, 32);
  const int64_t L = 30, B = 128;
  const auto b = layer_budgets(p, B, L);
  ASSERT_EQ(b.size(), static_cast<size_t>(L));
  EXPECT_EQ(std::accumulate(b.begin(), b.end(), int64_t{0}), L * B);
  const double r = B - 36, lo = r / 20, hi = 2 * r - lo;
  for (int64_t l = 0; l < L; ++l) {
    const double exact = 36 + hi - static_cast<double>(l) * (hi - lo) / static_cast<double>(L - 1);
    EXPECT_LE(std::abs(static_cast<double>(b[static_cast<size_t>(l)]) - exact), 1.0) << l;
    if (l > 0) {
      EXPECT_LE(b[static_cast<size_t>(l)], b[static_cast<size_t>(l - 1)]);
    }
  }
  EXPECT_EQ(b.front(), 215);  // 36 + 179.4
  EXPECT_EQ(b.back(), 41);    // 36 + 4.6, rounded up by the remainder
  EXPECT_EQ(layer_budgets(p, B, 1), (std::vector<int64_t>{B}));
  EXPECT_THROW(layer_budgets(Policy::pyramid(0.5), B, L), Error);
}

TEST(KvPolicy, PerHeadSelectionKeepsProtectedAndTopScores) {
  Policy p = Policy::uniform(2, 3);
  std::vector<float> s0(12), s1(12);
  for (int j = 0; j < 12; ++j) {
    s0[static_cast<size_t>(j)] = static_cast<float>((j * 5) % 12);  // 0 5 10 3 8 1 6 11 4 9 2 7
    s1[static_cast<size_t>(j)] = static_cast<float>(-j);
  }
  const std::vector<std::vector<float>> scores = {s0, s1, std::vector<float>(4, 0.0f)};
  const std::vector<int64_t> lengths = {12, 12, 4};
  const auto k = select(p, 8, lengths, scores);
  // Head 0: sinks {0,1}, recent {9,10,11}, best 3 of 2..8 by score: 7 (11), 2 (10), 4 (8).
  EXPECT_EQ(k[0], (std::vector<int64_t>{0, 1, 2, 4, 7, 9, 10, 11}));
  // Head 1: scores fall with the index: the earliest candidates.
  EXPECT_EQ(k[1], (std::vector<int64_t>{0, 1, 2, 3, 4, 9, 10, 11}));
  // A head within its budget keeps everything.
  EXPECT_EQ(k[2], range(0, 4));
  // Ties go to the earlier token.
  const std::vector<std::vector<float>> flat = {std::vector<float>(12, 1.0f)};
  const std::vector<int64_t> one = {12};
  EXPECT_EQ(select(p, 7, one, flat)[0], (std::vector<int64_t>{0, 1, 2, 3, 9, 10, 11}));
  // Bad input.
  const std::vector<std::vector<float>> nan = {std::vector<float>(12, std::nanf(""))};
  EXPECT_THROW(select(p, 7, one, nan), Error);
  const std::vector<std::vector<float>> short_scores = {std::vector<float>(11, 1.0f)};
  EXPECT_THROW(select(p, 7, one, short_scores), Error);
  EXPECT_THROW(select(p, 4, one, flat), Error);  // below sinks + recent
}

TEST(KvPolicy, RecentShareSizesTheWindowFromEachLayersBudget) {
  // H2O's split: half of the budget a recent window, the other half the best scores.
  Policy p = Policy::uniform(2, 3);
  p.recent_share = 0.5;
  EXPECT_EQ(recent_window(p, 4), 3);    // the fixed window when the share is smaller
  EXPECT_EQ(recent_window(p, 10), 5);
  EXPECT_EQ(recent_window(p, 21), 10);  // floor(10.5)
  std::vector<float> s(40);
  for (int j = 0; j < 40; ++j) s[static_cast<size_t>(j)] = static_cast<float>(40 - j);  // earliest best
  const std::vector<std::vector<float>> scores = {s};
  const std::vector<int64_t> one = {40};
  // Budget 12: sinks {0,1}, window of 6 newest {34..39}, then the 4 best candidates {2..5}.
  EXPECT_EQ(select(p, 12, one, scores)[0], concat(range(0, 6), range(34, 40)));
  // Budget 20: window 10, free 8.
  EXPECT_EQ(select(p, 20, one, scores)[0], concat(range(0, 10), range(30, 40)));
  // Per layer: a pyramid gives each layer its own window.
  Policy pyr = Policy::pyramid(20, 2, 3);
  pyr.recent_share = 0.5;
  const auto budgets = layer_budgets(pyr, 20, 4);
  for (size_t l = 0; l < budgets.size(); ++l) {
    const auto k = select(pyr, budgets[l], one, scores)[0];
    const int64_t window = std::max<int64_t>(3, budgets[l] / 2);
    ASSERT_EQ(static_cast<int64_t>(k.size()), budgets[l]) << l;
    EXPECT_EQ(std::vector<int64_t>(k.end() - window, k.end()), range(40 - window, 40)) << l;
    EXPECT_EQ(k[static_cast<size_t>(budgets[l] - window - 1)], budgets[l] - window - 1) << l;  // best = earliest
  }
  // Head-wise floors come out of what the window leaves.
  Policy ada = Policy::adakv(0.5, 2, 3);
  ada.recent_share = 0.5;
  const std::vector<int64_t> two = {40, 40};
  const std::vector<std::vector<float>> flat_and_s = {std::vector<float>(40, 0.0f), s};
  const auto k = select(ada, 20, two, flat_and_s);
  // free per head 20 - 2 - 10 = 8, floor 4 each; the 8 left go to head 1's better scores.
  EXPECT_EQ(k[0], concat(range(0, 6), range(30, 40)));
  EXPECT_EQ(k[1], concat(range(0, 14), range(30, 40)));
  EXPECT_EQ(describe(p), "uniform sinks=2 recent=3 recent_share=0.5");
  p.recent_share = 1.0;
  EXPECT_THROW(select(p, 12, one, scores), Error);
}

TEST(KvPolicy, StreamingKeepsSinksAndWindowWithoutScores) {
  const Policy p = Policy::streaming_llm(4);
  const std::vector<int64_t> lengths = {100, 10, 30};
  const auto k = select(p, 16, lengths, {});
  EXPECT_EQ(k[0], concat(range(0, 4), range(88, 100)));
  EXPECT_EQ(k[1], range(0, 10));
  EXPECT_EQ(k[2], concat(range(0, 4), range(18, 30)));
  EXPECT_EQ(describe(p), "streaming-llm sinks=4");
}

// The kept score mass of the best allocation of `free` candidates over heads with per-head floors,
// found by trying every split (two heads).
double best_mass(const std::vector<std::vector<float>>& cand, int64_t free, int64_t floor) {
  std::vector<std::vector<float>> sorted = cand;
  for (auto& s : sorted) std::sort(s.begin(), s.end(), std::greater<>());
  double best = -1;
  for (int64_t a = floor; a <= free - floor; ++a) {
    const int64_t b = free - a;
    if (a > static_cast<int64_t>(sorted[0].size()) || b > static_cast<int64_t>(sorted[1].size())) continue;
    const double m = std::accumulate(sorted[0].begin(), sorted[0].begin() + a, 0.0) +
                     std::accumulate(sorted[1].begin(), sorted[1].begin() + b, 0.0);
    best = std::max(best, m);
  }
  return best;
}

TEST(KvPolicy, AdaKVSpreadsTheLayerBudgetOverHeadsWithAFloor) {
  const Policy p = Policy::adakv(0.2, 1, 1);
  std::mt19937 rng(3);
  for (int trial = 0; trial < 20; ++trial) {
    // Head 0 concentrated (a few large scores), head 1 flat: AdaKV moves budget to where mass is.
    const int64_t n = 40, b = 12;
    std::vector<std::vector<float>> scores(2, std::vector<float>(n));
    std::exponential_distribution<float> expo(1.0f);
    for (int64_t j = 0; j < n; ++j) {
      scores[0][static_cast<size_t>(j)] = std::pow(expo(rng), 4.0f);
      scores[1][static_cast<size_t>(j)] = 1.0f + 0.01f * expo(rng);
    }
    const std::vector<int64_t> lengths = {n, n};
    const auto k = select(p, b, lengths, scores);
    EXPECT_EQ(k[0].size() + k[1].size(), static_cast<size_t>(2 * b));  // the layer's budget, all used
    const int64_t floor = static_cast<int64_t>(0.2 * (b - 2));
    double mass = 0;
    for (int h = 0; h < 2; ++h) {
      const auto& kh = k[static_cast<size_t>(h)];
      EXPECT_TRUE(std::is_sorted(kh.begin(), kh.end()));
      EXPECT_EQ(kh.front(), 0);      // sink
      EXPECT_EQ(kh.back(), n - 1);   // recent
      EXPECT_GE(static_cast<int64_t>(kh.size()), 2 + floor);
      for (int64_t j : kh)
        if (j != 0 && j != n - 1) mass += scores[static_cast<size_t>(h)][static_cast<size_t>(j)];
    }
    // Optimal over every split that respects the floors.
    std::vector<std::vector<float>> cand(2);
    for (size_t h = 0; h < 2; ++h) cand[h].assign(scores[h].begin() + 1, scores[h].end() - 1);
    EXPECT_NEAR(mass, best_mass(cand, 2 * (b - 2), floor), 1e-3 * mass);
    // And never below the per-head selection.
    const auto u = select(Policy::uniform(1, 1), b, lengths, scores);
    double umass = 0;
    for (int h = 0; h < 2; ++h)
      for (int64_t j : u[static_cast<size_t>(h)])
        if (j != 0 && j != n - 1) umass += scores[static_cast<size_t>(h)][static_cast<size_t>(j)];
    EXPECT_GE(mass, umass - 1e-4 * umass);
  }
  // A layer within H x budget keeps everything, even when one head is over the per-head budget.
  const std::vector<int64_t> uneven = {20, 4};
  const std::vector<std::vector<float>> s = {std::vector<float>(20, 1.0f), std::vector<float>(4, 1.0f)};
  const auto k = select(p, 12, uneven, s);
  EXPECT_EQ(k[0], range(0, 20));
  EXPECT_EQ(k[1], range(0, 4));
  // Floor 1: every head gets its whole free budget first, as per head.
  const std::vector<int64_t> lengths = {30, 30};
  std::vector<std::vector<float>> skew = {std::vector<float>(30, 5.0f), std::vector<float>(30, 1.0f)};
  EXPECT_EQ(select(Policy::adakv(1.0, 1, 1), 10, lengths, skew), select(Policy::uniform(1, 1), 10, lengths, skew));
  // Floor 0: all free budget to the head with the larger scores.
  const auto greedy = select(Policy::adakv(0.0, 1, 1), 10, lengths, skew);
  EXPECT_EQ(greedy[0].size(), 18u);
  EXPECT_EQ(greedy[1], (std::vector<int64_t>{0, 29}));
  EXPECT_THROW(select(Policy::adakv(1.5), 40, lengths, skew), Error);
}

// Records what the eviction tells the scorer.
class Recorder : public Scorer {
 public:
  std::string name() const override { return "recorder"; }
  void score(const Cache& cache, int layer, int head, std::span<float> out) override {
    const auto pos = cache.positions(layer, head);
    for (size_t j = 0; j < pos.size(); ++j) out[j] = static_cast<float>((pos[j] * 7 + head) % 13);
  }
  void kept(int layer, int head, std::span<const int64_t> indices) override {
    calls.push_back({layer, head, static_cast<int64_t>(indices.size())});
  }
  void begin_pass() override { ++passes; }
  struct Call {
    int layer, head;
    int64_t n;
  };
  std::vector<Call> calls;
  int passes = 0;
};

Cache filled(int64_t layers, int64_t heads, int64_t dim, int64_t n) {
  Cache cache(layers, heads, dim);
  std::vector<float> k(static_cast<size_t>(n * heads * dim)), v(k.size());
  for (size_t i = 0; i < k.size(); ++i) {
    k[i] = static_cast<float>(i % 17);
    v[i] = static_cast<float>(i % 5);
  }
  for (int l = 0; l < layers; ++l) cache.append(l, k.data(), v.data(), n, 0);
  return cache;
}

TEST(KvPolicy, EvictionBringsEveryLayerWithinBudget) {
  const int64_t L = 4, H = 2, n = 100;
  {
    auto rec = std::make_shared<Recorder>();
    const Eviction c{rec, Policy::pyramid(20, 2, 4), 40};
    Cache cache = filled(L, H, 4, n);
    const auto budgets = c.layer_budgets(L);
    const int64_t evicted = c.compress(cache);
    int64_t kept = 0;
    for (int l = 0; l < L; ++l)
      for (int h = 0; h < H; ++h) {
        EXPECT_EQ(cache.length(l, h), std::min(n, budgets[static_cast<size_t>(l)]));
        kept += cache.length(l, h);
        const auto pos = cache.positions(l, h);
        EXPECT_EQ(pos[0], 0);
        EXPECT_EQ(pos[1], 1);
        for (int64_t r = 1; r <= 4; ++r) EXPECT_EQ(pos[pos.size() - static_cast<size_t>(r)], n - r);
      }
    EXPECT_EQ(evicted, L * H * n - kept);
    EXPECT_EQ(rec->passes, 1);
    EXPECT_EQ(rec->calls.size(), static_cast<size_t>(L * H));
    for (const auto& call : rec->calls) EXPECT_EQ(call.n, cache.length(call.layer, call.head));
    // Already within budget: nothing to do, nothing scored.
    rec->calls.clear();
    EXPECT_EQ(c.compress(cache), 0);
    EXPECT_TRUE(rec->calls.empty());
  }
  {
    const Eviction c{std::make_shared<Recorder>(), Policy::adakv(0.2, 2, 4), 30};
    Cache cache = filled(L, H, 4, n);
    c.compress(cache);
    for (int l = 0; l < L; ++l) {
      EXPECT_EQ(cache.length(l, 0) + cache.length(l, 1), H * 30);
      for (int h = 0; h < H; ++h) EXPECT_GE(cache.length(l, h), 6 + static_cast<int64_t>(0.2 * 24));
    }
  }
  {
    const Eviction c{nullptr, Policy::streaming_llm(4), 20};
    Cache cache = filled(L, H, 4, n);
    c.compress(cache);
    for (int l = 0; l < L; ++l)
      for (int h = 0; h < H; ++h) {
        const auto pos = cache.positions(l, h);
        EXPECT_EQ(std::vector<int64_t>(pos.begin(), pos.end()), concat(range(0, 4), range(84, 100)));
      }
    EXPECT_EQ(describe(c), "streaming-llm sinks=4, budget 20");
  }
  Cache cache = filled(L, H, 4, n);
  EXPECT_THROW((Eviction{nullptr, Policy::uniform(), 64}.compress(cache)), Error);  // needs a scorer
  EXPECT_THROW((Eviction{std::make_shared<Recorder>(), Policy::uniform(), 0}.compress(cache)), Error);
}

TEST(KvPolicy, Describe) {
  EXPECT_EQ(describe(Policy::uniform()), "uniform sinks=4 recent=32");
  EXPECT_EQ(describe(Policy::pyramid()), "pyramid(beta=20) sinks=4 recent=32");
  EXPECT_EQ(describe(Policy::adakv()), "adakv(floor=0.2) sinks=4 recent=32");
  Policy both = Policy::pyramid();
  both.headwise = true;
  EXPECT_EQ(describe(both), "pyramid(beta=20)+adakv(floor=0.2) sinks=4 recent=32");
  EXPECT_EQ(describe(Policy::layerwise({64})), "layerwise sinks=4 recent=32");
  EXPECT_EQ(describe(Eviction{make_scorer("snapkv"), Policy::adakv(), 128}),
            "snapkv + adakv(floor=0.2) sinks=4 recent=32, budget 128");
}

}  // namespace
}  // namespace strata::kv

#include "strata/kv/scorers.hpp"

#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "strata/core/error.hpp"

namespace strata::kv {
namespace {

// 2 layers, 4 query heads over 2 KV heads (groups {0, 1} and {2, 3}), head_dim 2.
const Layout kLayout{2, 4, 2, 2};

// A cache whose head h of every layer holds tokens at positions 0..n-1 with key (pos + h, 1).
Cache make_cache(int64_t n) {
  Cache cache(kLayout.n_layers, kLayout.n_kv_heads, kLayout.head_dim);
  std::vector<float> k, v;
  for (int64_t t = 0; t < n; ++t)
    for (int64_t h = 0; h < kLayout.n_kv_heads; ++h) {
      k.insert(k.end(), {static_cast<float>(t + h), 1.0f});
      v.insert(v.end(), {1.0f, 0.0f});
    }
  for (int l = 0; l < kLayout.n_layers; ++l) cache.append(l, k.data(), v.data(), n, 0);
  return cache;
}

// Deterministic distinct "attention" rows: row r of a [q, k] block for query head qh.
std::vector<float> block(int64_t q, int64_t k, int qh, float salt) {
  std::vector<float> p(static_cast<size_t>(q * k));
  for (int64_t i = 0; i < q; ++i)
    for (int64_t j = 0; j < k; ++j)
      p[static_cast<size_t>(i * k + j)] = 0.01f * static_cast<float>((i * 7 + j * 3 + qh * 5) % 11) + salt;
  return p;
}

std::vector<float> score(Scorer& s, const Cache& c, int layer, int head) {
  std::vector<float> out(static_cast<size_t>(c.length(layer, head)));
  s.score(c, layer, head, out);
  return out;
}

TEST(KvScorers, H2OAccumulatesEveryRowAndFollowsCompaction) {
  H2O h2o;
  h2o.bind(kLayout);
  Cache cache = make_cache(6);
  const auto p0 = block(3, 6, 0, 0.0f), p1 = block(3, 6, 1, 0.1f);
  h2o.observe(1, 0, p0.data(), 3, 6, 3);
  h2o.observe(1, 1, p1.data(), 3, 6, 3);
  auto s = score(h2o, cache, 1, 0);
  for (int64_t j = 0; j < 6; ++j) {
    float a = 0, b = 0;
    for (int64_t i = 0; i < 3; ++i) {
      a += p0[static_cast<size_t>(i * 6 + j)];
      b += p1[static_cast<size_t>(i * 6 + j)];
    }
    EXPECT_NEAR(s[static_cast<size_t>(j)], (a + b) / 2, 1e-6) << j;  // mean over the GQA group
  }
  // Nothing observed for KV head 1 or layer 0: zeros.
  for (float x : score(h2o, cache, 1, 1)) EXPECT_EQ(x, 0.0f);
  for (float x : score(h2o, cache, 0, 0)) EXPECT_EQ(x, 0.0f);

  // A decode step over one more token adds its row.
  std::vector<float> k(4, 1.0f), v(4, 1.0f);
  cache.append(1, k.data(), v.data(), 1, 6);
  const auto d0 = block(1, 7, 0, 0.2f), d1 = block(1, 7, 1, 0.3f);
  h2o.observe(1, 0, d0.data(), 1, 7, 6);
  h2o.observe(1, 1, d1.data(), 1, 7, 6);
  const auto s2 = score(h2o, cache, 1, 0);
  for (size_t j = 0; j < 7; ++j) {
    const float before = j < 6 ? s[j] : 0.0f;
    EXPECT_NEAR(s2[j], before + (d0[j] + d1[j]) / 2, 1e-6);
  }
  // Compaction: the kept tokens keep their accumulated scores.
  const std::vector<int64_t> keep = {0, 2, 6};
  cache.keep(1, 0, keep);
  h2o.kept(1, 0, keep);
  const auto s3 = score(h2o, cache, 1, 0);
  ASSERT_EQ(s3.size(), 3u);
  for (size_t i = 0; i < keep.size(); ++i) EXPECT_EQ(s3[i], s2[static_cast<size_t>(keep[i])]);
  EXPECT_GT(h2o.state_floats(), 0);
  h2o.reset();
  EXPECT_EQ(h2o.state_floats(), 0);
}

TEST(KvScorers, CompactingTheCacheBehindTheScorersBackIsAnError) {
  H2O h2o;
  h2o.bind(kLayout);
  Cache cache = make_cache(6);
  const auto p = block(2, 6, 0, 0.0f);
  h2o.observe(0, 0, p.data(), 2, 6, 4);
  const std::vector<int64_t> keep = {0, 1};
  cache.keep(0, 0, keep);
  std::vector<float> out(2);
  EXPECT_THROW(h2o.score(cache, 0, 0, out), Error);
}

TEST(KvScorers, TovaUsesTheLastQueryAndMaxReduceTakesTheGroupMax) {
  TOVA tova;
  TOVA tova_max(GroupReduce::max);
  tova.bind(kLayout);
  tova_max.bind(kLayout);
  Cache cache = make_cache(5);
  const auto p2 = block(4, 5, 2, 0.0f), p3 = block(4, 5, 3, 0.05f);
  for (Scorer* s : {static_cast<Scorer*>(&tova), static_cast<Scorer*>(&tova_max)}) {
    s->observe(0, 2, p2.data(), 4, 5, 1);
    s->observe(0, 3, p3.data(), 4, 5, 1);
  }
  const auto mean = score(tova, cache, 0, 1), mx = score(tova_max, cache, 0, 1);
  for (int64_t j = 0; j < 5; ++j) {
    const float a = p2[static_cast<size_t>(3 * 5 + j)], b = p3[static_cast<size_t>(3 * 5 + j)];
    EXPECT_FLOAT_EQ(mean[static_cast<size_t>(j)], a / 2 + b / 2);
    EXPECT_FLOAT_EQ(mx[static_cast<size_t>(j)], std::max(a, b));
  }
}

TEST(KvScorers, TovaEmaIsAMovingAverageOfTheRowsInOrder) {
  // Decay 0.5, layer 0, KV head 0 (query heads 0 and 1), values worked out by hand:
  //   query head 0, two prompt rows: 0.5 [0.5 0.5 0] = [0.25 0.25 0], then
  //                                  0.5 [0.25 0.25 0] + 0.5 [0.2 0.3 0.5] = [0.225 0.275 0.25]
  //   query head 1, one row [1 0 0]: [0.5 0 0]; group mean [0.3625 0.1375 0.125].
  TovaEma ema(0.5);
  ema.bind(kLayout);
  Cache cache = make_cache(3);
  const std::vector<float> q0 = {0.5f, 0.5f, 0.0f, 0.2f, 0.3f, 0.5f}, q1 = {1.0f, 0.0f, 0.0f};
  ema.observe(0, 0, q0.data(), 2, 3, 1);
  ema.observe(0, 1, q1.data(), 1, 3, 2);
  const auto s = score(ema, cache, 0, 0);
  const std::vector<float> want = {0.3625f, 0.1375f, 0.125f};
  for (size_t j = 0; j < 3; ++j) EXPECT_NEAR(s[j], want[j], 1e-6) << j;
  // A decode step over a fourth token (0 in the average until now):
  //   head 0: 0.5 [0.225 0.275 0.25 0] + 0.5 [0.1 0.1 0.2 0.6] = [0.1625 0.1875 0.225 0.3]
  //   head 1: 0.5 [0.5 0 0 0] + 0.5 [0 0 0 1] = [0.25 0 0 0.5]; mean [0.20625 0.09375 0.1125 0.4].
  std::vector<float> k(4, 1.0f), v(4, 1.0f);
  cache.append(0, k.data(), v.data(), 1, 3);
  const std::vector<float> d0 = {0.1f, 0.1f, 0.2f, 0.6f}, d1 = {0.0f, 0.0f, 0.0f, 1.0f};
  ema.observe(0, 0, d0.data(), 1, 4, 3);
  ema.observe(0, 1, d1.data(), 1, 4, 3);
  const auto s2 = score(ema, cache, 0, 0);
  const std::vector<float> want2 = {0.20625f, 0.09375f, 0.1125f, 0.4f};
  for (size_t j = 0; j < 4; ++j) EXPECT_NEAR(s2[j], want2[j], 1e-6) << j;
  // Compaction: kept tokens keep their averages.
  const std::vector<int64_t> keep = {1, 3};
  cache.keep(0, 0, keep);
  ema.kept(0, 0, keep);
  const auto s3 = score(ema, cache, 0, 0);
  ASSERT_EQ(s3.size(), 2u);
  EXPECT_NEAR(s3[0], 0.09375f, 1e-6);
  EXPECT_NEAR(s3[1], 0.4f, 1e-6);
  // By name, with the decay after the colon; bad decays are refused.
  auto named = make_scorer("tova-ema:0.5");
  named->bind(kLayout);
  named->observe(0, 0, q0.data(), 2, 3, 1);
  named->observe(0, 1, q1.data(), 1, 3, 2);
  const auto s4 = score(*named, make_cache(3), 0, 0);
  for (size_t j = 0; j < 3; ++j) EXPECT_NEAR(s4[j], want[j], 1e-6) << j;
  for (const char* bad : {"tova-ema:", "tova-ema:1", "tova-ema:0", "tova-ema:-0.5", "tova-ema:0.5x"})
    EXPECT_THROW(make_scorer(bad), Error) << bad;
  EXPECT_THROW(AttentionScorer("x", {.window = 2, .decay = 0.5}), Error);  // a decay is over every row
  EXPECT_THROW(AttentionScorer("x", {.window = 0, .decay = 1.5}), Error);
}

TEST(KvScorers, SnapKVSumsTheWindowAndPools) {
  // Window of the last 2 queries, average pooling with kernel 3 (zero padding, divided by 3).
  SnapKV snap(2, 3);
  SnapKV snap_max(2, 3, AttentionOptions::Pool::max);
  snap.bind(kLayout);
  snap_max.bind(kLayout);
  Cache cache = make_cache(6);
  const auto p0 = block(4, 6, 0, 0.0f), p1 = block(4, 6, 1, 0.0f);
  for (Scorer* s : {static_cast<Scorer*>(&snap), static_cast<Scorer*>(&snap_max)}) {
    s->observe(0, 0, p0.data(), 4, 6, 2);
    s->observe(0, 1, p1.data(), 4, 6, 2);
  }
  std::vector<double> w0(6), w1(6);
  for (int64_t j = 0; j < 6; ++j)
    for (int64_t i = 2; i < 4; ++i) {
      w0[static_cast<size_t>(j)] += p0[static_cast<size_t>(i * 6 + j)];
      w1[static_cast<size_t>(j)] += p1[static_cast<size_t>(i * 6 + j)];
    }
  const auto avg = score(snap, cache, 0, 0), mx = score(snap_max, cache, 0, 0);
  for (int64_t j = 0; j < 6; ++j) {
    double a0 = 0, a1 = 0, m0 = -1, m1 = -1;
    for (int64_t i = std::max<int64_t>(0, j - 1); i <= std::min<int64_t>(5, j + 1); ++i) {
      a0 += w0[static_cast<size_t>(i)];
      a1 += w1[static_cast<size_t>(i)];
      m0 = std::max(m0, w0[static_cast<size_t>(i)]);
      m1 = std::max(m1, w1[static_cast<size_t>(i)]);
    }
    EXPECT_NEAR(avg[static_cast<size_t>(j)], (a0 / 3 + a1 / 3) / 2, 1e-6) << j;
    EXPECT_NEAR(mx[static_cast<size_t>(j)], (m0 + m1) / 2, 1e-6) << j;
  }
  // Decode rows push the oldest window rows out: after two single-query rows only they count.
  std::vector<float> k(4, 1.0f), v(4, 1.0f);
  cache.append(0, k.data(), v.data(), 1, 6);
  SnapKV plain(2, 1);
  plain.bind(kLayout);
  plain.observe(0, 0, p0.data(), 4, 6, 2);
  const auto r1 = block(1, 7, 0, 0.5f), r2 = block(1, 7, 0, 0.7f);
  plain.observe(0, 0, r1.data(), 1, 7, 6);
  plain.observe(0, 0, r2.data(), 1, 7, 7);
  const auto s = score(plain, cache, 0, 0);
  for (int64_t j = 0; j < 7; ++j)
    EXPECT_NEAR(s[static_cast<size_t>(j)], (r1[static_cast<size_t>(j)] + r2[static_cast<size_t>(j)]) / 2, 1e-6);
  EXPECT_THROW(SnapKV(32, 4), Error);  // even kernel
}

TEST(KvScorers, KeyNormPrefersSmallKeys) {
  KeyNorm norm;
  norm.bind(kLayout);
  const Cache cache = make_cache(4);
  const auto s = score(norm, cache, 1, 1);
  for (int64_t j = 0; j < 4; ++j)  // key (j + 1, 1)
    EXPECT_FLOAT_EQ(s[static_cast<size_t>(j)], -std::sqrt(static_cast<float>((j + 1) * (j + 1) + 1)));
  EXPECT_FALSE(norm.wants_attention(0));
}

TEST(KvScorers, RandomIsSeededAndFollowsTheToken) {
  RandomScorer a(7), b(7), c(8);
  Cache cache = make_cache(50);
  const auto sa = score(a, cache, 0, 1), sb = score(b, cache, 0, 1), sc = score(c, cache, 0, 1);
  EXPECT_EQ(sa, sb);
  EXPECT_NE(sa, sc);
  EXPECT_NE(sa, score(a, cache, 1, 1));  // other layers and heads draw differently
  EXPECT_NE(sa, score(a, cache, 0, 0));
  for (float x : sa) {
    EXPECT_GE(x, 0.0f);
    EXPECT_LT(x, 1.0f);
  }
  // A kept token keeps its score.
  const std::vector<int64_t> keep = {3, 17, 40};
  cache.keep(0, 1, keep);
  const auto after = score(a, cache, 0, 1);
  for (size_t i = 0; i < keep.size(); ++i) EXPECT_EQ(after[i], sa[static_cast<size_t>(keep[i])]);
}

// Scores set by the test: value (layer + 1) * (10 * head + position).
class FixedScorer : public Scorer {
 public:
  std::string name() const override { return "fixed"; }
  void score(const Cache& cache, int layer, int head, std::span<float> out) override {
    const auto pos = cache.positions(layer, head);
    for (size_t j = 0; j < pos.size(); ++j)
      out[j] = static_cast<float>((layer + 1) * (10 * head + pos[j]));
  }
};

TEST(KvScorers, ChunkKVScoresWholeChunksAndReusesThemAcrossLayers) {
  ChunkKV chunk(std::make_shared<FixedScorer>(), 3, 2);
  chunk.bind(kLayout);
  Cache cache = make_cache(7);  // chunks {0,1,2} {3,4,5} {6}
  chunk.begin_pass();
  std::vector<std::vector<float>> l0, l1;
  chunk.score_layer(cache, 0, l0);
  // Chunk score = sum over the two heads of the head's mean score in the chunk.
  auto expected = [](int64_t c) {
    const double mean_pos = c == 2 ? 6.0 : 3.0 * static_cast<double>(c) + 1.0;
    return static_cast<float>((0 + mean_pos) + (10 + mean_pos));
  };
  for (size_t h = 0; h < 2; ++h)
    for (size_t j = 0; j < 7; ++j) EXPECT_FLOAT_EQ(l0[h][j], expected(static_cast<int64_t>(j / 3)));
  // Layer 1 reuses layer 0's chunk scores (its own inner scores would be twice as large).
  chunk.score_layer(cache, 1, l1);
  EXPECT_EQ(l1, l0);
  // A chunk the scoring layer no longer holds ranks last in the reusing layer.
  const std::vector<int64_t> keep = {0, 1, 2, 6};
  for (int h = 0; h < 2; ++h) {
    cache.keep(0, h, keep);
    chunk.kept(0, h, keep);
  }
  chunk.begin_pass();
  chunk.score_layer(cache, 0, l0);
  chunk.score_layer(cache, 1, l1);
  for (int64_t j = 3; j < 6; ++j) EXPECT_LT(l1[0][static_cast<size_t>(j)], l1[0][0]);
  EXPECT_FLOAT_EQ(l1[1][6], expected(2));
  std::vector<float> one(7);
  chunk.score(cache, 1, 1, one);
  EXPECT_EQ(one, l1[1]);
  // Only scoring layers ask for attention, and only when the inner scorer does.
  ChunkKV with_snap;
  with_snap.bind(kLayout);
  EXPECT_TRUE(with_snap.wants_attention(0));
  EXPECT_TRUE(with_snap.wants_attention(1));
  ChunkKV reuse2(nullptr, 20, 2);
  reuse2.bind(kLayout);
  EXPECT_TRUE(reuse2.wants_attention(0));
  EXPECT_FALSE(reuse2.wants_attention(1));
  EXPECT_FALSE(chunk.wants_attention(0));
}

TEST(KvScorers, CloneCopiesObservedStateAndThenGoesItsOwnWay) {
  Cache cache = make_cache(6);
  const auto p = block(3, 6, 0, 0.0f), q = block(1, 6, 2, 0.3f);
  for (auto name : scorer_names()) {
    auto original = make_scorer(name);
    original->bind(kLayout);
    original->begin_pass();
    for (int l = 0; l < kLayout.n_layers; ++l)
      for (int qh = 0; qh < kLayout.n_heads; ++qh)
        if (original->wants_attention(l)) original->observe(l, qh, p.data(), 3, 6, 3);
    auto copy = original->clone();
    EXPECT_EQ(copy->name(), original->name());
    std::vector<std::vector<float>> a, b;
    for (int l = 0; l < kLayout.n_layers; ++l) {
      original->score_layer(cache, l, a);
      copy->score_layer(cache, l, b);
      EXPECT_EQ(a, b) << name << " layer " << l;
    }
    // Independent from here on: what the copy observes does not reach the original.
    if (copy->wants_attention(0)) {
      original->score_layer(cache, 0, a);
      for (int qh = 0; qh < kLayout.n_heads; ++qh) copy->observe(0, qh, q.data(), 1, 6, 6);
      copy->begin_pass();
      original->begin_pass();
      copy->score_layer(cache, 0, b);
      std::vector<std::vector<float>> again;
      original->score_layer(cache, 0, again);
      EXPECT_EQ(again, a) << name;
      EXPECT_NE(b, a) << name;
    }
  }
  EXPECT_THROW(FixedScorer().clone(), Error);  // a scorer that does not say how to copy itself
}

TEST(KvScorers, ByName) {
  for (auto name : scorer_names()) EXPECT_EQ(make_scorer(name)->name(), name);
  EXPECT_THROW(make_scorer("h3o"), Error);
  EXPECT_THROW(H2O().bind(Layout{2, 3, 2, 4}), Error);  // query heads not a multiple of KV heads
}

}  // namespace
}  // namespace strata::kv

// Token merging and pruning: the matching against an exhaustive search, proportional attention exact for
// duplicated tokens (by a direct attention formula and through a small BERT encoder), sizes that always add
// up to the original token count, the allocator's schedule against an exhaustive search, and the refusals of
// bad options.
#include "strata/token/merge.hpp"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <fstream>
#include <map>
#include <numeric>
#include <random>

#include "strata/core/error.hpp"
#include "strata/io/safetensors.hpp"
#include "strata/token/schedule.hpp"
#include "test_util.hpp"

namespace strata::token {
namespace {

using ::testing::HasSubstr;

std::vector<float> random_rows(int64_t n, int64_t d, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> g;
  std::vector<float> v(static_cast<size_t>(n * d));
  for (auto& x : v) x = g(rng);
  return v;
}

double cos_rows(const std::vector<float>& m, int64_t d, int64_t i, int64_t j) {
  double ab = 0, aa = 0, bb = 0;
  for (int64_t c = 0; c < d; ++c) {
    const double a = m[static_cast<size_t>(i * d + c)], b = m[static_cast<size_t>(j * d + c)];
    ab += a * b;
    aa += a * a;
    bb += b * b;
  }
  return ab / std::sqrt(aa * bb);
}

// ---- matching ---------------------------------------------------------------------------------------

// Exhaustive search: of all ways to pick r tokens of set A and send each to any token of set B, the one with
// the largest summed similarity. Returns, per token, the B token it merges into (-1: kept).
std::vector<int64_t> best_matching(const std::vector<float>& m, int64_t n, int64_t d, int64_t r, bool protect) {
  std::vector<int64_t> a_set, b_set;
  for (int64_t i = protect ? 2 : 0; i < n; i += 2) a_set.push_back(i);
  for (int64_t i = 1; i < n; i += 2) b_set.push_back(i);
  const auto na = static_cast<int64_t>(a_set.size()), nb = static_cast<int64_t>(b_set.size());
  double best = -INFINITY;
  std::vector<int64_t> best_into;
  for (uint32_t mask = 0; mask < (1u << na); ++mask) {
    if (std::popcount(mask) != r) continue;
    std::vector<int64_t> chosen;
    for (int64_t i = 0; i < na; ++i)
      if (mask & (1u << i)) chosen.push_back(a_set[static_cast<size_t>(i)]);
    int64_t combos = 1;
    for (int64_t i = 0; i < r; ++i) combos *= nb;
    for (int64_t code = 0; code < combos; ++code) {
      std::vector<int64_t> into(static_cast<size_t>(n), -1);
      double sum = 0;
      int64_t c = code;
      for (int64_t a : chosen) {
        const int64_t b = b_set[static_cast<size_t>(c % nb)];
        c /= nb;
        into[static_cast<size_t>(a)] = b;
        sum += cos_rows(m, d, a, b);
      }
      if (sum > best) {
        best = sum;
        best_into = into;
      }
    }
  }
  return best_into;
}

// `red` keeps the tokens with into[i] < 0 in order and sends every other token to the row of into[i].
void expect_same_merges(const Reduction& red, const std::vector<int64_t>& into, int64_t n, int64_t r) {
  ASSERT_EQ(red.out, n - r) << "n=" << n << " r=" << r;
  int64_t next = 0;
  for (int64_t i = 0; i < n; ++i) {
    const int64_t target = into[static_cast<size_t>(i)];
    if (target < 0) {
      EXPECT_EQ(red.dest[static_cast<size_t>(i)], next++) << "n=" << n << " r=" << r << " token " << i;
    } else {
      EXPECT_EQ(red.dest[static_cast<size_t>(i)], red.dest[static_cast<size_t>(target)])
          << "n=" << n << " r=" << r << " token " << i;
    }
  }
}

// For every r up to cap(n, protect): `fast` (a matching) against `direct` (its reference), on random rows.
template <class Cap, class Fast, class Direct>
void check_matching(std::initializer_list<int64_t> sizes, uint64_t seed, Cap cap, Fast fast, Direct direct) {
  for (int64_t n : sizes)
    for (bool protect : {true, false})
      for (int64_t r = 0; r <= cap(n, protect); ++r) {
        const int64_t d = 6;
        const auto m = random_rows(n, d, seed * n + 10 * static_cast<uint64_t>(r) + protect);
        const Reduction red = fast(m.data(), n, d, d, r, protect);
        // Kept tokens in order; merged ones share their target's row.
        expect_same_merges(red, direct(m, n, d, r, protect), n, r);
        if (protect) {
          EXPECT_EQ(red.dest[0], 0);
        }
      }
}

TEST(BipartiteSoftMatching, AgreesWithExhaustiveSearch) {
  check_matching({2, 5, 8, 9, 11}, 100, max_merge, bipartite_soft_matching, best_matching);
}

// Greedy pairs by the definition: r times, the most similar pair of free tokens (in double precision) over
// every pair, scanned in full.
std::vector<int64_t> greedy_pairs_direct(const std::vector<float>& m, int64_t n, int64_t d, int64_t r, bool protect,
                                         const std::vector<float>& penalty = {}) {
  const auto score = [&](int64_t i, int64_t j) {
    return cos_rows(m, d, i, j) -
           (penalty.empty() ? 0.0 : static_cast<double>(penalty[static_cast<size_t>(i)]) + penalty[static_cast<size_t>(j)]);
  };
  std::vector<int64_t> into(static_cast<size_t>(n), -1);
  std::vector<char> used(static_cast<size_t>(n), 0);
  for (int64_t k = 0; k < r; ++k) {
    double best = -INFINITY;
    int64_t bi = -1, bj = -1;
    for (int64_t i = protect ? 1 : 0; i < n; ++i)
      for (int64_t j = i + 1; j < n; ++j)
        if (!used[static_cast<size_t>(i)] && !used[static_cast<size_t>(j)] && score(i, j) > best) {
          best = score(i, j);
          bi = i;
          bj = j;
        }
    used[static_cast<size_t>(bi)] = used[static_cast<size_t>(bj)] = 1;
    into[static_cast<size_t>(bj)] = bi;
  }
  return into;
}

TEST(GreedyPairMatching, AgreesWithTheDirectDefinition) {
  const auto plain = [](const float* m, int64_t n, int64_t d, int64_t ld, int64_t r, bool protect) {
    return greedy_pair_matching(m, n, d, ld, r, protect);
  };
  check_matching({2, 3, 8, 9, 17, 40}, 300, max_pairs, plain,
                 [](const std::vector<float>& m, int64_t n, int64_t d, int64_t r, bool protect) {
                   return greedy_pairs_direct(m, n, d, r, protect);
                 });
  // With a per-token penalty on each pair's similarity (a size penalty's shape: 0, 0.1 or 0.2 by token).
  const auto penalty = [](int64_t n) {
    std::vector<float> p(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) p[static_cast<size_t>(i)] = 0.1f * static_cast<float>(i % 3);
    return p;
  };
  check_matching(
      {3, 9, 17, 40}, 500, max_pairs,
      [&](const float* m, int64_t n, int64_t d, int64_t ld, int64_t r, bool protect) {
        return greedy_pair_matching(m, n, d, ld, r, protect, penalty(n));
      },
      [&](const std::vector<float>& m, int64_t n, int64_t d, int64_t r, bool protect) {
        return greedy_pairs_direct(m, n, d, r, protect, penalty(n));
      });
}

TEST(BipartiteSoftMatching, MergedRowsAreSizeWeightedMeans) {
  const int64_t n = 9, d = 5;
  const auto m = random_rows(n, d, 7);
  const Reduction red = bipartite_soft_matching(m.data(), n, d, d, 3, true);
  const std::vector<float> size = {1, 2, 1, 3, 1, 1, 4, 1, 2};
  std::vector<float> y(static_cast<size_t>(red.out * d));
  reduce_rows(red, m.data(), d, size, y.data());
  for (int64_t o = 0; o < red.out; ++o)
    for (int64_t c = 0; c < d; ++c) {
      double num = 0, den = 0;
      for (int64_t i = 0; i < n; ++i)
        if (red.dest[static_cast<size_t>(i)] == o) {
          num += size[static_cast<size_t>(i)] * m[static_cast<size_t>(i * d + c)];
          den += size[static_cast<size_t>(i)];
        }
      EXPECT_NEAR(y[static_cast<size_t>(o * d + c)], num / den, 1e-6);
    }
}

TEST(KeepTopFuseRest, KeepsTheMostAttendedAndFusesByAttention) {
  const std::vector<float> score = {0.05f, 0.3f, 0.02f, 0.2f, 0.01f, 0.25f, 0.04f, 0.13f};
  const Reduction red = keep_top_fuse_rest(score, 3);  // keep first + 3 best of the rest, fuse 4
  ASSERT_EQ(red.out, 5);
  // The three highest after the first are tokens 1, 5, 3; in order 1, 3, 5.
  EXPECT_EQ(red.dest, (std::vector<int64_t>{0, 1, 4, 2, 4, 3, 4, 4}));
  const int64_t d = 3;
  const auto x = random_rows(8, d, 3);
  std::vector<float> y(static_cast<size_t>(red.out * d));
  reduce_rows(red, x.data(), d, score, y.data());
  for (int64_t c = 0; c < d; ++c) {
    const double w = 0.02 + 0.01 + 0.04 + 0.13;
    const double fused = (0.02 * x[2 * d + c] + 0.01 * x[4 * d + c] + 0.04 * x[6 * d + c] + 0.13 * x[7 * d + c]) / w;
    EXPECT_NEAR(y[static_cast<size_t>(4 * d + c)], fused, 1e-6);
    EXPECT_EQ(y[static_cast<size_t>(2 * d + c)], x[static_cast<size_t>(3 * d + c)]);
  }
  EXPECT_TRUE(keep_top_fuse_rest(score, 0).identity());
}

// ---- proportional attention: a direct formula -------------------------------------------------------

// softmax(q k^T / sqrt(d) + bias) v for one query, in double.
std::vector<double> attend(const std::vector<float>& q, const std::vector<float>& k, const std::vector<float>& v,
                           const std::vector<double>& bias, int64_t n, int64_t d) {
  std::vector<double> logit(static_cast<size_t>(n)), out(static_cast<size_t>(d), 0.0);
  double top = -INFINITY, sum = 0;
  for (int64_t j = 0; j < n; ++j) {
    double s = 0;
    for (int64_t c = 0; c < d; ++c)
      s += static_cast<double>(q[static_cast<size_t>(c)]) * k[static_cast<size_t>(j * d + c)];
    logit[static_cast<size_t>(j)] = s / std::sqrt(static_cast<double>(d)) + bias[static_cast<size_t>(j)];
    top = std::max(top, logit[static_cast<size_t>(j)]);
  }
  for (auto& l : logit) sum += (l = std::exp(l - top));
  for (int64_t j = 0; j < n; ++j)
    for (int64_t c = 0; c < d; ++c)
      out[static_cast<size_t>(c)] += logit[static_cast<size_t>(j)] / sum * v[static_cast<size_t>(j * d + c)];
  return out;
}

TEST(ProportionalAttention, ExactForDuplicatedTokensByTheDirectFormula) {
  // Keys and values of 8 tokens where tokens 2 and 3, and 6 and 7, are duplicates.
  const int64_t n = 8, d = 4;
  auto k = random_rows(n, d, 11), v = random_rows(n, d, 12);
  for (int64_t c = 0; c < d; ++c) {
    k[static_cast<size_t>(2 * d + c)] = k[static_cast<size_t>(3 * d + c)];
    v[static_cast<size_t>(2 * d + c)] = v[static_cast<size_t>(3 * d + c)];
    k[static_cast<size_t>(6 * d + c)] = k[static_cast<size_t>(7 * d + c)];
    v[static_cast<size_t>(6 * d + c)] = v[static_cast<size_t>(7 * d + c)];
  }
  // The matching on the keys merges exactly the duplicates (cosine 1).
  const Reduction red = bipartite_soft_matching(k.data(), n, d, d, 2, true);
  ASSERT_EQ(red.dest[2], red.dest[3]);
  ASSERT_EQ(red.dest[6], red.dest[7]);
  std::vector<float> km(static_cast<size_t>(red.out * d)), vm(km.size());
  const std::vector<float> ones(static_cast<size_t>(n), 1.0f);
  reduce_rows(red, k.data(), d, ones, km.data());
  reduce_rows(red, v.data(), d, ones, vm.data());
  std::vector<double> log_size(static_cast<size_t>(red.out), 0.0), zero(static_cast<size_t>(n), 0.0);
  for (int64_t i = 0; i < n; ++i) log_size[static_cast<size_t>(red.dest[static_cast<size_t>(i)])] += 1;
  std::vector<double> plain(static_cast<size_t>(red.out), 0.0);
  for (auto& s : log_size) s = std::log(s);
  for (uint64_t seed = 0; seed < 4; ++seed) {
    const auto q = random_rows(1, d, 20 + seed);
    const auto want = attend(q, k, v, zero, n, d);
    const auto got = attend(q, km, vm, log_size, red.out, d);
    const auto unbiased = attend(q, km, vm, plain, red.out, d);
    double off = 0;
    for (int64_t c = 0; c < d; ++c) {
      EXPECT_NEAR(got[static_cast<size_t>(c)], want[static_cast<size_t>(c)], 1e-5);
      off = std::max(off, std::abs(unbiased[static_cast<size_t>(c)] - want[static_cast<size_t>(c)]));
    }
    EXPECT_GT(off, 1e-4) << "without the log-size bias the merged attention should differ";
  }
}

// ---- a small BERT encoder with no position embeddings, so that equal ids give equal rows ----------------

constexpr int64_t kVocab = 30, kDim = 16, kHeads = 2, kHidden = 32, kLayers = 3, kPositions = 40;

struct TinyEncoder {
  std::filesystem::path dir;
  nn::BertEncoder encoder;

  static nn::BertEncoder build(const std::filesystem::path& dir) {
    std::filesystem::create_directories(dir);
    std::mt19937 rng(5);
    std::normal_distribution<float> g(0.0f, 0.3f);
    std::map<std::string, std::pair<Shape, std::vector<float>>> w;
    auto put = [&](const std::string& name, Shape shape, float mean, float scale) {
      std::vector<float> v(static_cast<size_t>(shape.numel()));
      for (auto& x : v) x = mean + scale * g(rng);
      w[name] = {shape, std::move(v)};
    };
    put("embeddings.word_embeddings.weight", {kVocab, kDim}, 0, 3);
    put("embeddings.position_embeddings.weight", {kPositions, kDim}, 0, 0);
    put("embeddings.token_type_embeddings.weight", {2, kDim}, 0, 0);
    put("embeddings.LayerNorm.weight", {kDim}, 1, 0.3f);
    put("embeddings.LayerNorm.bias", {kDim}, 0, 1);
    for (int l = 0; l < kLayers; ++l) {
      const std::string p = "encoder.layer." + std::to_string(l) + ".";
      for (const char* name :
           {"attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense"}) {
        put(p + name + ".weight", {kDim, kDim}, 0, 2);
        put(p + name + ".bias", {kDim}, 0, 1);
      }
      put(p + "intermediate.dense.weight", {kHidden, kDim}, 0, 1);
      put(p + "intermediate.dense.bias", {kHidden}, 0, 1);
      put(p + "output.dense.weight", {kDim, kHidden}, 0, 1);
      put(p + "output.dense.bias", {kDim}, 0, 1);
      for (const char* norm : {"attention.output.LayerNorm", "output.LayerNorm"}) {
        put(p + norm + ".weight", {kDim}, 1, 0.3f);
        put(p + norm + ".bias", {kDim}, 0, 1);
      }
    }
    std::vector<io::SafetensorsEntry> entries;
    for (const auto& [name, t] : w) entries.push_back({name, "F32", t.first, std::as_bytes(std::span(t.second))});
    io::write_safetensors(dir / "model.safetensors", entries, nullptr);
    std::ofstream(dir / "config.json")
        << R"({"num_attention_heads": 2, "hidden_act": "gelu", "layer_norm_eps": 1e-12})";
    return nn::BertEncoder::load(*io::open_model(dir / "model.safetensors"));
  }

  TinyEncoder()
      : dir(std::filesystem::temp_directory_path() / ("strata_token_" + std::to_string(std::random_device{}()))),
        encoder(build(dir)) {}
  ~TinyEncoder() {
    std::error_code ec;
    std::filesystem::remove_all(dir, ec);
  }
};

nn::TokenBatch batch_of(const std::vector<std::vector<int32_t>>& seqs) {
  nn::TokenBatch b;
  b.size = static_cast<int64_t>(seqs.size());
  for (const auto& s : seqs) b.length = std::max<int64_t>(b.length, static_cast<int64_t>(s.size()));
  for (const auto& s : seqs)
    for (int64_t j = 0; j < b.length; ++j) {
      const bool in = j < static_cast<int64_t>(s.size());
      b.ids.push_back(in ? s[static_cast<size_t>(j)] : 0);
      b.attention_mask.push_back(in ? 1 : 0);
    }
  return b;
}

double max_diff(const Tensor& a, const Tensor& b) {
  EXPECT_EQ(a.shape(), b.shape());
  double m = 0;
  const float *pa = a.view<const float>().data(), *pb = b.view<const float>().data();
  for (int64_t i = 0; i < a.numel(); ++i) m = std::max(m, std::abs(static_cast<double>(pa[i]) - pb[i]));
  return m;
}

TEST(TokenMergeEncoder, ProportionalAttentionIsExactForDuplicatedTokens) {
  const TinyEncoder tiny;
  // Tokens 1-2, 3-4 and 6-7 are duplicates at (B, A) positions: the matching merges exactly them.
  const nn::TokenBatch b = batch_of({{1, 7, 7, 12, 12, 3, 9, 9, 20}});
  const Tensor dense = tiny.encoder.forward(b);

  ReducerOptions o;
  o.schedule.fraction = {3.0 / 9.0, 0, 0};
  Reducer merge(o);
  const Tensor merged = tiny.encoder.forward(b, &merge);
  const auto size = merge.sizes(0);
  ASSERT_EQ(size.size(), 6u);
  EXPECT_EQ(std::vector<float>(size.begin(), size.end()), (std::vector<float>{1, 2, 2, 1, 2, 1}));
  EXPECT_LT(max_diff(merged, dense), 1e-5);
  EXPECT_LT(max_diff(tiny.encoder.embed(b, &merge), tiny.encoder.embed(b)), 1e-5);

  o.proportional_attention = false;
  Reducer plain(o);
  EXPECT_GT(max_diff(tiny.encoder.forward(b, &plain), dense), 1e-3);
}

TEST(TokenMergeEncoder, SizesAlwaysSumToTheOriginalTokenCount) {
  const TinyEncoder tiny;
  std::mt19937 rng(9);
  std::uniform_int_distribution<int32_t> id(1, kVocab - 1);
  std::vector<std::vector<int32_t>> seqs;
  for (int64_t len : {9, 17, 12, 33, 4}) {
    std::vector<int32_t> s(static_cast<size_t>(len));
    for (auto& t : s) t = id(rng);
    seqs.push_back(s);
  }
  const nn::TokenBatch b = batch_of(seqs);
  const Tensor dense = tiny.encoder.forward(b);
  for (const auto& [m, metric] : {std::pair{Method::merge, Metric::keys}, std::pair{Method::merge, Metric::hidden},
                                  std::pair{Method::prune, Metric::keys}})
    for (double total : {0.25, 0.4, 0.6}) {
      ReducerOptions o;
      o.method = m;
      o.metric = metric;
      o.schedule = Schedule::decreasing(kLayers, total);
      Reducer r(o);
      const Tensor out = tiny.encoder.forward(b, &r);
      ASSERT_EQ(out.shape(), dense.shape());
      for (int64_t s = 0; s < b.size; ++s) {
        const auto size = r.sizes(s);
        const int64_t n = b.tokens(s);
        EXPECT_DOUBLE_EQ(std::accumulate(size.begin(), size.end(), 0.0), static_cast<double>(n))
            << method_name(m) << " " << total << " sequence " << s;
        EXPECT_EQ(static_cast<int64_t>(size.size()), n - std::llround(n * total))
            << method_name(m) << " " << total << " sequence " << s;
      }
      ASSERT_EQ(r.stats().size(), static_cast<size_t>(kLayers));
      EXPECT_LT(encoder_flops(tiny.encoder.config(), r.stats()),
                dense_encoder_flops(tiny.encoder.config(), std::vector<int64_t>{9, 17, 12, 33, 4}));
    }
}

TEST(TokenMergeEncoder, MergeComputeUnmergeIsExactForDuplicatedTokens) {
  const TinyEncoder tiny;
  // Three duplicated pairs at (B, A) positions stay equal through every layer when their sublayers see equal
  // inputs, so merging exactly them in every attention and MLP (3 of 9 rows) changes nothing.
  const nn::TokenBatch b = batch_of({{1, 7, 7, 12, 12, 3, 9, 9, 20}});
  const Tensor dense = tiny.encoder.forward(b);
  ReducerOptions o;
  o.metric = Metric::hidden;
  o.merge_attention.assign(kLayers, 3.0 / 9.0);
  o.merge_mlp.assign(kLayers, 3.0 / 9.0);
  Reducer merge(o);
  const Tensor merged = tiny.encoder.forward(b, &merge);
  EXPECT_LT(max_diff(merged, dense), 1e-5);
  // Rows the sublayers ran on: 6 of 9 in each; the FLOPs by the direct count.
  ASSERT_EQ(merge.stats().size(), static_cast<size_t>(kLayers));
  for (const auto& l : merge.stats()) {
    EXPECT_EQ(l.tokens_in, 6);
    EXPECT_EQ(l.tokens_out, 6);
    EXPECT_DOUBLE_EQ(l.attention_pairs, 36.0);
  }
  const double per_layer = 2.0 * (6 * 4.0 * kDim * kDim + 36 * 2.0 * kDim + 6 * 2.0 * kDim * kHidden);
  EXPECT_DOUBLE_EQ(encoder_flops(tiny.encoder.config(), merge.stats()), kLayers * per_layer);

  // Without the log-size bias the merged attention weighs a pair as one key: no longer exact.
  o.proportional_attention = false;
  Reducer plain(o);
  EXPECT_GT(max_diff(tiny.encoder.forward(b, &plain), dense), 1e-3);
  // The MLP alone: still exact, the attention runs on every row.
  o.proportional_attention = true;
  o.merge_attention.clear();
  Reducer mlp(o);
  EXPECT_LT(max_diff(tiny.encoder.forward(b, &mlp), dense), 1e-5);
  EXPECT_EQ(mlp.stats()[0].tokens_in, 9);
}

TEST(TokenMergeEncoder, MergeComputeUnmergeKeepsEveryRow) {
  const TinyEncoder tiny;
  const nn::TokenBatch b = batch_of({{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11}, {4, 5, 6}, {3, 9, 27, 1, 2}});
  const Tensor dense = tiny.encoder.forward(b);
  ReducerOptions o;
  o.metric = Metric::hidden;
  o.merge_attention = {0.5, 0, 0.3};
  o.merge_mlp = {0.2, 0.5};
  Reducer r(o);
  const Tensor out = tiny.encoder.forward(b, &r);
  ASSERT_EQ(out.shape(), dense.shape());
  // Merged rows per sequence: round(f n) capped at (n + 1) / 2 - 1 (the first token kept).
  const auto rows = [](double f, std::vector<int64_t> n) {
    int64_t sum = 0;
    for (int64_t k : n) sum += k - std::min<int64_t>(std::llround(f * static_cast<double>(k)), (k + 1) / 2 - 1);
    return sum;
  };
  ASSERT_EQ(r.stats().size(), static_cast<size_t>(kLayers));
  EXPECT_EQ(r.stats()[0].tokens_in, rows(0.5, {11, 3, 5}));
  EXPECT_EQ(r.stats()[0].tokens_out, rows(0.2, {11, 3, 5}));
  EXPECT_EQ(r.stats()[1].tokens_in, 19);
  EXPECT_EQ(r.stats()[1].tokens_out, rows(0.5, {11, 3, 5}));
  EXPECT_EQ(r.stats()[2].tokens_in, rows(0.3, {11, 3, 5}));
  EXPECT_EQ(r.stats()[2].tokens_out, 19);
  // Sizes stay one per row: nothing was merged for good.
  for (int64_t s = 0; s < b.size; ++s) EXPECT_EQ(static_cast<int64_t>(r.sizes(s).size()), b.tokens(s));
}

TEST(TokenMergeEncoder, ProtectedLastTokenKeepsItsOwnRow) {
  const TinyEncoder tiny;
  // The last token duplicates its neighbour: unprotected, the matching would pair them first.
  const nn::TokenBatch b = batch_of({{1, 5, 9, 13, 17, 21, 25, 3, 3}, {2, 4, 6, 8, 8}});
  for (Matching m : {Matching::bipartite, Matching::greedy}) {
    ReducerOptions o;
    o.metric = Metric::hidden;
    o.matching = m;
    o.protect_last = true;
    o.schedule.fraction = {0.2, 0.2, 0.1};
    o.allow_shortfall = true;
    Reducer r(o);
    tiny.encoder.forward(b, &r);
    for (int64_t s = 0; s < b.size; ++s) {
      const auto size = r.sizes(s);
      ASSERT_GT(size.size(), 2u);
      EXPECT_EQ(size.back(), 1.0f) << matching_name(m) << " sequence " << s;
      EXPECT_EQ(size.front(), 1.0f) << matching_name(m) << " sequence " << s;
      EXPECT_LT(static_cast<int64_t>(size.size()), b.tokens(s)) << matching_name(m) << " sequence " << s;
    }
    // Unprotected, with one merging layer (later ones may merge the pair's row into an earlier one): the
    // last row holds the pair.
    o.protect_last = false;
    o.schedule.fraction = {0.2};
    Reducer free(o);
    tiny.encoder.forward(b, &free);
    EXPECT_GE(free.sizes(0).back(), 2.0f) << matching_name(m);
  }
}

// ---- schedules and the allocator --------------------------------------------------------------------

TEST(Schedule, ConstantAndDecreasing) {
  const Schedule c = Schedule::constant(6, 0.5), d = Schedule::decreasing(6, 0.5);
  EXPECT_NEAR(c.total(), 0.5, 1e-12);
  EXPECT_NEAR(d.total(), 0.5, 1e-12);
  for (double f : c.fraction) EXPECT_NEAR(f, 0.5 / 6, 1e-12);
  EXPECT_NEAR(d.fraction[0], 0.5 * 6 / 21, 1e-12);
  EXPECT_NEAR(d.fraction[5], 0.5 * 1 / 21, 1e-12);
  ReducerOptions o;
  o.schedule = c;
  const auto r = Reducer(o).removals(128);
  EXPECT_EQ(std::accumulate(r.begin(), r.end(), int64_t{0}), 64);
}

TEST(Schedule, AllocatorMatchesExhaustiveSearch) {
  nn::BertConfig c;
  c.dim = 8;
  c.hidden_dim = 32;
  c.n_layers = 3;
  Sensitivity s;
  s.fractions = {0.1, 0.2, 0.3};
  s.mean_length = 100;
  s.loss = {{0.02, 0.05, 0.2}, {0.01, 0.03, 0.04}, {0.001, 0.004, 0.03}};
  for (double total : {0.15, 0.3, 0.45}) {
    const double budget = schedule_cost(s, c, Schedule::constant(3, total));
    const Schedule got = allocate_schedule(s, c, budget);
    ASSERT_EQ(got.fraction.size(), 3u);
    EXPECT_LE(schedule_cost(s, c, got), budget * (1 + 1e-9));
    // Every combination of rates: the least summed loss within the budget.
    const std::vector<double> rates = {0, 0.1, 0.2, 0.3};
    double best = INFINITY;
    for (size_t a = 0; a < 4; ++a)
      for (size_t b2 = 0; b2 < 4; ++b2)
        for (size_t e = 0; e < 4; ++e) {
          Schedule x;
          x.fraction = {rates[a], rates[b2], rates[e]};
          if (schedule_cost(s, c, x) > budget * (1 + 1e-9)) continue;
          const double loss = (a ? s.loss[0][a - 1] : 0) + (b2 ? s.loss[1][b2 - 1] : 0) + (e ? s.loss[2][e - 1] : 0);
          best = std::min(best, loss);
        }
    double loss = 0;
    for (size_t l = 0; l < 3; ++l)
      for (size_t i = 0; i < 3; ++i)
        if (std::abs(got.fraction[l] - s.fractions[i]) < 1e-9) loss += s.loss[l][i];
    EXPECT_NEAR(loss, best, 1e-12) << "total " << total;
    // Held to the constant schedule's total as well: both limits met.
    const Schedule capped = allocate_schedule(s, c, budget, total);
    EXPECT_LE(schedule_cost(s, c, capped), budget * (1 + 1e-9));
    EXPECT_LE(capped.total(), total + 1e-9);
  }
}

template <class F>
void expect_error(F f, const std::string& option) {
  try {
    f();
    ADD_FAILURE() << "no error; expected one naming " << option;
  } catch (const Error& e) {
    EXPECT_THAT(e.what(), HasSubstr(option));
  }
}

TEST(Schedule, FlopsFromTheRemovalsEqualTheEncodersCount) {
  const TinyEncoder tiny;
  const nn::TokenBatch b = batch_of({{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13}, {4, 5, 6, 7, 8, 9}, {3, 9, 27, 1}});
  for (const auto& schedule : {Schedule::constant(kLayers, 0.4), Schedule::decreasing(kLayers, 0.6)}) {
    ReducerOptions o;
    o.metric = Metric::hidden;
    o.matching = Matching::greedy;
    o.schedule = schedule;
    o.allow_shortfall = true;
    Reducer r(o);
    tiny.encoder.forward(b, &r);
    EXPECT_DOUBLE_EQ(schedule_flops(tiny.encoder.config(), o, std::vector<int64_t>{13, 6, 4}),
                     encoder_flops(tiny.encoder.config(), r.stats()));
  }
}

TEST(Schedule, SearchKeepsTheTotalAndTheFlopsAndReportsItsLoss) {
  const TinyEncoder tiny;
  std::mt19937 rng(4);
  std::uniform_int_distribution<int32_t> id(1, kVocab - 1);
  std::vector<std::vector<int32_t>> seqs;
  for (int64_t len : {30, 24, 36, 28}) {
    std::vector<int32_t> q(static_cast<size_t>(len));
    for (auto& t : q) t = id(rng);
    seqs.push_back(q);
  }
  const nn::TokenBatch b = batch_of(seqs);
  const std::vector<int64_t> lengths = {30, 24, 36, 28};
  SearchOptions so;
  so.reducer.metric = Metric::hidden;
  so.total = 0.4;
  so.step = 0.05;
  const auto& c = tiny.encoder.config();
  const double dense = dense_encoder_flops(c, lengths);
  // Half way between the constant and the decreasing schedule's FLOPs.
  ReducerOptions probe = so.reducer;
  probe.schedule = Schedule::constant(kLayers, 0.4);
  const double constant = schedule_flops(c, probe, lengths) / dense;
  probe.schedule = Schedule::decreasing(kLayers, 0.4);
  so.max_flops = 0.5 * (constant + schedule_flops(c, probe, lengths) / dense);
  const SearchResult got = search_schedule(tiny.encoder, std::span(&b, 1), so);
  EXPECT_NEAR(got.schedule.total(), 0.4, 1e-9);
  EXPECT_LE(got.flops, so.max_flops + 1e-12);
  probe.schedule = got.schedule;
  EXPECT_DOUBLE_EQ(got.flops, schedule_flops(c, probe, lengths) / dense);
  // The loss it reports, by a run of its own.
  const Tensor d = tiny.encoder.embed(b);
  Reducer r(probe);
  const Tensor e = tiny.encoder.embed(b, &r);
  double cos = 0;
  for (int64_t i = 0; i < b.size; ++i)
    cos += nn::cosine({e.view<const float>().data() + i * kDim, static_cast<size_t>(kDim)},
                      {d.view<const float>().data() + i * kDim, static_cast<size_t>(kDim)});
  EXPECT_NEAR(got.loss, 1 - cos / static_cast<double>(b.size), 1e-6);
  EXPECT_GE(got.evaluations, 1);
  so.max_flops = 0.1;
  expect_error([&] { search_schedule(tiny.encoder, std::span(&b, 1), so); }, "'max_flops'");
  so.max_flops = 0.9;
  so.step = 0.5;
  expect_error([&] { search_schedule(tiny.encoder, std::span(&b, 1), so); }, "'step'");
  expect_error([&] { search_schedule(tiny.encoder, {}, so); }, "'batches'");
}

// ---- refusals ---------------------------------------------------------------------------------------

TEST(TokenReductionErrors, NameTheOption) {
  const auto m = random_rows(8, 4, 1);
  expect_error([&] { bipartite_soft_matching(m.data(), 8, 4, 4, -1); }, "'r'");
  expect_error([&] { bipartite_soft_matching(m.data(), 8, 4, 4, 4); },
               "'r'");  // 3 at most with [CLS] kept
  EXPECT_NO_THROW(bipartite_soft_matching(m.data(), 8, 4, 4, 4, false));
  expect_error([&] { greedy_pair_matching(m.data(), 8, 4, 4, 4); }, "'r'");  // 3 pairs of the 7 others
  expect_error([&] { parse_matching("random"); }, "'matching'");
  const std::vector<float> score(6, 0.1f);
  expect_error([&] { keep_top_fuse_rest(score, 5); }, "'remove'");
  expect_error([&] { keep_top_fuse_rest(score, -2); }, "'remove'");
  expect_error([&] { Schedule::constant(6, 1.2); }, "'schedule'");
  expect_error([&] { Schedule::constant(6, -0.1); }, "'schedule'");
  expect_error([&] { parse_method("drop"); }, "'method'");
  expect_error([&] { parse_metric("values"); }, "'metric'");
  ReducerOptions o;
  o.schedule.fraction = {0.9};  // one layer can merge half the tokens at most
  expect_error([&] { Reducer(o).removals(64); }, "'schedule'");
  o.allow_shortfall = true;
  EXPECT_EQ(Reducer(o).removals(64), std::vector<int64_t>{31});
  ReducerOptions u;
  u.size_penalty = -0.1;
  expect_error([&] { Reducer{u}; }, "'size_penalty'");
  u.size_penalty = 0;
  u.merge_attention = {0.6};
  expect_error([&] { Reducer{u}; }, "'merge_attention'");
  u.merge_attention = {0.2};
  u.merge_mlp = {0.1, -0.1};
  expect_error([&] { Reducer{u}; }, "'merge_mlp'");
  u.merge_mlp.clear();
  u.method = Method::prune;
  u.schedule = Schedule::constant(3, 0.3);
  expect_error([&] { Reducer{u}; }, "'merge_attention'");
  const TinyEncoder tiny;
  expect_error([&] { measure_sensitivity(tiny.encoder, {}, {}); }, "'batches'");
  const nn::TokenBatch b = batch_of({{1, 2, 3, 4, 5, 6}});
  SensitivityOptions so;
  so.fractions = {};
  expect_error([&] { measure_sensitivity(tiny.encoder, std::span(&b, 1), so); }, "'fractions'");
  so.fractions = {0.6};
  expect_error([&] { measure_sensitivity(tiny.encoder, std::span(&b, 1), so); }, "'fractions'");
}

}  // namespace
}  // namespace strata::token

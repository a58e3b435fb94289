// Decode attention: the few-query score and value products against their double-precision
// references, and nn::SplitAttention (KV head x token chunk, softmax partials combined afterwards)
// against attention computed in double over the whole row, at lengths on, around and between chunk
// boundaries, group sizes 1 and 3, one and several new tokens, with and without probabilities.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "kernels/cpu/attention_decode.hpp"
#include "strata/core/error.hpp"
#include "strata/core/parallel.hpp"
#include "strata/nn/attention.hpp"
#include "test_util.hpp"

namespace strata {
namespace {

using testing::gaussian_floats;

TEST(AttentionDecode, ScoresMatchReference) {
  for (const int64_t d : {1, 7, 8, 15, 16, 17, 64, 100})
    for (const int64_t m : {1, 2, 3, 4, 5, 9})
      for (const int64_t n : {1, 2, 3, 17, 300}) {
        const int64_t q_stride = d + 3, k_stride = d + (d % 2), s_stride = n + 5;
        const auto q = gaussian_floats(static_cast<size_t>(m * q_stride), 1);
        const auto k = gaussian_floats(static_cast<size_t>(n * k_stride), 2);
        std::vector<float> got(static_cast<size_t>(m * s_stride), -7.0f), want(got);
        kernels::attention_scores(q.data(), m, q_stride, k.data(), n, k_stride, d, 0.3f, got.data(), s_stride);
        kernels::attention_scores_reference(q.data(), m, q_stride, k.data(), n, k_stride, d, 0.3f, want.data(),
                                            s_stride);
        for (int64_t i = 0; i < m; ++i)
          for (int64_t j = 0; j < s_stride; ++j) {
            const size_t at = static_cast<size_t>(i * s_stride + j);
            if (j >= n) {
              EXPECT_EQ(got[at], -7.0f) << "past the row's end";
              continue;
            }
            double mag = 0;
            for (int64_t c = 0; c < d; ++c) mag += std::fabs(q[static_cast<size_t>(i * q_stride + c)] *
                                                             k[static_cast<size_t>(j * k_stride + c)]);
            ASSERT_NEAR(got[at], want[at], 1e-6 * 0.3 * mag + 1e-7) << "d " << d << " m " << m << " n " << n;
          }
      }
}

TEST(AttentionDecode, ValuesMatchReference) {
  for (const int64_t d : {1, 7, 8, 15, 16, 17, 64, 100})
    for (const int64_t m : {1, 2, 3, 4, 5, 9})
      for (const int64_t n : {1, 2, 3, 17, 300}) {
        const int64_t p_stride = n + 2, v_stride = d + 1, o_stride = d + 4;
        auto p = gaussian_floats(static_cast<size_t>(m * p_stride), 3);
        for (auto& x : p) x = std::fabs(x);
        const auto v = gaussian_floats(static_cast<size_t>(n * v_stride), 4);
        // Accumulates onto what the output holds.
        const auto start = gaussian_floats(static_cast<size_t>(m * o_stride), 5);
        auto got = start, want = start;
        kernels::attention_values(p.data(), m, p_stride, v.data(), n, v_stride, d, got.data(), o_stride);
        kernels::attention_values_reference(p.data(), m, p_stride, v.data(), n, v_stride, d, want.data(), o_stride);
        for (int64_t i = 0; i < m; ++i)
          for (int64_t c = 0; c < o_stride; ++c) {
            const size_t at = static_cast<size_t>(i * o_stride + c);
            if (c >= d) {
              EXPECT_EQ(got[at], start[at]) << "past the row's end";
              continue;
            }
            double mag = std::fabs(start[at]);
            for (int64_t j = 0; j < n; ++j)
              mag += std::fabs(p[static_cast<size_t>(i * p_stride + j)] * v[static_cast<size_t>(j * v_stride + c)]);
            ASSERT_NEAR(got[at], want[at], 1e-6 * mag + 1e-7) << "d " << d << " m " << m << " n " << n;
          }
      }
}

// KV heads of different lengths (eviction keeps different numbers of tokens per head), float rows
// read through the kernels, against nn::attention_reference head by head.
struct Case {
  std::vector<int64_t> lens;
  int64_t group, n, d;
  float loudness;  // query scale: large makes each row's mass sit in a few tokens of some chunks
};

void expect_split_matches_reference(const Case& c, bool probs, bool parallel) {
  const int64_t heads = static_cast<int64_t>(c.lens.size()), m = c.group * c.n, d = c.d;
  const float scale = 1.0f / std::sqrt(static_cast<float>(d));
  std::vector<std::vector<float>> q, k, v;
  for (int64_t h = 0; h < heads; ++h) {
    auto qh = gaussian_floats(static_cast<size_t>(m * d), 10 + static_cast<uint64_t>(h));
    for (auto& x : qh) x *= c.loudness;
    q.push_back(qh);
    k.push_back(gaussian_floats(static_cast<size_t>(c.lens[static_cast<size_t>(h)] * d), 20 + static_cast<uint64_t>(h)));
    v.push_back(gaussian_floats(static_cast<size_t>(c.lens[static_cast<size_t>(h)] * d), 30 + static_cast<uint64_t>(h)));
  }
  nn::SplitAttention split;
  std::vector<float> out(static_cast<size_t>(heads * m * d), -9.0f);
  split.run(
      c.lens, c.group, c.n, d, parallel, probs,
      [&](int h, int64_t begin, int64_t end, float* s, int64_t stride) {
        kernels::attention_scores(q[static_cast<size_t>(h)].data(), m, d, k[static_cast<size_t>(h)].data() + begin * d,
                                  end - begin, d, d, scale, s, stride);
      },
      [&](int h, int64_t begin, int64_t end, const float* p, int64_t stride, float* acc) {
        std::fill(acc, acc + m * d, 0.0f);
        kernels::attention_values(p, m, stride, v[static_cast<size_t>(h)].data() + begin * d, end - begin, d, d, acc, d);
      },
      out.data());
  for (int64_t h = 0; h < heads; ++h) {
    const int64_t len = c.lens[static_cast<size_t>(h)];
    std::vector<float> want(static_cast<size_t>(m * d)), want_p(static_cast<size_t>(m * len));
    nn::attention_reference(q[static_cast<size_t>(h)].data(), c.group, c.n, k[static_cast<size_t>(h)].data(),
                            v[static_cast<size_t>(h)].data(), len, d, scale, want.data(), want_p.data());
    // Float scores are off by about 1e-7 of the sum of |q_c k_c|, which moves each probability by as
    // much relative to it; row r's tolerance follows the largest such sum of its visible tokens.
    std::vector<double> eps(static_cast<size_t>(m));
    float v_max = 0;
    for (const float x : v[static_cast<size_t>(h)]) v_max = std::max(v_max, std::fabs(x));
    for (int64_t r = 0; r < m; ++r) {
      double mag = 0;
      for (int64_t j = 0; j < len - c.n + r % c.n + 1; ++j) {
        double s = 0;
        for (int64_t e = 0; e < d; ++e)
          s += std::fabs(q[static_cast<size_t>(h)][static_cast<size_t>(r * d + e)] *
                         k[static_cast<size_t>(h)][static_cast<size_t>(j * d + e)]);
        mag = std::max(mag, s * scale);
      }
      eps[static_cast<size_t>(r)] = 1e-6 * (mag + 1);
      for (int64_t e = 0; e < d; ++e)
        ASSERT_NEAR(out[static_cast<size_t>((h * m + r) * d + e)], want[static_cast<size_t>(r * d + e)],
                    2 * eps[static_cast<size_t>(r)] * v_max)
            << "len " << len << " group " << c.group << " n " << c.n << " d " << d << " row " << r << " column " << e;
    }
    if (!probs) continue;
    const float* p = split.probs(static_cast<int>(h));
    for (int64_t r = 0; r < m; ++r) {
      double sum = 0;
      for (int64_t j = 0; j < len; ++j) {
        const float w = want_p[static_cast<size_t>(r * len + j)], g = p[r * len + j];
        sum += g;
        if (w == 0.0f) {
          ASSERT_EQ(g, 0.0f) << "len " << len << " row " << r << " token " << j << " is not visible";
        } else {
          ASSERT_NEAR(g, w, 2 * eps[static_cast<size_t>(r)] * w + 1e-9) << "len " << len << " group " << c.group << " row " << r << " token " << j;
        }
      }
      EXPECT_NEAR(sum, 1.0, 1e-5);
    }
  }
}

const int64_t kChunk = nn::SplitAttention::kChunk;

std::vector<Case> cases() {
  std::vector<Case> out;
  for (const int64_t group : {1, 3})
    for (const int64_t n : {1, 3})
      for (const int64_t len : {int64_t{3}, kChunk - 1, kChunk, kChunk + 1, 3 * kChunk + 77})
        for (const float loud : {1.0f, 12.0f}) out.push_back({{len, len, len}, group, n, 64, loud});
  // Heads of different lengths, a head_dim below one vector and one that is not a multiple of it.
  out.push_back({{5, 2 * kChunk + 3, 700}, 3, 1, 64, 4.0f});
  out.push_back({{300, 301}, 2, 2, 8, 1.0f});
  out.push_back({{600}, 3, 1, 20, 3.0f});
  return out;
}

TEST(SplitAttention, MatchesDoubleReferenceWithAndWithoutProbabilities) {
  for (const Case& c : cases())
    for (const bool probs : {false, true}) expect_split_matches_reference(c, probs, /*parallel=*/true);
}

// The chunks depend on the lengths only: the same numbers serially, in parallel and with
// probabilities asked for or not.
TEST(SplitAttention, SameBitsWhateverTheThreadsAndProbabilities) {
  const std::vector<int64_t> lens = {1000, 777, 3 * kChunk};
  const int64_t group = 3, n = 1, d = 64, m = group * n;
  std::vector<std::vector<float>> q, k, v;
  for (size_t h = 0; h < lens.size(); ++h) {
    q.push_back(gaussian_floats(static_cast<size_t>(m * d), 40 + h));
    k.push_back(gaussian_floats(static_cast<size_t>(lens[h] * d), 50 + h));
    v.push_back(gaussian_floats(static_cast<size_t>(lens[h] * d), 60 + h));
  }
  auto run = [&](bool parallel, bool probs) {
    nn::SplitAttention split;
    std::vector<float> out(lens.size() * static_cast<size_t>(m * d));
    split.run(
        lens, group, n, d, parallel, probs,
        [&](int h, int64_t b, int64_t e, float* s, int64_t stride) {
          kernels::attention_scores(q[static_cast<size_t>(h)].data(), m, d, k[static_cast<size_t>(h)].data() + b * d,
                                    e - b, d, d, 0.125f, s, stride);
        },
        [&](int h, int64_t b, int64_t e, const float* p, int64_t stride, float* acc) {
          std::fill(acc, acc + m * d, 0.0f);
          kernels::attention_values(p, m, stride, v[static_cast<size_t>(h)].data() + b * d, e - b, d, d, acc, d);
        },
        out.data());
    return out;
  };
  const auto base = run(true, false);
  EXPECT_EQ(run(false, false), base);
  EXPECT_EQ(run(true, true), base);
  const int threads = num_threads();
  set_num_threads(1);
  const auto one = run(true, false);
  set_num_threads(threads);
  EXPECT_EQ(one, base);
}

TEST(SplitAttention, RefusesAHeadShorterThanTheNewTokens) {
  nn::SplitAttention split;
  std::vector<float> out(64 * 3);
  const std::vector<int64_t> lens = {2};
  auto none_s = [](int, int64_t, int64_t, float*, int64_t) {};
  auto none_v = [](int, int64_t, int64_t, const float*, int64_t, float*) {};
  EXPECT_THROW(split.run(lens, 1, 3, 64, false, false, none_s, none_v, out.data()), Error);
}

}  // namespace
}  // namespace strata

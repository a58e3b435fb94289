// nn::causal_attention against the double-precision oracle nn::attention_reference (one query head,
// group 1): prompts shorter and longer than a row block, not a multiple of it, with keys from before
// the prompt, strided rows as an engine's [tokens, heads * d] layout has them, with and without the
// probabilities.
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <vector>

#include "strata/nn/attention.hpp"

namespace strata::nn {
namespace {

struct Case {
  int64_t n, before, d;
};

class CausalAttention : public ::testing::TestWithParam<Case> {};

TEST_P(CausalAttention, EqualsTheDoubleReference) {
  const Case c = GetParam();
  const int64_t n = c.n, len = c.before + c.n, d = c.d;
  // Rows live inside wider rows (3 heads side by side), head 1 is the one attended.
  const int64_t q_stride = 3 * d, kv_stride = 2 * d, out_stride = 3 * d + 5;
  std::mt19937 rng(static_cast<unsigned>(n * 1000 + len + d));
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> q(static_cast<size_t>(n * q_stride)), k(static_cast<size_t>(len * kv_stride)),
      v(static_cast<size_t>(len * kv_stride));
  for (float& x : q) x = 2.0f * normal(rng);
  for (float& x : k) x = normal(rng);
  for (float& x : v) x = normal(rng);
  // The reference wants contiguous rows.
  std::vector<float> qc(static_cast<size_t>(n * d)), kc(static_cast<size_t>(len * d)), vc(kc.size());
  for (int64_t t = 0; t < n; ++t)
    for (int64_t j = 0; j < d; ++j) qc[static_cast<size_t>(t * d + j)] = q[static_cast<size_t>(t * q_stride + d + j)];
  for (int64_t t = 0; t < len; ++t)
    for (int64_t j = 0; j < d; ++j) {
      kc[static_cast<size_t>(t * d + j)] = k[static_cast<size_t>(t * kv_stride + d + j)];
      vc[static_cast<size_t>(t * d + j)] = v[static_cast<size_t>(t * kv_stride + d + j)];
    }
  const float scale = 1.0f / std::sqrt(static_cast<float>(d));
  std::vector<float> want(static_cast<size_t>(n * d)), want_probs(static_cast<size_t>(n * len));
  attention_reference(qc.data(), 1, n, kc.data(), vc.data(), len, d, scale, want.data(), want_probs.data());

  for (const bool with_probs : {false, true}) {
    SCOPED_TRACE(with_probs ? "with probabilities" : "without probabilities");
    std::vector<float> out(static_cast<size_t>(n * out_stride), 7.0f);
    // Stale values where the probabilities go: every entry must be written.
    std::vector<float> probs(static_cast<size_t>(n * len), 123.0f);
    causal_attention(q.data() + d, q_stride, k.data() + d, v.data() + d, kv_stride, n, len, d, scale, out.data(),
                     out_stride, with_probs ? probs.data() : nullptr);
    for (int64_t t = 0; t < n; ++t) {
      for (int64_t j = 0; j < d; ++j)
        ASSERT_NEAR(out[static_cast<size_t>(t * out_stride + j)], want[static_cast<size_t>(t * d + j)], 2e-5f)
            << "row " << t << " column " << j;
      // Columns past d belong to other heads and stay untouched.
      for (int64_t j = d; j < out_stride; ++j) ASSERT_EQ(out[static_cast<size_t>(t * out_stride + j)], 7.0f);
    }
    if (!with_probs) continue;
    for (int64_t t = 0; t < n; ++t)
      for (int64_t j = 0; j < len; ++j) {
        const float p = probs[static_cast<size_t>(t * len + j)];
        if (j > c.before + t) {
          ASSERT_EQ(p, 0.0f) << "row " << t << " sees key " << j;
        } else {
          ASSERT_NEAR(p, want_probs[static_cast<size_t>(t * len + j)], 1e-6f) << "row " << t << " key " << j;
        }
      }
  }
}

INSTANTIATE_TEST_SUITE_P(Prompts, CausalAttention,
                         ::testing::Values(Case{1, 0, 8}, Case{5, 0, 16}, Case{kCausalRowBlock, 0, 64},
                                           Case{kCausalRowBlock + 1, 0, 64}, Case{300, 0, 64}, Case{300, 45, 64},
                                           Case{2 * kCausalRowBlock, 200, 32}, Case{17, 1000, 64}));

TEST(CausalAttentionRefuses, MoreQueriesThanKeys) {
  std::vector<float> x(64, 0.0f);
  EXPECT_THROW(causal_attention(x.data(), 4, x.data(), x.data(), 4, 3, 2, 4, 1.0f, x.data(), 4), std::exception);
}

}  // namespace
}  // namespace strata::nn

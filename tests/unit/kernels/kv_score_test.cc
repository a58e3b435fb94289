// The KV scoring loops, on every Highway target this CPU supports, against their scalar references:
// float sums within 1e-6 of the sum of absolute terms, top-k index sets exactly.
#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "kernels/kv_score_test.cc"
#include <hwy/foreach_target.h>  // IWYU pragma: keep
#include <hwy/highway.h>
#include <hwy/tests/hwy_gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "kernels/cpu/kv_score-inl.h"
#include "kernels/cpu/kv_score.hpp"

#ifndef STRATA_KV_SCORE_TEST_SHARED_
#define STRATA_KV_SCORE_TEST_SHARED_
namespace strata::kv_score_test {

std::vector<float> gaussian(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> g(0.0f, 1.0f);
  std::vector<float> v(n);
  for (auto& x : v) x = g(rng);
  return v;
}

// Score vectors that stress the tie rule and the sampled threshold: continuous, few distinct values,
// all equal, sorted either way, a periodic pattern, and infinities, signed zeros and the lowest
// float (ChunkKV's score for a dropped chunk) among ties.
std::vector<std::pair<std::string, std::vector<float>>> score_kinds(int64_t n, uint32_t seed) {
  const size_t un = static_cast<size_t>(n);
  std::mt19937 rng(seed);
  std::vector<std::pair<std::string, std::vector<float>>> out;
  out.emplace_back("gaussian", gaussian(un, seed));
  std::vector<float> few(un), equal(un, 0.25f), up(un), down(un), periodic(un), special(un);
  const float specials[] = {std::numeric_limits<float>::infinity(), -std::numeric_limits<float>::infinity(),
                            0.0f, -0.0f, std::numeric_limits<float>::lowest(), 1.0f, -1.0f};
  for (size_t j = 0; j < un; ++j) {
    few[j] = static_cast<float>(rng() % 5);
    up[j] = static_cast<float>(j);
    down[j] = -static_cast<float>(j);
    periodic[j] = static_cast<float>(j % 64 == 0 ? 10 : j % 7);
    special[j] = specials[rng() % 7];
  }
  out.emplace_back("few values", std::move(few));
  out.emplace_back("all equal", std::move(equal));
  out.emplace_back("increasing", std::move(up));
  out.emplace_back("decreasing", std::move(down));
  out.emplace_back("periodic", std::move(periodic));
  out.emplace_back("special", std::move(special));
  return out;
}

std::vector<int64_t> ks_for(int64_t n) {
  std::vector<int64_t> ks = {0, 1, 2, n / 10, n / 3, n / 2, n - 2, n - 1, n, n + 5};
  ks.erase(std::remove_if(ks.begin(), ks.end(), [](int64_t k) { return k < 0; }), ks.end());
  std::sort(ks.begin(), ks.end());
  ks.erase(std::unique(ks.begin(), ks.end()), ks.end());
  return ks;
}

const int64_t kTopKSizes[] = {1, 2, 3, 7, 15, 16, 17, 31, 100, 410, 1000, 1024, 1025, 2047, 4096, 5000, 20000, 100000};

}  // namespace strata::kv_score_test
#endif

HWY_BEFORE_NAMESPACE();
namespace strata {
namespace HWY_NAMESPACE {
namespace t = kv_score_test;

void TestRowDotsMatchReference() {
  for (const int64_t d : {1, 3, 8, 15, 16, 17, 33, 64, 100, 128, 256}) {
    for (const int64_t n : {1, 2, 5, 63, 300}) {
      const int64_t stride = d + (d % 3);  // packed and strided rows
      const auto q = t::gaussian(static_cast<size_t>(d), 1);
      const auto k = t::gaussian(static_cast<size_t>(n * stride), static_cast<uint32_t>(d * 1000 + n));
      std::vector<float> simd(static_cast<size_t>(n)), ref(static_cast<size_t>(n));
      KvRowDots(q.data(), k.data(), n, d, stride, simd.data());
      kernels::kv_row_dots_reference(q.data(), k.data(), n, d, stride, ref.data());
      for (int64_t j = 0; j < n; ++j) {
        double abs = 0;
        for (int64_t i = 0; i < d; ++i) abs += std::abs(static_cast<double>(q[i]) * k[j * stride + i]);
        ASSERT_LE(std::abs(simd[j] - ref[j]), 1e-6 * abs) << "d " << d << " n " << n << " row " << j;
      }
    }
  }
}

void TestRowNormsMatchReference() {
  for (const int64_t d : {1, 3, 16, 17, 64, 127, 256}) {
    const int64_t n = 200, stride = d + 5;
    const auto k = t::gaussian(static_cast<size_t>(n * stride), static_cast<uint32_t>(d));
    std::vector<float> simd(static_cast<size_t>(n)), ref(static_cast<size_t>(n));
    KvRowNorms(k.data(), n, d, stride, simd.data());
    kernels::kv_row_norms_reference(k.data(), n, d, stride, ref.data());
    // The sum of squares is within 1e-6 of itself, so the norm within half that.
    for (int64_t j = 0; j < n; ++j) ASSERT_LE(std::abs(simd[j] - ref[j]), 1e-6 * ref[j]) << "d " << d << " row " << j;
  }
}

void TestAccumulateRowsMatchesReference() {
  for (const int64_t m : {0, 1, 2, 5, 32}) {
    for (const int64_t n : {1, 7, 16, 100, 1001}) {
      const int64_t stride = n + 3;
      const auto rows = t::gaussian(static_cast<size_t>(m * stride), static_cast<uint32_t>(m * 7 + n));
      auto simd = t::gaussian(static_cast<size_t>(n), 99);
      auto ref = simd;
      const auto before = simd;
      KvAccumulateRows(rows.data(), m, n, stride, simd.data());
      kernels::kv_accumulate_rows_reference(rows.data(), m, n, stride, ref.data());
      for (int64_t j = 0; j < n; ++j) {
        double abs = std::abs(before[j]);
        for (int64_t i = 0; i < m; ++i) abs += std::abs(rows[i * stride + j]);
        ASSERT_LE(std::abs(simd[j] - ref[j]), 1e-6 * abs) << "m " << m << " n " << n << " col " << j;
      }
    }
  }
}

void TestTopKMatchesStableSort() {
  for (const int64_t n : t::kTopKSizes) {
    for (const auto& [kind, s] : t::score_kinds(n, static_cast<uint32_t>(n))) {
      for (const int64_t k : t::ks_for(n)) {
        std::vector<int64_t> simd(static_cast<size_t>(n), -1), ref(static_cast<size_t>(n), -1);
        const int64_t got = KvTopK(s.data(), n, k, simd.data());
        const int64_t want = kernels::kv_top_k_reference(s.data(), n, k, ref.data());
        ASSERT_EQ(got, std::min(k, n)) << kind << " n " << n << " k " << k;
        ASSERT_EQ(got, want);
        ASSERT_EQ(simd, ref) << kind << " n " << n << " k " << k;
      }
    }
  }
}

// Random sizes and budgets across the whole range, on data with and without ties.
void TestTopKRandomSizes() {
  std::mt19937 rng(5);
  for (int trial = 0; trial < 60; ++trial) {
    const int64_t n = 1 + static_cast<int64_t>(rng() % (trial < 40 ? 5000 : 100000));
    const int64_t k = static_cast<int64_t>(rng() % static_cast<uint32_t>(n + 1));
    auto s = t::gaussian(static_cast<size_t>(n), static_cast<uint32_t>(trial));
    if (trial % 2) for (auto& x : s) x = std::round(x * 4);
    std::vector<int64_t> simd(static_cast<size_t>(n)), ref(static_cast<size_t>(n));
    ASSERT_EQ(KvTopK(s.data(), n, k, simd.data()), kernels::kv_top_k_reference(s.data(), n, k, ref.data()));
    ASSERT_EQ(simd, ref) << "n " << n << " k " << k;
  }
}

}  // namespace HWY_NAMESPACE
}  // namespace strata
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace strata {
HWY_BEFORE_TEST(KvScoreTest);
HWY_EXPORT_AND_TEST_P(KvScoreTest, TestRowDotsMatchReference);
HWY_EXPORT_AND_TEST_P(KvScoreTest, TestRowNormsMatchReference);
HWY_EXPORT_AND_TEST_P(KvScoreTest, TestAccumulateRowsMatchesReference);
HWY_EXPORT_AND_TEST_P(KvScoreTest, TestTopKMatchesStableSort);
HWY_EXPORT_AND_TEST_P(KvScoreTest, TestTopKRandomSizes);

TEST(KvScore, DispatchedEntryPointsMatchReference) {
  const int64_t n = 37, d = 24;
  const auto q = kv_score_test::gaussian(d, 3), k = kv_score_test::gaussian(n * d, 4);
  std::vector<float> a(n), b(n);
  kernels::kv_row_dots(q.data(), k.data(), n, d, d, a.data());
  kernels::kv_row_dots_reference(q.data(), k.data(), n, d, d, b.data());
  for (int64_t j = 0; j < n; ++j) EXPECT_NEAR(a[j], b[j], 1e-5);
  kernels::kv_row_norms(k.data(), n, d, d, a.data());
  kernels::kv_row_norms_reference(k.data(), n, d, d, b.data());
  for (int64_t j = 0; j < n; ++j) EXPECT_NEAR(a[j], b[j], 1e-5);
  std::vector<float> acc(d, 1.0f), acc_ref(d, 1.0f);
  kernels::kv_accumulate_rows(k.data(), n, d, d, acc.data());
  kernels::kv_accumulate_rows_reference(k.data(), n, d, d, acc_ref.data());
  for (int64_t j = 0; j < d; ++j) EXPECT_NEAR(acc[j], acc_ref[j], 1e-4);
  std::vector<int64_t> top(n), top_ref(n);
  EXPECT_EQ(kernels::kv_top_k(k.data(), n * d, n, top.data()), n);
  kernels::kv_top_k_reference(k.data(), n * d, n, top_ref.data());
  EXPECT_EQ(top, top_ref);
}
}  // namespace strata
#endif

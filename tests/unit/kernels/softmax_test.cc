// The exponential-sum kernels: every Highway target against the scalar references (double
// exponentials and sums), and the references against direct formulas on hand-made rows.
#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "kernels/softmax_test.cc"
#include <hwy/foreach_target.h>  // IWYU pragma: keep
#include <hwy/highway.h>
#include <hwy/tests/hwy_gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <vector>

#include "kernels/cpu/softmax-inl.h"
#include "strata/core/error.hpp"
#include "strata/kernels/softmax.hpp"

#ifndef STRATA_SOFTMAX_TEST_SHARED_
#define STRATA_SOFTMAX_TEST_SHARED_
namespace strata::softmax_test {
// Logits spread like a language model's: most far below the top, a few near it.
inline std::vector<float> logit_row(int64_t n, uint32_t seed, float spread = 8.0f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> g(0.0f, spread);
  std::vector<float> x(static_cast<size_t>(n));
  for (auto& v : x) v = g(rng);
  return x;
}
inline std::vector<float> log_probs(std::vector<float> x) {
  double m = *std::max_element(x.begin(), x.end()), s = 0;
  for (float v : x) s += std::exp(static_cast<double>(v) - m);
  const double lse = m + std::log(s);
  for (auto& v : x) v = static_cast<float>(static_cast<double>(v) - lse);
  return x;
}
// The lengths every test runs: short rows (tails only), odd lengths, and a vocabulary-wide row.
inline std::vector<int64_t> lengths() { return {1, 2, 3, 7, 15, 16, 17, 31, 33, 100, 1023, 4096, 49152}; }
}  // namespace strata::softmax_test
#endif

HWY_BEFORE_NAMESPACE();
namespace softmax_simd {
namespace HWY_NAMESPACE {
using strata::HWY_NAMESPACE::KlFromLogProbs;
using strata::HWY_NAMESPACE::RowMax;
using strata::HWY_NAMESPACE::SiluMul;
using strata::HWY_NAMESPACE::SumExp;
namespace kernels = strata::kernels;
namespace st = strata::softmax_test;

void TestRowMaxExact() {
  for (int64_t n : st::lengths()) {
    const auto x = st::logit_row(n, static_cast<uint32_t>(n));
    EXPECT_EQ(RowMax(x.data(), n), *std::max_element(x.begin(), x.end())) << "n = " << n;
  }
}

void TestSumExpMatchesReference() {
  for (int64_t n : st::lengths()) {
    auto x = st::logit_row(n, static_cast<uint32_t>(n) + 1);
    if (n > 3) x[2] = -std::numeric_limits<float>::infinity();  // a masked entry adds 0
    const float mx = *std::max_element(x.begin(), x.end());
    const double ref = kernels::sum_exp_reference(x.data(), n, mx);
    EXPECT_NEAR(SumExp(x.data(), n, mx, nullptr), ref, 1e-6 * ref) << "n = " << n;
    std::vector<float> out(x.size(), -1.0f);
    const double s = SumExp(x.data(), n, mx, out.data());
    EXPECT_NEAR(s, ref, 1e-6 * ref) << "n = " << n;
    for (int64_t i = 0; i < n; ++i) {
      const double arg = static_cast<double>(x[static_cast<size_t>(i)]) - mx;
      const double want = std::exp(arg);
      // 4 ulp of the exponential, plus the float rounding of x - shift (half an ulp of |arg|).
      const double tol = want == 0 ? 0.0 : want * (5e-7 + std::abs(arg) * 6e-8) + 1e-37;
      ASSERT_NEAR(out[static_cast<size_t>(i)], want, tol) << "n = " << n << ", i = " << i;
    }
  }
}

void TestKlMatchesReference() {
  for (int64_t n : st::lengths()) {
    const auto p = st::log_probs(st::logit_row(n, 7u * static_cast<uint32_t>(n)));
    auto q = p;
    std::mt19937 rng(static_cast<uint32_t>(n));
    std::normal_distribution<float> noise(0.0f, 0.3f);
    for (auto& v : q) v += noise(rng);
    q = st::log_probs(q);
    const double ref = kernels::kl_from_log_probs_reference(p.data(), q.data(), n);
    // The sum has terms of both signs: bound the error by the sum of their magnitudes.
    double magnitude = 0;
    for (int64_t i = 0; i < n; ++i)
      magnitude += std::exp(static_cast<double>(p[static_cast<size_t>(i)])) *
                   std::abs(static_cast<double>(p[static_cast<size_t>(i)]) - q[static_cast<size_t>(i)]);
    EXPECT_NEAR(KlFromLogProbs(p.data(), q.data(), n), ref, 1e-6 * magnitude + 1e-12) << "n = " << n;
    EXPECT_EQ(KlFromLogProbs(p.data(), p.data(), n), 0.0) << "KL(P || P), n = " << n;
  }
}

void TestSiluMulMatchesReference() {
  for (int64_t n : st::lengths()) {
    auto gate = st::logit_row(n, static_cast<uint32_t>(n) + 5, 6.0f);
    if (n > 4) {
      gate[0] = -120.0f;  // exp(120) overflows float: the cap keeps the result 0
      gate[1] = 95.0f;
      gate[2] = 0.0f;
    }
    const auto up = st::logit_row(n, static_cast<uint32_t>(n) + 6, 1.0f);
    auto simd = gate, ref = gate;
    SiluMul(simd.data(), up.data(), n);
    kernels::silu_mul_reference(ref.data(), up.data(), n);
    for (int64_t i = 0; i < n; ++i) {
      const float r = ref[static_cast<size_t>(i)];
      ASSERT_NEAR(simd[static_cast<size_t>(i)], r, 2e-6f * std::abs(r) + 1e-30f) << "n = " << n << ", i = " << i;
    }
  }
}

}  // namespace HWY_NAMESPACE
}  // namespace softmax_simd
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace softmax_simd {
HWY_BEFORE_TEST(SoftmaxTest);
HWY_EXPORT_AND_TEST_P(SoftmaxTest, TestRowMaxExact);
HWY_EXPORT_AND_TEST_P(SoftmaxTest, TestSumExpMatchesReference);
HWY_EXPORT_AND_TEST_P(SoftmaxTest, TestKlMatchesReference);
HWY_EXPORT_AND_TEST_P(SoftmaxTest, TestSiluMulMatchesReference);
}  // namespace softmax_simd

namespace strata {

// The references on rows whose answers are known in closed form.
TEST(Softmax, ReferencesMatchClosedForms) {
  // n equal logits: sum of exp(0) = n; the log-softmax is -log(n) everywhere.
  std::vector<float> flat(1000, 3.5f);
  EXPECT_DOUBLE_EQ(kernels::sum_exp_reference(flat.data(), 1000, 3.5f), 1000.0);
  kernels::log_softmax_inplace(flat.data(), 1000);
  for (float v : flat) EXPECT_NEAR(v, -std::log(1000.0), 1e-6);
  // Two-point distributions: KL(P || Q) = p log(p/q) + (1-p) log((1-p)/(1-q)).
  const double p = 0.8, q = 0.3;
  const std::vector<float> lp = {static_cast<float>(std::log(p)), static_cast<float>(std::log(1 - p))};
  const std::vector<float> lq = {static_cast<float>(std::log(q)), static_cast<float>(std::log(1 - q))};
  const double want = p * std::log(p / q) + (1 - p) * std::log((1 - p) / (1 - q));
  EXPECT_NEAR(kernels::kl_from_log_probs_reference(lp.data(), lq.data(), 2), want, 1e-6);
  EXPECT_NEAR(kernels::kl_from_log_probs(lp.data(), lq.data(), 2), want, 1e-6);
  // A zero-probability entry adds nothing, whatever the other row holds there.
  const float inf = std::numeric_limits<float>::infinity();
  const std::vector<float> lp0 = {0.0f, -inf}, lq0 = {0.0f, -inf};
  EXPECT_EQ(kernels::kl_from_log_probs(lp0.data(), lq0.data(), 2), 0.0);
  // silu(x) = x sigmoid(x): silu(0) = 0, silu(log 3) = log(3) * 3/4.
  std::vector<float> g = {0.0f, static_cast<float>(std::log(3.0))}, u = {5.0f, 2.0f};
  kernels::silu_mul_reference(g.data(), u.data(), 2);
  EXPECT_EQ(g[0], 0.0f);
  EXPECT_NEAR(g[1], std::log(3.0) * 0.75 * 2.0, 1e-6);
}

TEST(Softmax, LogSoftmaxInPlaceNormalizes) {
  for (int64_t n : softmax_test::lengths()) {
    auto x = softmax_test::logit_row(n, static_cast<uint32_t>(n) + 11);
    const auto want = softmax_test::log_probs(x);
    kernels::log_softmax_inplace(x.data(), n);
    double total = 0;
    for (int64_t i = 0; i < n; ++i) {
      ASSERT_NEAR(x[static_cast<size_t>(i)], want[static_cast<size_t>(i)], 2e-6 * (1 + std::abs(want[static_cast<size_t>(i)])));
      total += std::exp(static_cast<double>(x[static_cast<size_t>(i)]));
    }
    EXPECT_NEAR(total, 1.0, 1e-5) << "n = " << n;
  }
}

TEST(Softmax, RefusesBadLengths) {
  float x = 0;
  EXPECT_THROW(kernels::row_max(&x, 0), Error);
  EXPECT_THROW(kernels::sum_exp(&x, -1, 0.0f), Error);
  EXPECT_THROW(kernels::log_softmax_inplace(&x, 0), Error);
  EXPECT_THROW(kernels::kl_from_log_probs(&x, &x, -2), Error);
}

}  // namespace strata
#endif

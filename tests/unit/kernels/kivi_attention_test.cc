// Decode attention from KIVI codes, on every Highway target this CPU supports, against the
// double-precision references: float sums within 1e-6 of the sum of the absolute terms of
// q.min + (q .* scale).code (keys) and sum_j p_j min_jg + (p_j scale_jg) code_jc (values). Head sizes
// with and without a partial chunk at the end, channel groups that do and do not line up with the
// SIMD chunks, one to nine queries, one row to several row blocks.
#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "kernels/kivi_attention_test.cc"
#include <hwy/foreach_target.h>  // IWYU pragma: keep
#include <hwy/highway.h>
#include <hwy/tests/hwy_gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "kernels/cpu/kivi_attention-inl.h"
#include "kernels/cpu/kivi_attention.hpp"
#include "strata/core/dtype.hpp"

#ifndef STRATA_KIVI_ATTENTION_TEST_SHARED_
#define STRATA_KIVI_ATTENTION_TEST_SHARED_
namespace strata::kivi_attention_test {

// n floats uniform in [-2, 2).
std::vector<float> uniform_floats(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> u(-2.0f, 2.0f);
  std::vector<float> v(n);
  for (auto& x : v) x = u(rng);
  return v;
}

uint16_t half_bits(float x) { return f32_to_f16(x).bits; }
double half(uint16_t b) { return f16_to_f32(f16{b}); }

// Random codes, every byte used (so every code value occurs).
std::vector<uint8_t> random_bytes(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<uint8_t> v(n);
  for (auto& x : v) x = static_cast<uint8_t>(rng() & 0xFF);
  return v;
}

double code_of(const uint8_t* row, int64_t c, int bits) {
  const int per = 8 / bits;
  return (row[c / per] >> (c % per * bits)) & ((1 << bits) - 1);
}

// Scales positive, minimums of either sign, some channels loud, as KIVI's grids of real keys are.
std::vector<uint16_t> key_params(int64_t d, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> u(0.0f, 1.0f);
  std::vector<uint16_t> p(static_cast<size_t>(2 * d));
  for (int64_t c = 0; c < d; ++c) {
    const float loud = c % 7 == 5 ? 12.0f : 1.0f;
    p[static_cast<size_t>(2 * c)] = half_bits(loud * (0.01f + 0.3f * u(rng)));
    p[static_cast<size_t>(2 * c + 1)] = half_bits(loud * (2.0f * u(rng) - 1.5f));
  }
  return p;
}

// Value rows: codes, then per channel group a binary16 scale and minimum; a few spare bytes past
// each row, as a cache row stride may have.
std::vector<uint8_t> value_rows(int64_t n, int64_t d, int bits, int64_t group, int64_t row_bytes, uint32_t seed) {
  auto rows = random_bytes(static_cast<size_t>(n * row_bytes), seed);
  std::mt19937 rng(seed + 1);
  std::uniform_real_distribution<float> u(0.0f, 1.0f);
  const int64_t code_bytes = d * bits / 8, ng = (d + group - 1) / group;
  for (int64_t j = 0; j < n; ++j)
    for (int64_t g = 0; g < ng; ++g) {
      const uint16_t params[2] = {half_bits(0.01f + 0.3f * u(rng)), half_bits(2.0f * u(rng) - 1.5f)};
      std::memcpy(rows.data() + j * row_bytes + code_bytes + g * 4, params, 4);
    }
  return rows;
}

const int64_t kDims[] = {4, 8, 12, 16, 20, 32, 36, 64, 72, 128};

}  // namespace strata::kivi_attention_test
#endif

HWY_BEFORE_NAMESPACE();
namespace strata {
namespace HWY_NAMESPACE {
namespace t = kivi_attention_test;

void TestKeyScoresMatchReference() {
  for (const int bits : {2, 4})
    for (const int64_t d : t::kDims)
      for (const int64_t m : {1, 2, 3, 4, 5, 9})
        for (const int64_t n : {1, 2, 3, 33}) {
          const int64_t row_bytes = d * bits / 8 + 3, q_stride = d + 5, score_stride = n + 2;
          const uint32_t seed = static_cast<uint32_t>(bits * 100000 + d * 100 + m * 10 + n);
          const auto q = t::uniform_floats(static_cast<size_t>(m * q_stride), seed);
          const auto codes = t::random_bytes(static_cast<size_t>(n * row_bytes), seed + 1);
          const auto params = t::key_params(d, seed + 2);
          const float scale = 0.125f;
          std::vector<float> simd(static_cast<size_t>(m * score_stride), -7.0f), ref(simd);
          KiviKeyScores(q.data(), m, q_stride, codes.data(), n, row_bytes, d, bits, params.data(), scale, simd.data(),
                        score_stride);
          kernels::kivi_key_scores_reference(q.data(), m, q_stride, codes.data(), n, row_bytes, d, bits,
                                             params.data(), scale, ref.data(), score_stride);
          for (int64_t i = 0; i < m; ++i) {
            for (int64_t j = 0; j < n; ++j) {
              double abs = 0;
              for (int64_t c = 0; c < d; ++c) {
                const double qc = q[static_cast<size_t>(i * q_stride + c)];
                abs += std::abs(qc * t::half(params[static_cast<size_t>(2 * c + 1)])) +
                       std::abs(qc * t::half(params[static_cast<size_t>(2 * c)]) *
                                t::code_of(codes.data() + j * row_bytes, c, bits));
              }
              const size_t at = static_cast<size_t>(i * score_stride + j);
              ASSERT_LE(std::abs(simd[at] - ref[at]), 1e-6 * scale * abs)
                  << "bits " << bits << " d " << d << " m " << m << " n " << n << " (" << i << ", " << j << ")";
            }
            for (int64_t j = n; j < score_stride; ++j)
              ASSERT_EQ(simd[static_cast<size_t>(i * score_stride + j)], -7.0f) << "the stride's gap untouched";
          }
        }
}

void TestValuesMatchReference() {
  for (const int bits : {2, 4})
    for (const int64_t d : t::kDims)
      for (const int64_t group : {1, 3, 4, 16, 32, 64, 1000})
        for (const int64_t m : {1, 2, 3, 4, 7})
          for (const int64_t n : {1, 2, 5, 300}) {
            const int64_t g = std::min(group, d), ng = (d + g - 1) / g;
            const int64_t row_bytes = d * bits / 8 + ng * 4 + 1, p_stride = n + 3, out_stride = d + 2;
            const uint32_t seed = static_cast<uint32_t>(bits * 1000000 + d * 10000 + group * 10 + m + n);
            const auto rows = t::value_rows(n, d, bits, g, row_bytes, seed);
            auto p = t::uniform_floats(static_cast<size_t>(m * p_stride), seed + 3);
            for (auto& x : p) x = std::abs(x) / static_cast<float>(n);
            const auto before = t::uniform_floats(static_cast<size_t>(m * out_stride), seed + 4);
            auto simd = before, ref = before;
            KiviValues(p.data(), m, p_stride, rows.data(), n, row_bytes, d, bits, group, simd.data(), out_stride);
            kernels::kivi_values_reference(p.data(), m, p_stride, rows.data(), n, row_bytes, d, bits, group, ref.data(),
                                           out_stride);
            const int64_t code_bytes = d * bits / 8;
            for (int64_t i = 0; i < m; ++i) {
              for (int64_t c = 0; c < d; ++c) {
                const size_t at = static_cast<size_t>(i * out_stride + c);
                double abs = std::abs(before[at]);
                for (int64_t j = 0; j < n; ++j) {
                  const uint8_t* row = rows.data() + j * row_bytes;
                  uint16_t prm[2];
                  std::memcpy(prm, row + code_bytes + c / g * 4, 4);
                  const double pj = p[static_cast<size_t>(i * p_stride + j)];
                  abs += std::abs(pj * t::half(prm[1])) + std::abs(pj * t::half(prm[0]) * t::code_of(row, c, bits));
                }
                ASSERT_LE(std::abs(simd[at] - ref[at]), 1e-6 * abs)
                    << "bits " << bits << " d " << d << " group " << group << " m " << m << " n " << n << " (" << i
                    << ", " << c << ")";
              }
              for (int64_t c = d; c < out_stride; ++c) {
                const size_t at = static_cast<size_t>(i * out_stride + c);
                ASSERT_EQ(simd[at], before[at]) << "the stride's gap untouched";
              }
            }
          }
}

}  // namespace HWY_NAMESPACE
}  // namespace strata
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace strata {
HWY_BEFORE_TEST(KiviAttentionTest);
HWY_EXPORT_AND_TEST_P(KiviAttentionTest, TestKeyScoresMatchReference);
HWY_EXPORT_AND_TEST_P(KiviAttentionTest, TestValuesMatchReference);

// The references against the dequantized rows written out here (x' = min + scale * code, code c at
// bit (c % per) * bits of byte c / per), and the dispatched entry points against the references.
TEST(KiviAttention, ReferencesAndDispatchedEntryPoints) {
  namespace t = kivi_attention_test;
  for (const int bits : {2, 4}) {
    const int64_t d = 24, n = 37, m = 3, group = 8, ng = d / group;
    const int64_t key_bytes = d * bits / 8, value_bytes = key_bytes + ng * 4;
    const auto q = t::uniform_floats(static_cast<size_t>(m * d), 3);
    const auto codes = t::random_bytes(static_cast<size_t>(n * key_bytes), 4);
    const auto params = t::key_params(d, 5);
    const auto rows = t::value_rows(n, d, bits, group, value_bytes, 6);
    std::vector<float> k(static_cast<size_t>(n * d)), v(k.size());
    for (int64_t j = 0; j < n; ++j)
      for (int64_t c = 0; c < d; ++c) {
        const int per = 8 / bits, shift = static_cast<int>(c % per) * bits;
        const int kc = (codes[static_cast<size_t>(j * key_bytes + c / per)] >> shift) & ((1 << bits) - 1);
        const int vc = (rows[static_cast<size_t>(j * value_bytes + c / per)] >> shift) & ((1 << bits) - 1);
        k[static_cast<size_t>(j * d + c)] = static_cast<float>(t::half(params[static_cast<size_t>(2 * c + 1)]) +
                                                               t::half(params[static_cast<size_t>(2 * c)]) * kc);
        uint16_t prm[2];
        std::memcpy(prm, rows.data() + j * value_bytes + key_bytes + c / group * 4, 4);
        v[static_cast<size_t>(j * d + c)] = static_cast<float>(t::half(prm[1]) + t::half(prm[0]) * vc);
      }
    std::vector<float> got(static_cast<size_t>(m * n)), ref(got.size());
    kernels::kivi_key_scores(q.data(), m, d, codes.data(), n, key_bytes, d, bits, params.data(), 0.5f, got.data(), n);
    kernels::kivi_key_scores_reference(q.data(), m, d, codes.data(), n, key_bytes, d, bits, params.data(), 0.5f,
                                       ref.data(), n);
    for (int64_t i = 0; i < m; ++i)
      for (int64_t j = 0; j < n; ++j) {
        double s = 0;
        for (int64_t c = 0; c < d; ++c) s += static_cast<double>(q[static_cast<size_t>(i * d + c)]) * k[static_cast<size_t>(j * d + c)];
        EXPECT_NEAR(ref[static_cast<size_t>(i * n + j)], 0.5 * s, 1e-5 * (1 + std::abs(s))) << "bits " << bits;
        EXPECT_NEAR(got[static_cast<size_t>(i * n + j)], ref[static_cast<size_t>(i * n + j)], 1e-4) << "bits " << bits;
      }
    const auto p = t::uniform_floats(static_cast<size_t>(m * n), 7);
    std::vector<float> out(static_cast<size_t>(m * d), 1.0f), out_ref(out);
    kernels::kivi_values(p.data(), m, n, rows.data(), n, value_bytes, d, bits, group, out.data(), d);
    kernels::kivi_values_reference(p.data(), m, n, rows.data(), n, value_bytes, d, bits, group, out_ref.data(), d);
    for (int64_t i = 0; i < m; ++i)
      for (int64_t c = 0; c < d; ++c) {
        double s = 1;
        for (int64_t j = 0; j < n; ++j) s += static_cast<double>(p[static_cast<size_t>(i * n + j)]) * v[static_cast<size_t>(j * d + c)];
        EXPECT_NEAR(out_ref[static_cast<size_t>(i * d + c)], s, 1e-5 * (1 + std::abs(s))) << "bits " << bits;
        EXPECT_NEAR(out[static_cast<size_t>(i * d + c)], out_ref[static_cast<size_t>(i * d + c)], 1e-4) << "bits " << bits;
      }
  }
}
}  // namespace strata
#endif

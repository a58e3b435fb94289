// kv::Cache in its stored forms (CacheFormat): every format's round trip against the quantization
// formula written out here, attention from the stored form against float attention over the
// dequantized rows, bytes() against sizes computed by hand and against the heap the cache holds,
// eviction on a quantized cache, the Hadamard rotation, refusals of bad options, and sessions on
// real models decoding with a quantized cache.
#include <gtest/gtest.h>
#include <malloc.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <map>
#include <memory>
#include <numeric>
#include <string>
#include <vector>

#include "strata/core/dtype.hpp"
#include "strata/core/error.hpp"
#include "strata/io/model.hpp"
#include "strata/kernels/hadamard.hpp"
#include "strata/kv/cache.hpp"
#include "strata/kv/session.hpp"
#include "strata/nn/attention.hpp"
#include "strata/nn/eval.hpp"
#include "strata/nn/llama.hpp"
#include "test_util.hpp"

namespace strata::kv {
namespace {

constexpr int64_t kDim = 64;

float half(float x) { return f16_to_f32(f32_to_f16(x)); }

// Rows [tokens, n_heads * kDim] with a few loud channels, as real keys have.
std::vector<float> rows(int64_t tokens, int64_t heads, uint64_t seed) {
  auto v = testing::gaussian_floats(static_cast<size_t>(tokens * heads * kDim), seed);
  for (int64_t t = 0; t < tokens; ++t)
    for (int64_t h = 0; h < heads; ++h) v[static_cast<size_t>((t * heads + h) * kDim + 5)] *= 12.0f;
  return v;
}

// One head's rows out of [tokens, heads * kDim].
std::vector<float> head_rows(const std::vector<float>& x, int64_t tokens, int64_t heads, int64_t head) {
  std::vector<float> out(static_cast<size_t>(tokens * kDim));
  for (int64_t t = 0; t < tokens; ++t)
    std::copy_n(x.begin() + (t * heads + head) * kDim, kDim, out.begin() + t * kDim);
  return out;
}

// ggml's Q8_0 and Q4_0 written out: a block of 32 with an f16 scale d; Q8_0 q = round(x / d),
// d = amax / 127; Q4_0 q = min(15, trunc(x / d + 8.5)), d = (the value of largest magnitude) / -8.
std::vector<float> q8_0_formula(const std::vector<float>& x) {
  std::vector<float> y(x.size());
  for (size_t b = 0; b < x.size(); b += 32) {
    float amax = 0;
    for (size_t i = b; i < b + 32; ++i) amax = std::max(amax, std::fabs(x[i]));
    const float d = amax / 127, id = d != 0 ? 1.0f / d : 0.0f;
    for (size_t i = b; i < b + 32; ++i) y[i] = std::nearbyint(x[i] * id) * half(d);
  }
  return y;
}
std::vector<float> q4_0_formula(const std::vector<float>& x) {
  std::vector<float> y(x.size());
  for (size_t b = 0; b < x.size(); b += 32) {
    float amax = 0, max = 0;
    for (size_t i = b; i < b + 32; ++i)
      if (std::fabs(x[i]) > amax) {
        amax = std::fabs(x[i]);
        max = x[i];
      }
    const float d = max / -8, id = d != 0 ? 1.0f / d : 0.0f;
    for (size_t i = b; i < b + 32; ++i) {
      const int q = std::min(15, static_cast<int>(static_cast<int8_t>(x[i] * id + 8.5f)));
      y[i] = static_cast<float>(q - 8) * half(d);
    }
  }
  return y;
}

// KIVI's asymmetric grid over the elements x[idx]: scale = (max - min) / (2^bits - 1) and min, both
// stored as binary16; code = clamp(round((x - min) / scale)); x' = min + scale * code.
void kivi_formula(const std::vector<float>& x, const std::vector<size_t>& idx, int bits, std::vector<float>& y) {
  float lo = x[idx[0]], hi = x[idx[0]];
  for (size_t i : idx) {
    lo = std::min(lo, x[i]);
    hi = std::max(hi, x[i]);
  }
  const float levels = static_cast<float>((1 << bits) - 1);
  const float s = half((hi - lo) / levels), m = half(lo);
  for (size_t i : idx) {
    const float code = s > 0 ? std::clamp(std::nearbyint((x[i] - m) / s), 0.0f, levels) : 0.0f;
    y[i] = m + s * code;
  }
}

// One head of `tokens` rows stored as KIVI with group G and residual R: keys per channel over whole
// groups of G tokens while R + G wait, values per token over groups of G channels beyond the newest R.
void kivi_head_formula(const std::vector<float>& k, const std::vector<float>& v, int64_t tokens, int bits, int64_t G,
                       int64_t R, std::vector<float>& k_out, std::vector<float>& v_out) {
  k_out = k;
  v_out = v;
  const int64_t key_groups = tokens >= R + G ? (tokens - R) / G : 0;
  for (int64_t g = 0; g < key_groups; ++g)
    for (int64_t c = 0; c < kDim; ++c) {
      std::vector<size_t> idx;
      for (int64_t t = g * G; t < (g + 1) * G; ++t) idx.push_back(static_cast<size_t>(t * kDim + c));
      kivi_formula(k, idx, bits, k_out);
    }
  for (int64_t t = 0; t < tokens - R; ++t)
    for (int64_t c0 = 0; c0 < kDim; c0 += std::min(G, kDim)) {
      std::vector<size_t> idx;
      for (int64_t c = c0; c < std::min(c0 + G, kDim); ++c) idx.push_back(static_cast<size_t>(t * kDim + c));
      kivi_formula(v, idx, bits, v_out);
    }
}

CacheFormat format_of(KvFormat f, bool rotate = false, int64_t group = 16, int64_t residual = 8) {
  CacheFormat c;
  c.key = c.value = f;
  c.kivi_group = group;
  c.kivi_residual = residual;
  c.rotate = rotate;
  c.rotation_seed = 3;
  return c;
}

std::vector<float> read(const Cache& c, bool keys, int layer, int head) {
  std::vector<float> out(static_cast<size_t>(c.length(layer, head) * kDim));
  if (keys)
    c.read_keys(layer, head, 0, c.length(layer, head), out.data());
  else
    c.read_values(layer, head, 0, c.length(layer, head), out.data());
  return out;
}

void expect_equal(const std::vector<float>& got, const std::vector<float>& want, float tol, const std::string& what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  for (size_t i = 0; i < got.size(); ++i)
    ASSERT_NEAR(got[i], want[i], tol * (1 + std::fabs(want[i]))) << what << " at " << i;
}

// ---- round trips -----------------------------------------------------------------------------------

TEST(KvCacheFormat, RoundTripsMatchTheFormulas) {
  const int64_t tokens = 50, heads = 2;
  const auto k = rows(tokens, heads, 1), v = rows(tokens, heads, 2);
  for (KvFormat f : kv_formats()) {
    // Appended one token at a time and as one prefill: the same stored rows.
    Cache one(1, heads, kDim, 0, format_of(f)), bulk(1, heads, kDim, 0, format_of(f));
    for (int64_t t = 0; t < tokens; ++t)
      one.append(0, k.data() + t * heads * kDim, v.data() + t * heads * kDim, 1, t);
    bulk.append(0, k.data(), v.data(), tokens, 0);
    for (int h = 0; h < heads; ++h) {
      const auto kh = head_rows(k, tokens, heads, h), vh = head_rows(v, tokens, heads, h);
      std::vector<float> kw, vw;
      switch (f) {
        case KvFormat::f32: kw = kh, vw = vh; break;
        case KvFormat::f16:
          kw = kh, vw = vh;
          for (auto& x : kw) x = half(x);
          for (auto& x : vw) x = half(x);
          break;
        case KvFormat::q8_0: kw = q8_0_formula(kh), vw = q8_0_formula(vh); break;
        case KvFormat::q4_0: kw = q4_0_formula(kh), vw = q4_0_formula(vh); break;
        case KvFormat::kivi2:
        case KvFormat::kivi4: kivi_head_formula(kh, vh, tokens, f == KvFormat::kivi2 ? 2 : 4, 16, 8, kw, vw); break;
      }
      const std::string what = std::string(to_string(f)) + " head " + std::to_string(h);
      expect_equal(read(one, true, 0, h), kw, 1e-6f, what + " keys");
      expect_equal(read(one, false, 0, h), vw, 1e-6f, what + " values");
      expect_equal(read(bulk, true, 0, h), kw, 1e-6f, what + " keys, prefill");
      expect_equal(read(bulk, false, 0, h), vw, 1e-6f, what + " values, prefill");
      // The quantization did something (or nothing, for f32).
      const bool exact = read(one, true, 0, h) == kh;
      EXPECT_EQ(exact, f == KvFormat::f32) << what;
    }
  }
}

// Per layer, keys and values each in their own format.
TEST(KvCacheFormat, PerLayerFormats) {
  const int64_t tokens = 40;
  const auto k = rows(tokens, 1, 21), v = rows(tokens, 1, 22);
  CacheFormat f;
  f.layers = {{KvFormat::q4_0, KvFormat::f32}, {KvFormat::f16, KvFormat::q8_0}};
  Cache c(2, 1, kDim, 0, f);
  for (int l = 0; l < 2; ++l) c.append(l, k.data(), v.data(), tokens, 0);
  expect_equal(read(c, true, 0, 0), q4_0_formula(k), 1e-6f, "layer 0 keys");
  EXPECT_EQ(read(c, false, 0, 0), v);
  auto kh = k;
  for (auto& x : kh) x = half(x);
  expect_equal(read(c, true, 1, 0), kh, 1e-6f, "layer 1 keys");
  expect_equal(read(c, false, 1, 0), q8_0_formula(v), 1e-6f, "layer 1 values");
  EXPECT_EQ(c.bytes_per_token(0), 36u + 256u + 8u);
  EXPECT_EQ(c.bytes_per_token(1), 128u + 68u + 8u);
  EXPECT_FALSE(f.full_precision());
  EXPECT_THROW(c.keys(0, 0), Error);
  EXPECT_NE(c.values(0, 0), nullptr);  // float32 values of layer 0 are still rows in place
}

// Rotated: the stored rows are the formula applied to R x, read back through R^T.
TEST(KvCacheFormat, RotatedRoundTripIsTheFormulaInTheRotatedBasis) {
  const int64_t tokens = 40;
  const auto k = rows(tokens, 1, 3), v = rows(tokens, 1, 4);
  const kernels::HadamardRotation rot(kDim, 3);
  auto rk = k, rv = v;
  rot.rotate(rk.data(), tokens, kDim);
  rot.rotate(rv.data(), tokens, kDim);
  auto kw = q4_0_formula(rk), vw = q4_0_formula(rv);
  rot.unrotate(kw.data(), tokens, kDim);
  rot.unrotate(vw.data(), tokens, kDim);
  Cache c(1, 1, kDim, 0, format_of(KvFormat::q4_0, true));
  c.append(0, k.data(), v.data(), tokens, 0);
  expect_equal(read(c, true, 0, 0), kw, 1e-5f, "rotated q4_0 keys");
  expect_equal(read(c, false, 0, 0), vw, 1e-5f, "rotated q4_0 values");
  // Rotation spreads the loud channel 5: the 4-bit error over the quiet channels drops.
  Cache plain(1, 1, kDim, 0, format_of(KvFormat::q4_0, false));
  plain.append(0, k.data(), v.data(), tokens, 0);
  auto quiet_error = [&](const std::vector<float>& got) {
    double e = 0;
    for (int64_t t = 0; t < tokens; ++t)
      for (int64_t ch = 0; ch < kDim; ++ch)
        if (ch != 5) e += std::pow(got[static_cast<size_t>(t * kDim + ch)] - k[static_cast<size_t>(t * kDim + ch)], 2);
    return e;
  };
  EXPECT_LT(quiet_error(read(c, true, 0, 0)), 0.5 * quiet_error(read(plain, true, 0, 0)));
}

// ---- attention from the stored form -------------------------------------------------------------

TEST(KvCacheFormat, AttentionFromStoredFormEqualsFloatAttentionOnDequantizedRows) {
  const int64_t tokens = 150, heads = 2;
  const auto k = rows(tokens, heads, 5), v = rows(tokens, heads, 6);
  for (KvFormat f : kv_formats())
    for (bool rotate : {false, true}) {
      Cache c(1, heads, kDim, 0, format_of(f, rotate));
      c.append(0, k.data(), v.data(), tokens, 0);
      for (int64_t n : {int64_t{1}, int64_t{3}, int64_t{20}}) {
        const auto q = testing::gaussian_floats(static_cast<size_t>(n * kDim), 7);
        const int h = 1;
        const auto kd = read(c, true, 0, h), vd = read(c, false, 0, h);
        std::vector<float> scores(static_cast<size_t>(n * tokens));
        c.attend_scores(0, h, q.data(), n, kDim, 0.125f, scores.data());
        for (int64_t i = 0; i < n; ++i)
          for (int64_t j = 0; j < tokens; ++j) {
            double s = 0, mag = 0;
            for (int64_t ch = 0; ch < kDim; ++ch) {
              s += static_cast<double>(q[static_cast<size_t>(i * kDim + ch)]) * kd[static_cast<size_t>(j * kDim + ch)];
              mag += std::fabs(static_cast<double>(q[static_cast<size_t>(i * kDim + ch)]) * kd[static_cast<size_t>(j * kDim + ch)]);
            }
            ASSERT_NEAR(scores[static_cast<size_t>(i * tokens + j)], 0.125 * s, 1e-5 * mag + 1e-6)
                << to_string(f) << (rotate ? " rot" : "") << " n " << n << " (" << i << ", " << j << ")";
          }
        // Probabilities: any non-negative rows.
        std::vector<float> p = testing::gaussian_floats(static_cast<size_t>(n * tokens), 8);
        for (auto& x : p) x = std::fabs(x) / static_cast<float>(tokens);
        std::vector<float> out(static_cast<size_t>(n * 2 * kDim), -1.0f);
        c.attend_values(0, h, p.data(), n, out.data(), 2 * kDim);
        for (int64_t i = 0; i < n; ++i)
          for (int64_t ch = 0; ch < kDim; ++ch) {
            double s = 0, mag = 0;
            for (int64_t j = 0; j < tokens; ++j) {
              const double term = static_cast<double>(p[static_cast<size_t>(i * tokens + j)]) * vd[static_cast<size_t>(j * kDim + ch)];
              s += term;
              mag += std::fabs(term);
            }
            ASSERT_NEAR(out[static_cast<size_t>(i * 2 * kDim + ch)], s, 1e-5 * mag + 1e-6)
                << to_string(f) << (rotate ? " rot" : "") << " n " << n << " (" << i << ", " << ch << ")";
            EXPECT_EQ(out[static_cast<size_t>(i * 2 * kDim + kDim + ch)], -1.0f);  // the stride's gap untouched
          }
      }
    }
}

// A decode step's split attention (nn::SplitAttention: chunks of 256 tokens, each scored and mixed
// through the range forms of attend_scores / attend_values) over every stored form, against attention
// in double over the dequantized rows. Heads of different lengths (one evicted down), query groups of
// 1 and 3, one and two new tokens, probabilities asked for.
TEST(KvCacheFormat, SplitAttentionOverStoredFormEqualsFloatAttentionOnDequantizedRows) {
  const int64_t tokens = 600, heads = 2;
  const auto k = rows(tokens, heads, 15), v = rows(tokens, heads, 16);
  std::vector<int64_t> kept;
  for (int64_t j = 0; j < tokens; j += 2) kept.push_back(j);
  const float scale = 0.125f;
  for (KvFormat f : kv_formats())
    for (bool rotate : {false, true}) {
      Cache c(1, heads, kDim, 0, format_of(f, rotate));
      c.append(0, k.data(), v.data(), tokens, 0);
      c.keep(0, 1, kept);
      const std::vector<int64_t> lens = {c.length(0, 0), c.length(0, 1)};
      for (const int64_t group : {int64_t{1}, int64_t{3}})
        for (const int64_t n : {int64_t{1}, int64_t{2}}) {
          const int64_t m = group * n;
          const auto q = testing::gaussian_floats(static_cast<size_t>(heads * m * kDim), 17);
          nn::SplitAttention split;
          std::vector<float> out(static_cast<size_t>(heads * m * kDim));
          split.run(
              lens, group, n, kDim, true, true,
              [&](int h, int64_t b, int64_t e, float* sc, int64_t stride) {
                c.attend_scores(0, h, q.data() + h * m * kDim, m, kDim, scale, b, e, sc, stride);
              },
              [&](int h, int64_t b, int64_t e, const float* p, int64_t stride, float* acc) {
                c.attend_values(0, h, p, stride, m, b, e, acc, kDim);
              },
              out.data());
          for (int h = 0; h < heads; ++h) {
            const int64_t len = lens[static_cast<size_t>(h)];
            const auto kd = read(c, true, 0, h), vd = read(c, false, 0, h);
            std::vector<float> want(static_cast<size_t>(m * kDim)), want_p(static_cast<size_t>(m * len));
            nn::attention_reference(q.data() + h * m * kDim, group, n, kd.data(), vd.data(), len, kDim, scale,
                                    want.data(), want_p.data());
            // Scores in float are off by about 1e-7 of the sum of |q_c k_c| (here at most about 20).
            float v_max = 0;
            for (const float x : vd) v_max = std::max(v_max, std::fabs(x));
            for (int64_t i = 0; i < m * kDim; ++i)
              ASSERT_NEAR(out[static_cast<size_t>(h * m * kDim + i)], want[static_cast<size_t>(i)], 5e-5 * v_max)
                  << to_string(f) << (rotate ? " rot" : "") << " head " << h << " group " << group << " n " << n;
            const float* p = split.probs(h);
            for (int64_t i = 0; i < m * len; ++i)
              ASSERT_NEAR(p[i], want_p[static_cast<size_t>(i)], 5e-5 * want_p[static_cast<size_t>(i)] + 1e-9)
                  << to_string(f) << (rotate ? " rot" : "") << " head " << h << " group " << group << " n " << n;
          }
        }
    }
}

// ---- KIVI attention from the codes -------------------------------------------------------------------

// Worst error seen over the KIVI cases below, in units of scale * sum_c |q_c| * max |k| (scores) and
// sum_j p_j * max |v| (outputs): recorded so that the tolerance is known to sit above it.
double g_kivi_worst_scores = 0, g_kivi_worst_values = 0;

// attend_scores / attend_values over tokens [begin, end) of a head, n queries, against double sums
// over what read_keys / read_values give for those tokens. The kernels sum q . min + (q .* scale) .
// code, whose terms can exceed |q_c k_c|, so the error is measured against the largest stored
// element rather than |q . k|.
void expect_attention_over_range(const Cache& c, int head, int64_t begin, int64_t end, int64_t n, double tol,
                                 const std::string& what) {
  const int64_t m = end - begin, stride = m + 3;
  const auto kd = read(c, true, 0, head), vd = read(c, false, 0, head);
  double kmax = 0, vmax = 0;
  for (const float x : kd) kmax = std::max(kmax, std::fabs(static_cast<double>(x)));
  for (const float x : vd) vmax = std::max(vmax, std::fabs(static_cast<double>(x)));
  const auto q = testing::gaussian_floats(static_cast<size_t>(n * kDim), static_cast<uint64_t>(31 + n + begin));
  const float scale = 0.125f;
  std::vector<float> scores(static_cast<size_t>(n * stride), -5.0f);
  c.attend_scores(0, head, q.data(), n, kDim, scale, begin, end, scores.data(), stride);
  for (int64_t i = 0; i < n; ++i) {
    double qabs = 0;
    for (int64_t ch = 0; ch < kDim; ++ch) qabs += std::fabs(static_cast<double>(q[static_cast<size_t>(i * kDim + ch)]));
    const double unit = scale * qabs * kmax;
    for (int64_t j = 0; j < m; ++j) {
      double s = 0;
      for (int64_t ch = 0; ch < kDim; ++ch)
        s += static_cast<double>(q[static_cast<size_t>(i * kDim + ch)]) * kd[static_cast<size_t>((begin + j) * kDim + ch)];
      const double err = std::fabs(scores[static_cast<size_t>(i * stride + j)] - scale * s);
      g_kivi_worst_scores = std::max(g_kivi_worst_scores, err / unit);
      ASSERT_LE(err, tol * unit) << what << " scores [" << begin << ", " << end << ") n " << n << " (" << i << ", "
                                 << j << ")";
    }
    for (int64_t j = m; j < stride; ++j) ASSERT_EQ(scores[static_cast<size_t>(i * stride + j)], -5.0f) << what;
  }
  std::vector<float> p = testing::gaussian_floats(static_cast<size_t>(n * stride), static_cast<uint64_t>(41 + end));
  for (auto& x : p) x = std::fabs(x) / static_cast<float>(m);
  const int64_t out_stride = kDim + 2;
  std::vector<float> out(static_cast<size_t>(n * out_stride), -1.0f);
  c.attend_values(0, head, p.data(), stride, n, begin, end, out.data(), out_stride);
  for (int64_t i = 0; i < n; ++i) {
    double pabs = 0;
    for (int64_t j = 0; j < m; ++j) pabs += p[static_cast<size_t>(i * stride + j)];
    for (int64_t ch = 0; ch < kDim; ++ch) {
      double s = 0;
      for (int64_t j = 0; j < m; ++j)
        s += static_cast<double>(p[static_cast<size_t>(i * stride + j)]) * vd[static_cast<size_t>((begin + j) * kDim + ch)];
      const double err = std::fabs(out[static_cast<size_t>(i * out_stride + ch)] - s);
      g_kivi_worst_values = std::max(g_kivi_worst_values, err / (pabs * vmax));
      ASSERT_LE(err, tol * pabs * vmax) << what << " values [" << begin << ", " << end << ") n " << n << " (" << i
                                        << ", " << ch << ")";
    }
    for (int64_t ch = kDim; ch < out_stride; ++ch) ASSERT_EQ(out[static_cast<size_t>(i * out_stride + ch)], -1.0f) << what;
  }
}

// KIVI-2 and KIVI-4, rotated or not, with groups that do and do not line up with the kernels' SIMD
// chunks (G 16 and 32; G 12 splits value chunks across channel groups): a cache appended in uneven
// pieces, the same cache evicted so that key groups keep only some of their tokens (or none), and a
// cache whose float32 window has just spilled into codes. Ranges cut groups, chunks and the
// boundary between codes and the float32 window; 1, 3 and 7 queries take the codes kernels, 20 the
// tiles of dequantized rows.
TEST(KvCacheFormat, KiviAttentionFromCodesEqualsDoubleAttentionOverStoredRows) {
  const int64_t tokens = 200, heads = 2;
  const auto k = rows(tokens, heads, 25), v = rows(tokens, heads, 26);
  const double tol = 1e-6;
  for (KvFormat f : {KvFormat::kivi2, KvFormat::kivi4})
    for (bool rotate : {false, true})
      for (const auto& [G, R] : {std::pair<int64_t, int64_t>{16, 8}, {32, 32}, {12, 5}}) {
        const std::string name = std::string(to_string(f)) + (rotate ? " rot" : "") + " G " + std::to_string(G) +
                                 " R " + std::to_string(R);
        // Uneven appends hold the same rows as one prefill.
        Cache c(1, heads, kDim, 0, format_of(f, rotate, G, R)), bulk(c);
        bulk.append(0, k.data(), v.data(), tokens, 0);
        for (int64_t t = 0, step = 1; t < tokens; t += step, step = step % 7 + 2) {
          const int64_t count = std::min(step, tokens - t);
          c.append(0, k.data() + t * heads * kDim, v.data() + t * heads * kDim, count, t);
        }
        for (int h = 0; h < heads; ++h) {
          ASSERT_EQ(read(c, true, 0, h), read(bulk, true, 0, h)) << name;
          ASSERT_EQ(read(c, false, 0, h), read(bulk, false, 0, h)) << name;
        }
        auto ranges = [&](const Cache& cache, int h) {
          const int64_t len = cache.length(0, h);
          std::vector<std::pair<int64_t, int64_t>> r = {{0, len}, {1, len - 1}, {G - 1, G + 1}, {5, 37},
                                                        {len - 2 * G - R, len - R + 3}, {len - 3, len}, {7, 7}};
          for (int64_t b = 0; b < len; b += 64) r.emplace_back(b, std::min(len, b + 64));  // split attention's chunks
          return r;
        };
        // Every third token of the head's first 150 kept (groups partly or wholly emptied), then the rest.
        Cache evicted(c);
        std::vector<int64_t> kept;
        for (int64_t t = 0; t < tokens; ++t)
          if (t >= 150 || (t % 3 == 0 && !(t >= 2 * G && t < 3 * G))) kept.push_back(t);
        evicted.keep(0, 1, kept);
        // The key window flushes a group once R + G tokens wait, the value window a token once R + 1
        // do: a cache of R + G tokens has just spilled both.
        Cache spilled(1, heads, kDim, 0, format_of(f, rotate, G, R));
        spilled.append(0, k.data(), v.data(), R + G - 1, 0);
        spilled.append(0, k.data() + (R + G - 1) * heads * kDim, v.data() + (R + G - 1) * heads * kDim, 1, R + G - 1);
        for (const auto& [cache, what] :
             {std::pair<const Cache*, std::string>{&c, name}, {&evicted, name + " evicted"}, {&spilled, name + " spilled"}})
          for (int h = 0; h < heads; ++h)
            for (const auto& [b, e] : ranges(*cache, h)) {
              if (b < 0 || e > cache->length(0, h) || b >= e) continue;
              for (const int64_t n : {int64_t{1}, int64_t{3}, int64_t{7}, int64_t{20}})
                expect_attention_over_range(*cache, h, b, e, n, tol, what + " head " + std::to_string(h));
            }
      }
  std::printf("worst error: scores %.3g, values %.3g (tolerance %.3g)\n", g_kivi_worst_scores, g_kivi_worst_values,
              tol);
}

// ---- bytes ------------------------------------------------------------------------------------------

// Hand sizes per head of capacity C, head_dim 64: positions 8 C; f32 rows 256 B; f16 128 B; q8_0
// 2 blocks x 34 B; q4_0 2 x 18 B; KIVI-b keys 64 b / 8 B of codes, values that plus 4 groups of 16
// channels x (2 B scale + 2 B min); KIVI's windows (R + G - 1 key rows, R value rows of 256 B) and
// the key groups' parameters (64 channels x 4 B and a 4 B length per group).
TEST(KvCacheFormat, BytesEqualHandSizes) {
  const int64_t heads = 3, layers = 2, tokens = 100, G = 16, R = 8;
  const auto k = rows(tokens, heads, 9), v = rows(tokens, heads, 10);
  struct Case {
    KvFormat f;
    int64_t key_row, value_row;
  };
  for (const Case& cs : {Case{KvFormat::f32, 256, 256}, Case{KvFormat::f16, 128, 128}, Case{KvFormat::q8_0, 68, 68},
                         Case{KvFormat::q4_0, 36, 36}, Case{KvFormat::kivi4, 32, 32 + 16},
                         Case{KvFormat::kivi2, 16, 16 + 16}}) {
    Cache c(layers, heads, kDim, tokens, format_of(cs.f, false, G, R));
    for (int l = 0; l < layers; ++l) c.append(l, k.data(), v.data(), tokens, 0);
    int64_t per_head = tokens * (8 + cs.key_row + cs.value_row);
    if (is_kivi(cs.f)) {
      const int64_t groups = (tokens - R) / G;
      per_head += (R + G - 1 + R) * kDim * 4;
      per_head += groups * (kDim * 4 + 4);  // when the group vectors hold exactly their groups
      // The group vectors may hold spare capacity: bound it rather than assume a growth policy.
      EXPECT_GE(c.bytes(), static_cast<uint64_t>(per_head * heads * layers)) << to_string(cs.f);
      EXPECT_LE(c.bytes(), static_cast<uint64_t>((per_head + groups * (kDim * 4 + 4)) * heads * layers))
          << to_string(cs.f);
    } else {
      EXPECT_EQ(c.bytes(), static_cast<uint64_t>(per_head * heads * layers)) << to_string(cs.f);
    }
    EXPECT_EQ(c.bytes_per_token(), static_cast<uint64_t>(8 + cs.key_row + cs.value_row)) << to_string(cs.f);
  }
}

// bytes() against what the heap really gives the cache (glibc's bytes in use, brk and mmap), at a 4K
// context: within 2% for every format, with and without rotation.
TEST(KvCacheFormat, BytesMatchHeapInUseAt4K) {
  const int64_t heads = 3, layers = 4, tokens = 4096, chunk = 512;
  const auto k = rows(chunk, heads, 11), v = rows(chunk, heads, 12);
  for (KvFormat f : kv_formats())
    for (bool rotate : {false, true}) {
      malloc_trim(0);
      const size_t before = mallinfo2().uordblks + mallinfo2().hblkhd;
      auto c = std::make_unique<Cache>(layers, heads, kDim, 0, format_of(f, rotate, 32, 32));
      for (int64_t t0 = 0; t0 < tokens; t0 += chunk)
        for (int l = 0; l < layers; ++l) c->append(l, k.data(), v.data(), chunk, t0);
      const size_t held = mallinfo2().uordblks + mallinfo2().hblkhd - before;
      const double ratio = static_cast<double>(c->bytes()) / static_cast<double>(held);
      std::printf("%-6s%s bytes() %8.1f KiB, heap in use %8.1f KiB, ratio %.4f\n", std::string(to_string(f)).c_str(),
                  rotate ? "+rot" : "    ", c->bytes() / 1024.0, held / 1024.0, ratio);
      EXPECT_NEAR(ratio, 1.0, 0.02) << to_string(f) << (rotate ? " rot" : "");
    }
}

// ---- eviction on a quantized cache ----------------------------------------------------------------

TEST(KvCacheFormat, KeepOnQuantizedCacheKeepsTheStoredRows) {
  const int64_t tokens = 90, heads = 2;
  const auto k = rows(tokens, heads, 13), v = rows(tokens, heads, 14);
  for (KvFormat f : kv_formats()) {
    Cache c(1, heads, kDim, 0, format_of(f, true));
    c.append(0, k.data(), v.data(), tokens, 0);
    const auto k_before = read(c, true, 0, 0), v_before = read(c, false, 0, 0);
    const uint64_t bytes_before = c.bytes();
    // Every third token, and the whole float window at the end.
    std::vector<int64_t> keep;
    for (int64_t t = 0; t < tokens - 20; t += 3) keep.push_back(t);
    for (int64_t t = tokens - 20; t < tokens; ++t) keep.push_back(t);
    c.keep(0, 0, keep);
    ASSERT_EQ(c.length(0, 0), static_cast<int64_t>(keep.size()));
    ASSERT_EQ(c.length(0, 1), tokens);
    const auto k_after = read(c, true, 0, 0), v_after = read(c, false, 0, 0);
    for (size_t i = 0; i < keep.size(); ++i)
      for (int64_t ch = 0; ch < kDim; ++ch) {
        const size_t a = i * kDim + static_cast<size_t>(ch), b = static_cast<size_t>(keep[i] * kDim + ch);
        ASSERT_NEAR(k_after[a], k_before[b], 1e-6f * (1 + std::fabs(k_before[b]))) << to_string(f) << " token " << keep[i];
        ASSERT_NEAR(v_after[a], v_before[b], 1e-6f * (1 + std::fabs(v_before[b]))) << to_string(f) << " token " << keep[i];
      }
    EXPECT_EQ(c.positions(0, 0)[1], 3);
    EXPECT_LT(c.bytes(), bytes_before) << to_string(f);
    // Appending goes on after an eviction; a copy holds the same rows and bytes.
    const auto k2 = rows(40, heads, 15);
    c.append(0, k2.data(), k2.data(), 40, tokens);
    const Cache copy(c);
    EXPECT_EQ(copy.bytes(), c.bytes());
    EXPECT_EQ(read(copy, true, 0, 0), read(c, true, 0, 0));
    EXPECT_EQ(read(copy, false, 0, 1), read(c, false, 0, 1));
  }
}

TEST(KvCacheFormat, ConvertedEqualsAppendingInTheNewFormat) {
  const int64_t tokens = 70, heads = 2;
  const auto k = rows(tokens, heads, 16), v = rows(tokens, heads, 17);
  Cache f32(2, heads, kDim);
  Cache direct(2, heads, kDim, 0, format_of(KvFormat::kivi4, true));
  for (int l = 0; l < 2; ++l) {
    f32.append(l, k.data(), v.data(), tokens, 0);
    direct.append(l, k.data(), v.data(), tokens, 0);
  }
  const Cache conv = f32.converted(format_of(KvFormat::kivi4, true));
  for (int l = 0; l < 2; ++l)
    for (int h = 0; h < heads; ++h) {
      EXPECT_EQ(read(conv, true, l, h), read(direct, true, l, h));
      EXPECT_EQ(read(conv, false, l, h), read(direct, false, l, h));
    }
  EXPECT_EQ(conv.bytes(), direct.bytes());
}

// ---- refusals ---------------------------------------------------------------------------------------

TEST(KvCacheFormat, RefusesBadOptions) {
  auto message = [](auto fn) {
    try {
      fn();
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string();
  };
  EXPECT_NE(message([] { parse_kv_format("q3_k", "--kv-format"); }).find("--kv-format"), std::string::npos);
  EXPECT_EQ(parse_kv_format("kivi2", "x"), KvFormat::kivi2);
  CacheFormat layers = format_of(KvFormat::q4_0);
  layers.layers = {{KvFormat::f32, KvFormat::q4_0}};
  EXPECT_NE(message([&] { layers.validate(3, 64); }).find("'layers'"), std::string::npos);
  EXPECT_NE(message([] { format_of(KvFormat::f16, true).validate(1, 48); }).find("rotate"), std::string::npos);
  EXPECT_NE(message([] { format_of(KvFormat::q4_0).validate(1, 48); }).find("q4_0"), std::string::npos);
  EXPECT_NE(message([] { format_of(KvFormat::kivi2, false, 0).validate(1, 64); }).find("kivi_group"), std::string::npos);
  EXPECT_NE(message([] { format_of(KvFormat::kivi2, false, 8, -1).validate(1, 64); }).find("kivi_residual"),
            std::string::npos);
  EXPECT_THROW(Cache(1, 1, 48, 0, format_of(KvFormat::q8_0)), Error);
  Cache q(1, 1, kDim, 0, format_of(KvFormat::q4_0));
  EXPECT_NE(message([&] { q.keys(0, 0); }).find("read_keys"), std::string::npos);
}

// ---- sessions on real models ------------------------------------------------------------------------

std::filesystem::path stories_path() {
  return testing::shared_data_dir() / "models/stories260K/stories260K.bin";
}
std::filesystem::path smollm_path() { return testing::models_dir() / "smollm2-135m-instruct-q4_1.gguf"; }

// Prefill of `prompt` tokens then one-token decode of the rest; the decode steps' logits.
std::vector<float> decode(Session& s, std::span<const int32_t> tokens, int64_t prompt, int64_t vocab) {
  std::vector<float> logits(static_cast<size_t>(vocab)), out;
  s.forward(tokens.first(static_cast<size_t>(prompt)), logits.data(), nn::Logits::last);
  for (size_t t = static_cast<size_t>(prompt); t < tokens.size(); ++t) {
    s.forward(tokens.subspan(t, 1), logits.data(), nn::Logits::last);
    out.insert(out.end(), logits.begin(), logits.end());
  }
  return out;
}

// Mean KL(p_float || p_format) over the decode steps' next-token distributions.
double mean_kl(const std::vector<float>& ref, const std::vector<float>& got, int64_t vocab) {
  double total = 0;
  const int64_t steps = static_cast<int64_t>(ref.size()) / vocab;
  for (int64_t s = 0; s < steps; ++s) {
    const float* a = ref.data() + s * vocab;
    const float* b = got.data() + s * vocab;
    const double ma = *std::max_element(a, a + vocab), mb = *std::max_element(b, b + vocab);
    double za = 0, zb = 0;
    for (int64_t i = 0; i < vocab; ++i) {
      za += std::exp(a[i] - ma);
      zb += std::exp(b[i] - mb);
    }
    double kl = 0;
    for (int64_t i = 0; i < vocab; ++i) {
      const double la = a[i] - ma - std::log(za), lb = b[i] - mb - std::log(zb);
      kl += std::exp(la) * (la - lb);
    }
    total += kl;
  }
  return total / static_cast<double>(steps);
}

TEST(KvCacheFormat, SessionDecodesWithQuantizedCacheStories) {
  STRATA_REQUIRE_FILE(stories_path(), "shared data: ../shared/data/models/stories260K");
  const auto file = io::open_model(stories_path());
  const auto model = nn::LlamaModel::load(*file);
  const int64_t vocab = model.config().vocab_size, head_dim = model.config().head_dim;
  const auto tokens = nn::sample_sequences(model, 1, 96, 1, 5)[0];
  Session ref(model, 96);
  const auto want = decode(ref, tokens, 48, vocab);
  // Float32 rotated: the same scores up to float rounding.
  {
    Session s(model, 96, std::nullopt, {}, format_of(KvFormat::f32, true, 8, 4));
    const double kl = mean_kl(want, decode(s, tokens, 48, vocab), vocab);
    std::printf("stories260K f32+rot: mean KL %.3g\n", kl);
    EXPECT_LT(kl, 1e-8);
  }
  // head_dim 8: the 32-element ggml blocks do not apply; f16 and KIVI do.
  ASSERT_EQ(head_dim, 8);
  double kl4 = 0, kl2 = 0;
  for (KvFormat f : {KvFormat::f16, KvFormat::kivi4, KvFormat::kivi2})
    for (bool rotate : {false, true}) {
      Session s(model, 96, std::nullopt, {}, format_of(f, rotate, 8, 4));
      const auto got = decode(s, tokens, 48, vocab);
      const double kl = mean_kl(want, got, vocab);
      std::printf("stories260K %s%s: mean KL %.3g, cache %llu bytes\n", std::string(to_string(f)).c_str(),
                  rotate ? "+rot" : "", kl, static_cast<unsigned long long>(s.cache_bytes()));
      // head_dim 8 leaves KIVI one 8-channel group per value row: a coarse grid on a tiny model.
      EXPECT_LT(kl, f == KvFormat::f16 ? 1e-4 : f == KvFormat::kivi4 ? 0.5 : 5.0) << to_string(f);
      EXPECT_GT(kl, 0.0) << to_string(f);
      if (!rotate) (f == KvFormat::kivi4 ? kl4 : kl2) = f == KvFormat::f16 ? 0 : kl;
    }
  EXPECT_LT(kl4, kl2);  // 4 bits lose less than 2
}

// KIVI with eviction: a budget under the float window is refused naming kivi_residual; one above it
// runs, evicts, and stays near the float cache under the same eviction.
TEST(KvCacheFormat, SessionEvictsAQuantizedCacheStories) {
  STRATA_REQUIRE_FILE(stories_path(), "shared data: ../shared/data/models/stories260K");
  const auto file = io::open_model(stories_path());
  const auto model = nn::LlamaModel::load(*file);
  const int64_t vocab = model.config().vocab_size;
  const auto tokens = nn::sample_sequences(model, 1, 96, 1, 6)[0];
  try {
    Session s(model, 96, Eviction{make_scorer("h2o"), Policy::adakv(0.2, 2, 4), 12}, Schedule{true, true, 4},
              format_of(KvFormat::kivi2, false, 8, 16));
    FAIL() << "a budget of 12 tokens cannot hold a float window of 16";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("kivi_residual"), std::string::npos) << e.what();
  }
  for (const char* scorer : {"h2o", "keynorm"}) {
    Session f32(model, 96, Eviction{make_scorer(scorer), Policy::adakv(), 40}, Schedule{true, true, 4});
    Session q(model, 96, Eviction{make_scorer(scorer), Policy::adakv(), 40}, Schedule{true, true, 4},
              format_of(KvFormat::kivi4, true, 8, 8));
    const auto want = decode(f32, tokens, 48, vocab);
    const auto got = decode(q, tokens, 48, vocab);
    EXPECT_GT(q.evicted(), 0);
    int64_t held = 0;
    for (int h = 0; h < model.config().n_kv_heads; ++h) held += q.cache().length(0, h);
    EXPECT_LE(held, (40 + 3) * model.config().n_kv_heads);  // the budget, plus up to every - 1 newer tokens
    EXPECT_LT(q.cache_bytes(), f32.cache_bytes());
    // Eviction follows scores computed on the stored rows, so the two sessions may keep different
    // tokens: the distance is the two effects together.
    const double kl = mean_kl(want, got, vocab);
    std::printf("stories260K %s budget 40, kivi4+rot vs f32 under the same eviction: mean KL %.3g\n", scorer, kl);
    EXPECT_LT(kl, 2.0) << scorer;
  }
}

// SmolLM2 (head_dim 64): q8_0 and q4_0 with and without rotation against the float cache after a
// prompt read in float32 (Session::with_format), and the rotated 4-bit cache closer than the plain one.
TEST(KvCacheFormat, SessionDecodesWithQuantizedCacheSmolLM2) {
  STRATA_REQUIRE_FILE(smollm_path(), "scripts/fetch-models.sh");
  std::shared_ptr<const io::Model> file = io::open_model(smollm_path());
  const auto model = nn::LlamaModel::load_stored(file);
  const int64_t vocab = model.config().vocab_size;
  const auto tokens = nn::sample_sequences(model, 1, 80, 1, 7)[0];
  Session base(model, 80);
  std::vector<float> logits(static_cast<size_t>(vocab));
  base.forward(std::span<const int32_t>(tokens).first(64), logits.data(), nn::Logits::last);
  auto continue_from = [&](const CacheFormat& f) {
    auto s = base.with_format(f);
    std::vector<float> out;
    for (size_t t = 64; t < tokens.size(); ++t) {
      s->forward(std::span<const int32_t>(tokens).subspan(t, 1), logits.data(), nn::Logits::last);
      out.insert(out.end(), logits.begin(), logits.end());
    }
    return out;
  };
  const auto want = continue_from(CacheFormat{});
  std::map<std::string, double> kl;
  for (KvFormat f : {KvFormat::q8_0, KvFormat::q4_0})
    for (bool rotate : {false, true}) {
      const std::string name = std::string(to_string(f)) + (rotate ? "+rot" : "");
      kl[name] = mean_kl(want, continue_from(format_of(f, rotate, 32, 32)), vocab);
      std::printf("SmolLM2 %s: mean KL %.3g\n", name.c_str(), kl[name]);
    }
  EXPECT_LT(kl["q8_0"], 0.01);
  EXPECT_LT(kl["q4_0"], 0.5);
  EXPECT_LT(kl["q8_0"], kl["q4_0"]);
  EXPECT_LT(kl["q4_0+rot"], kl["q4_0"]);
}

}  // namespace
}  // namespace strata::kv

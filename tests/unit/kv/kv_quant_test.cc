#include "strata/kv/quant.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <functional>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include "strata/compress/ggml/quantize.hpp"
#include "strata/core/dtype.hpp"
#include "strata/core/parallel.hpp"
#include "strata/core/error.hpp"
#include "strata/io/model.hpp"
#include "strata/kernels/ggml_dequant.hpp"
#include "strata/nn/dataset.hpp"
#include "strata/nn/hooks.hpp"
#include "strata/nn/llama.hpp"
#include "strata/nn/tokenizer.hpp"
#include "test_util.hpp"

namespace strata::kv {
namespace {

using kernels::GgmlType;

// Gaussian rows whose channels have different scales. `outliers` channels sit far from zero with a
// larger spread, as keys' outlier channels do: a magnitude set by the channel, not by the token.
RowMatrix<float> make_rows(int64_t n, int64_t d, uint64_t seed, int outliers = 0) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> g(0.0f, 1.0f);
  std::vector<float> scale(static_cast<size_t>(d)), offset(static_cast<size_t>(d), 0.3f);
  for (int64_t c = 0; c < d; ++c) scale[static_cast<size_t>(c)] = 0.5f + static_cast<float>(c % 7) * 0.25f;
  for (int i = 0; i < outliers; ++i) {
    const size_t c = static_cast<size_t>((i * 13 + 5) % d);
    scale[c] = 3.0f;
    offset[c] = i % 2 ? -20.0f : 20.0f;
  }
  RowMatrix<float> x(n, d);
  for (int64_t t = 0; t < n; ++t)
    for (int64_t c = 0; c < d; ++c) x(t, c) = g(rng) * scale[static_cast<size_t>(c)] + offset[static_cast<size_t>(c)];
  return x;
}

double rel_error(const RowMatrix<float>& a, const RowMatrix<float>& b) {
  return (a.cast<double>() - b.cast<double>()).norm() / a.cast<double>().norm();
}

// The group an element belongs to, from the definition (not from the implementation): per-channel
// keys group G consecutive tokens of one channel, per-token rows G consecutive channels of one token.
struct Range {
  double lo, hi;
};
Range group_range(const RowMatrix<float>& x, int64_t t, int64_t c, int64_t g, bool per_channel) {
  Range r{INFINITY, -INFINITY};
  if (per_channel) {
    for (int64_t s = t / g * g; s < t / g * g + g; ++s) r = {std::min<double>(r.lo, x(s, c)), std::max<double>(r.hi, x(s, c))};
  } else {
    for (int64_t k = c / g * g; k < std::min<int64_t>(x.cols(), c / g * g + g); ++k)
      r = {std::min<double>(r.lo, x(t, k)), std::max<double>(r.hi, x(t, k))};
  }
  return r;
}

// Every quantized element within scale / 2 of the original (plus the rounding of x' to float, at
// most 2^-24 |x'|), the scale being its group's (max - min) / (2^b - 1), rounded up to the parameter
// type: exactly for float32 parameters, within binary16's step for f16 ones.
void check_bound(const RowMatrix<float>& x, const RowMatrix<float>& xq, int64_t quantized, int bits, int64_t g,
                 bool per_channel, ParamType pt, const std::function<float(int64_t, int64_t)>& scale_of) {
  const double levels = (1 << bits) - 1;
  for (int64_t t = 0; t < quantized; ++t)
    for (int64_t c = 0; c < x.cols(); ++c) {
      const double s = scale_of(t, c);
      const Range r = group_range(x, t, c, g, per_channel);
      const double ideal = (r.hi - r.lo) / levels;
      ASSERT_GE(s, ideal) << "t " << t << " c " << c;
      if (pt == ParamType::f32) {
        ASSERT_LE(s, std::nextafter(static_cast<float>(ideal), INFINITY)) << "t " << t << " c " << c;
      } else {
        // min rounded down by at most one f16 step (2^-10 |min|, or 2^-24 when subnormal), scale up by one.
        const double slack = std::ldexp(std::fabs(r.lo), -10) / levels;
        ASSERT_LE(s, (ideal + slack) * (1 + std::ldexp(1.0, -10)) + std::ldexp(1.0, -23)) << "t " << t << " c " << c;
      }
      const double err = std::fabs(static_cast<double>(x(t, c)) - xq(t, c));
      ASSERT_LE(err, s / 2 + std::ldexp(std::fabs(static_cast<double>(xq(t, c))), -24))
          << "t " << t << " c " << c << " x " << x(t, c) << " x' " << xq(t, c) << " scale " << s;
    }
}

TEST(KiviQuant, RoundTripWithinHalfAScale) {
  const int64_t n = 100, d = 64;
  const RowMatrix<float> k = make_rows(n, d, 1, 3), v = make_rows(n, d, 2);
  for (int bits : {2, 4, 8})
    for (KeyMode mode : {KeyMode::per_channel, KeyMode::per_token})
      for (ParamType pt : {ParamType::f16, ParamType::f32})
        for (int64_t g : {int64_t{16}, int64_t{24}, int64_t{128}}) {
          KiviOptions o;
          o.key_bits = o.value_bits = bits;
          o.group = g;
          o.key_mode = mode;
          o.params = pt;
          QuantizedKV q(d, o);
          q.append(k, v);
          SCOPED_TRACE(describe(o));
          const RowMatrix<float> kq = q.keys_dequantized(), vq = q.values_dequantized();
          check_bound(k, kq, q.key_quantized_tokens(), bits, g, mode == KeyMode::per_channel, pt,
                      [&](int64_t t, int64_t c) { return q.key_scale(t, c); });
          check_bound(v, vq, q.value_quantized_tokens(), bits, g, false, pt,
                      [&](int64_t t, int64_t c) { return q.value_scale(t, c); });
          if (mode == KeyMode::per_channel && g <= n) {
            EXPECT_EQ(q.key_quantized_tokens(), n / g * g);
          }
          EXPECT_EQ(q.value_quantized_tokens(), n);
        }
}

TEST(KiviQuant, MoreBitsLessError) {
  const RowMatrix<float> k = make_rows(128, 64, 3, 2), v = make_rows(128, 64, 4);
  double last = INFINITY;
  for (int bits : {2, 4, 8}) {
    KiviOptions o;
    o.key_bits = o.value_bits = bits;
    QuantizedKV q(64, o);
    q.append(k, v);
    const double e = rel_error(k, q.keys_dequantized()) + rel_error(v, q.values_dequantized());
    EXPECT_LT(e, last / 3) << bits << " bits";
    last = e;
  }
}

TEST(KiviQuant, ResidualWindowStaysFullPrecision) {
  const int64_t n = 41, d = 8, g = 8, r = 5;
  const RowMatrix<float> k = make_rows(n, d, 5, 1), v = make_rows(n, d, 6);
  for (KeyMode mode : {KeyMode::per_channel, KeyMode::per_token}) {
    KiviOptions o;
    o.group = g;
    o.residual = r;
    o.key_mode = mode;
    QuantizedKV q(d, o);
    for (int64_t t = 0; t < n; ++t) {
      q.append(std::span<const float>(k.row(t).data(), d), std::span<const float>(v.row(t).data(), d));
      const int64_t seen = t + 1;
      // Per-channel keys flush G at a time once R + G are pending; per-token rows one at a time.
      const int64_t kq = mode == KeyMode::per_channel ? (seen > r ? (seen - r) / g * g : 0) : std::max<int64_t>(0, seen - r);
      const int64_t vq = std::max<int64_t>(0, seen - r);
      ASSERT_EQ(q.key_quantized_tokens(), kq) << "after " << seen;
      ASSERT_EQ(q.value_quantized_tokens(), vq) << "after " << seen;
      const RowMatrix<float> kd = q.keys_dequantized(), vd = q.values_dequantized();
      ASSERT_EQ(kd.rows(), seen);
      for (int64_t s = kq; s < seen; ++s) {
        ASSERT_TRUE((kd.row(s).array() == k.row(s).array()).all()) << "key " << s << " after " << seen;
        ASSERT_EQ(q.key_scale(s, 0), 0.0f);
      }
      for (int64_t s = vq; s < seen; ++s) ASSERT_TRUE((vd.row(s).array() == v.row(s).array()).all()) << "value " << s;
      if (seen > r + g) {
        EXPECT_GT(q.key_scale(0, 0), 0.0f);
        EXPECT_FALSE((kd.row(0).array() == k.row(0).array()).all());
      }
    }
    // Appending one by one or all at once stores the same thing.
    QuantizedKV batch(d, o);
    batch.append(k, v);
    EXPECT_TRUE(batch.keys_dequantized() == q.keys_dequantized());
    EXPECT_TRUE(batch.values_dequantized() == q.values_dequantized());
    EXPECT_EQ(batch.bytes(), q.bytes());
  }
}

TEST(KiviQuant, BytesExact) {
  // By hand: d = 64, G = 32, 2 bits, f16 parameters, per-channel keys, R = 0, 64 tokens.
  // Keys: 2 groups of (32 * 64 * 2 / 8 = 512 code bytes + 64 channels * 2 params * 2 bytes = 256).
  // Values: 64 rows of (64 * 2 / 8 = 16 code bytes + 2 groups * 2 params * 2 bytes = 8).
  {
    KiviOptions o;
    QuantizedKV q(64, o);
    q.append(make_rows(64, 64, 7), make_rows(64, 64, 8));
    EXPECT_EQ(q.bytes(), 2u * (512 + 256) + 64u * (16 + 8));
    EXPECT_DOUBLE_EQ(bytes_per_token(o, 64), (512.0 + 256.0) / 32 + 24);
    // 10 more: keys stay float32 (10 * 64 * 4), values are quantized.
    q.append(make_rows(10, 64, 9), make_rows(10, 64, 10));
    EXPECT_EQ(q.bytes(), 2u * (512 + 256) + 74u * (16 + 8) + 10u * 64 * 4);
  }
  // Against cache_bytes after every append, for a spread of settings.
  const int64_t d = 48;
  const RowMatrix<float> k = make_rows(90, d, 11), v = make_rows(90, d, 12);
  for (int bits : {2, 4, 8})
    for (KeyMode mode : {KeyMode::per_channel, KeyMode::per_token})
      for (ParamType pt : {ParamType::f16, ParamType::f32})
        for (int64_t r : {int64_t{0}, int64_t{7}}) {
          KiviOptions o;
          o.key_bits = bits;
          o.value_bits = bits == 8 ? 2 : bits * 2;
          o.group = 20;  // does not divide head_dim: a shorter last channel group
          o.residual = r;
          o.key_mode = mode;
          o.params = pt;
          QuantizedKV q(d, o);
          for (int64_t t = 0; t < k.rows(); ++t) {
            q.append(std::span<const float>(k.row(t).data(), d), std::span<const float>(v.row(t).data(), d));
            ASSERT_EQ(q.bytes(), cache_bytes(o, d, t + 1)) << describe(o) << " after " << t + 1;
          }
        }
}

TEST(KiviQuant, PerChannelKeysWinOnOutlierChannels) {
  const int64_t n = 256, d = 64;
  const RowMatrix<float> k = make_rows(n, d, 13, 4), v = make_rows(n, d, 14), qry = make_rows(32, d, 15);
  const RowMatrix<float> exact = attention(qry, k, v, n - 32);
  double key_err[2], out_err[2];
  for (KeyMode mode : {KeyMode::per_channel, KeyMode::per_token}) {
    KiviOptions o;
    o.key_mode = mode;
    QuantizedKV q(d, o);
    q.append(k, v);
    const int i = mode == KeyMode::per_channel ? 0 : 1;
    key_err[i] = rel_error(k, q.keys_dequantized());
    out_err[i] = rel_error(exact, attention(qry, q.keys_dequantized(), q.values_dequantized(), n - 32));
  }
  std::printf("outlier channels, 2 bits: key error per-channel %.4f per-token %.4f, attention output %.4f vs %.4f\n",
              key_err[0], key_err[1], out_err[0], out_err[1]);
  EXPECT_LT(key_err[0], key_err[1] / 2);
  EXPECT_LT(out_err[0], out_err[1] / 2);
}

TEST(KiviQuant, RejectsBadInput) {
  KiviOptions o;
  o.key_bits = 3;
  EXPECT_THROW(QuantizedKV(64, o), Error);
  o = {};
  o.group = 0;
  EXPECT_THROW(QuantizedKV(64, o), Error);
  EXPECT_THROW(QuantizedKV(0, KiviOptions{}), Error);
  QuantizedKV q(4, KiviOptions{});
  const float row[4] = {1, 2, 3, 4}, shorter[3] = {1, 2, 3}, nan_row[4] = {1, NAN, 3, 4};
  EXPECT_THROW(q.append(std::span<const float>(shorter), std::span<const float>(row)), Error);
  EXPECT_THROW(q.append(std::span<const float>(row), std::span<const float>(nan_row)), Error);
  EXPECT_THROW((void)q.key_scale(0, 0), Error);
  // binary16 parameters cannot describe values beyond 65504; float32 ones can.
  o = {};
  o.group = 1;
  const float huge[4] = {1e6f, 2, 3, 4};
  QuantizedKV small(4, o);
  EXPECT_THROW(small.append(std::span<const float>(row), std::span<const float>(huge)), Error);
  o.params = ParamType::f32;
  QuantizedKV wide(4, o);
  wide.append(std::span<const float>(row), std::span<const float>(huge));
  EXPECT_NEAR(wide.values_dequantized()(0, 0), 1e6f, 1e6f / 3 / 2 + 1);
}

// ---- ggml block types --------------------------------------------------------------------------------------

TEST(GgmlKvTypes, RoundTripAsGgmlDequantSays) {
  const int64_t n = 20, d = 64;
  const RowMatrix<float> k = make_rows(n, d, 16, 2), v = make_rows(n, d, 17);
  for (GgmlType t : ggml_cache_types()) {
    SCOPED_TRACE(std::string(kernels::ggml_type_name(t)));
    BlockQuantizedKV q(d, {t, t});
    for (int64_t i = 0; i < n; ++i)
      q.append(std::span<const float>(k.row(i).data(), d), std::span<const float>(v.row(i).data(), d));
    const uint64_t row = kernels::ggml_row_size(t, d);
    EXPECT_EQ(q.bytes(), 2 * n * row);
    EXPECT_EQ(q.bytes(), cache_bytes(GgmlCacheTypes{t, t}, d, n));
    EXPECT_DOUBLE_EQ(bytes_per_token(GgmlCacheTypes{t, t}, d), 2.0 * static_cast<double>(row));
    // The expected decode, row by row through the ggml quantizer and dequantizer themselves.
    for (const auto& [x, got, blocks] : {std::tuple{&k, q.keys_dequantized(), q.key_blocks()},
                                         std::tuple{&v, q.values_dequantized(), q.value_blocks()}}) {
      ASSERT_EQ(blocks.size(), n * row);
      RowMatrix<float> want(n, d);
      for (int64_t i = 0; i < n; ++i) {
        std::vector<std::byte> b(row);
        if (t == GgmlType::F32 || t == GgmlType::F16 || t == GgmlType::BF16) {
          for (int64_t c = 0; c < d; ++c) {
            const float xv = (*x)(i, c);
            const uint16_t h = t == GgmlType::F16 ? f32_to_f16(xv).bits : f32_to_bf16(xv).bits;
            if (t == GgmlType::F32) std::memcpy(b.data() + 4 * c, &xv, 4);
            else std::memcpy(b.data() + 2 * c, &h, 2);
          }
        } else {
          compress::ggml::quantize_row(t, std::span<const float>(x->row(i).data(), d), {}, b);
        }
        ASSERT_TRUE(std::equal(b.begin(), b.end(), blocks.begin() + static_cast<ptrdiff_t>(i * row))) << "row " << i;
        kernels::dequantize(t, b, want.row(i).data(), d);
      }
      EXPECT_TRUE(got == want);
      const double e = rel_error(*x, got);
      // Sanity on top of the bit-exact decode: the error shrinks with the type's bits.
      const double limit = t == GgmlType::F32 ? 0.0
                           : t == GgmlType::F16 ? 1e-3
                           : t == GgmlType::BF16 ? 5e-3
                           : t == GgmlType::Q8_0 ? 0.02
                           : (t == GgmlType::Q5_0 || t == GgmlType::Q5_1) ? 0.1
                                                                          : 0.2;
      EXPECT_LE(e, limit);
    }
  }
  // Mixed types: q8_0 keys with q4_0 values, as llama.cpp allows.
  BlockQuantizedKV mixed(d, {GgmlType::Q8_0, GgmlType::Q4_0});
  mixed.append(k, v);
  EXPECT_EQ(mixed.bytes(), static_cast<uint64_t>(n) * (34 * 2 + 18 * 2));
}

TEST(GgmlKvTypes, RejectsTypesLlamaCppDoesNotCache) {
  EXPECT_THROW(BlockQuantizedKV(64, {GgmlType::Q4_K, GgmlType::Q8_0}), Error);
  EXPECT_THROW(BlockQuantizedKV(48, {GgmlType::Q8_0, GgmlType::Q8_0}), Error);  // not whole blocks
  EXPECT_NO_THROW(BlockQuantizedKV(48, {GgmlType::F16, GgmlType::BF16}));
}

// ---- one byte budget ------------------------------------------------------------------------------------------

TEST(KvByteBudget, TokensWithinInvertsCacheBytes) {
  const int64_t d = 64;
  KiviOptions pc, pt;
  pt.key_mode = KeyMode::per_token;
  KiviOptions r32;
  r32.residual = 32;
  KiviOptions odd;  // a 7-token window, groups of 5, float32 parameters, unequal bits
  odd.key_bits = 4;
  odd.value_bits = 8;
  odd.group = 5;
  odd.residual = 7;
  odd.params = ParamType::f32;
  const std::vector<QuantSetting> settings = {pc, pt, r32, odd, GgmlCacheTypes{GgmlType::F16, GgmlType::F16},
                                              GgmlCacheTypes{GgmlType::Q8_0, GgmlType::Q4_0}};
  // Against a scan of every token count: per-channel keys make cache_bytes drop at each flush, so
  // the answer is the largest count that fits, not the first that does not.
  for (const auto& s : settings)
    for (uint64_t budget : {0u, 100u, 4096u, 65536u, 100000u}) {
      int64_t want = 0;
      for (int64_t n = 1; n < 4000; ++n)
        if (cache_bytes(s, d, n) <= budget) want = n;
      ASSERT_LT(want, 3900) << describe(s);
      EXPECT_EQ(tokens_within(s, d, budget), want) << describe(s) << " within " << budget;
    }
  EXPECT_EQ(cache_bytes(pc, d, 63), 63u * 24 + 768 + 31u * 256);
  EXPECT_EQ(cache_bytes(pc, d, 64), 3072u);
  // The bytes of a 1024-token f16 cache hold 5,443 tokens in 2-bit KIVI (G = 32), 1,927 in q8_0.
  const uint64_t f16_1024 = cache_bytes(GgmlCacheTypes{GgmlType::F16, GgmlType::F16}, d, 1024);
  EXPECT_EQ(f16_1024, 1024u * 256);
  EXPECT_EQ(tokens_within(pc, d, f16_1024), 5443);
  EXPECT_EQ(tokens_within(r32, d, f16_1024), 5152);
  EXPECT_EQ(tokens_within(GgmlCacheTypes{GgmlType::Q8_0, GgmlType::Q8_0}, d, f16_1024), 1927);
  EXPECT_EQ(tokens_within(GgmlCacheTypes{GgmlType::Q4_0, GgmlType::Q4_0}, d, f16_1024), 3640);
  KiviOptions k4, g128;
  k4.key_bits = k4.value_bits = 4;
  g128.group = 128;
  EXPECT_EQ(tokens_within(k4, d, f16_1024), 3267);
  EXPECT_EQ(tokens_within(g128, d, f16_1024), 6799);
  // Long caches approach bytes_per_token.
  EXPECT_NEAR(static_cast<double>(cache_bytes(r32, d, 100000)) / 100000, bytes_per_token(r32, d), 0.3);
}

TEST(KvAttention, MatchesTheDefinition) {
  const RowMatrix<float> q = make_rows(3, 8, 18), k = make_rows(6, 8, 19), v = make_rows(6, 8, 20);
  const RowMatrix<float> o = attention(q, k, v, 3);
  for (int64_t i = 0; i < 3; ++i) {
    const int64_t visible = 3 + i + 1;
    std::vector<double> p(static_cast<size_t>(visible));
    double sum = 0;
    for (int64_t j = 0; j < visible; ++j) {
      p[static_cast<size_t>(j)] = std::exp(q.row(i).cast<double>().dot(k.row(j).cast<double>()) / std::sqrt(8.0));
      sum += p[static_cast<size_t>(j)];
    }
    for (int64_t c = 0; c < 8; ++c) {
      double want = 0;
      for (int64_t j = 0; j < visible; ++j) want += p[static_cast<size_t>(j)] / sum * v(j, c);
      EXPECT_NEAR(o(i, c), want, 1e-5);
    }
  }
  // The first position sees only itself.
  EXPECT_TRUE(attention(q.topRows(1), k, v, 0).isApprox(v.topRows(1), 1e-6f));
  EXPECT_THROW(attention(q, k, v, 4), Error);
}

// ---- SmolLM2's real caches ------------------------------------------------------------------------------------

// Queries, keys (after RoPE) and values of every layer of one prefill from position 0, recomputed
// from the projections' shared input; and the attention output the engine itself computed.
struct Capture : nn::ForwardHooks {
  const nn::LlamaModel& model;
  std::vector<RowMatrix<float>> q, k, v, att;
  explicit Capture(const nn::LlamaModel& m) : model(m) {
    const auto n = static_cast<size_t>(m.config().n_layers);
    q.resize(n), k.resize(n), v.resize(n), att.resize(n);
  }
  void on_linear_input(int layer, std::span<const std::string> tensors, const float* x, int64_t tokens,
                       int64_t in) override {
    const auto& c = model.config();
    const size_t l = static_cast<size_t>(layer);
    if (tensors.size() == 1 && tensors[0].ends_with("attn_output.weight")) {
      att[l] = Eigen::Map<const RowMatrix<float>>(x, tokens, in);
      return;
    }
    if (tensors.size() != 3 || !tensors[0].ends_with("attn_q.weight")) return;
    q[l].resize(tokens, c.n_heads * c.head_dim);
    k[l].resize(tokens, c.n_kv_heads * c.head_dim);
    v[l].resize(tokens, c.n_kv_heads * c.head_dim);
    model.layer(layer, nn::LlamaModel::kQ).forward(x, tokens, q[l].data());
    model.layer(layer, nn::LlamaModel::kK).forward(x, tokens, k[l].data());
    model.layer(layer, nn::LlamaModel::kV).forward(x, tokens, v[l].data());
    nn::apply_rope(q[l].data(), q[l].rows(), c.n_heads, c.head_dim, 0, c.rope_theta);
    nn::apply_rope(k[l].data(), k[l].rows(), c.n_kv_heads, c.head_dim, 0, c.rope_theta);
  }
};

RowMatrix<float> cols(const RowMatrix<float>& m, int64_t head, int64_t hd) { return m.middleCols(head * hd, hd); }

TEST(KiviQuant, SmolLM2PerChannelKeysBeatPerTokenAt2Bits) {
  const auto path = testing::models_dir() / "smollm2-135m-instruct-q4_1.gguf";
  const auto text = testing::shared_data_dir() / "corpora/moby_dick.txt";
  STRATA_REQUIRE_FILE(path, "scripts/fetch-models.sh");
  STRATA_REQUIRE_FILE(text, "the shared corpora");
  const auto t0 = std::chrono::steady_clock::now();
  const auto file = io::open_model(path);
  const nn::LlamaModel model = nn::LlamaModel::load(*file);
  const nn::BpeTokenizer tok = nn::BpeTokenizer::from_model(*file);
  const int64_t n = 512, nq = 32;
  const auto tokens = nn::tokenize_slice(tok, nn::TextSlice::parse(text, "0.3:0.4"), n);
  ASSERT_EQ(static_cast<int64_t>(tokens.size()), n);
  Capture cap(model);
  nn::LlamaSession session(model, n);
  session.forward(tokens, nullptr, nn::Logits::none, &cap);

  const auto& c = model.config();
  const int64_t hd = c.head_dim, group = c.n_heads / c.n_kv_heads;
  // The recomputed queries, keys and values reproduce the engine's attention output.
  for (int64_t l : {int64_t{0}, c.n_layers - 1})
    for (int64_t h = 0; h < c.n_heads; ++h) {
      const auto& qq = cap.q[static_cast<size_t>(l)];
      const RowMatrix<float> o = attention(cols(qq, h, hd).bottomRows(nq), cols(cap.k[static_cast<size_t>(l)], h / group, hd),
                                           cols(cap.v[static_cast<size_t>(l)], h / group, hd), n - nq);
      EXPECT_LT(rel_error(cols(cap.att[static_cast<size_t>(l)], h, hd).bottomRows(nq), o), 1e-4) << "layer " << l << " head " << h;
    }

  // Exact outputs of the last nq queries of every query head, then both key modes against them.
  // One (layer, head) per task: Eigen's products inside stay on their thread.
  const int64_t n_heads = c.n_layers * c.n_heads;
  std::vector<RowMatrix<float>> queries(static_cast<size_t>(n_heads)), exact(static_cast<size_t>(n_heads));
  parallel_for(n_heads, 1, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      const size_t li = static_cast<size_t>(i / c.n_heads);
      const int64_t h = i % c.n_heads;
      queries[static_cast<size_t>(i)] = cols(cap.q[li], h, hd).bottomRows(nq);
      exact[static_cast<size_t>(i)] =
          attention(queries[static_cast<size_t>(i)], cols(cap.k[li], h / group, hd), cols(cap.v[li], h / group, hd), n - nq);
    }
  });
  double norm2 = 0;
  for (const auto& o : exact) norm2 += o.cast<double>().squaredNorm();
  double err2[2] = {0, 0};
  for (KeyMode mode : {KeyMode::per_channel, KeyMode::per_token}) {
    KiviOptions o;
    o.key_mode = mode;
    const int64_t n_kv = c.n_layers * c.n_kv_heads;
    std::vector<double> e(static_cast<size_t>(n_kv), 0.0);
    parallel_for(n_kv, 1, [&](int64_t j0, int64_t j1) {
      for (int64_t j = j0; j < j1; ++j) {
        const size_t li = static_cast<size_t>(j / c.n_kv_heads);
        const int64_t kvh = j % c.n_kv_heads;
        QuantizedKV qkv(hd, o);
        qkv.append(cols(cap.k[li], kvh, hd), cols(cap.v[li], kvh, hd));
        const RowMatrix<float> kd = qkv.keys_dequantized(), vd = qkv.values_dequantized();
        for (int64_t h = kvh * group; h < (kvh + 1) * group; ++h) {
          const size_t i = li * static_cast<size_t>(c.n_heads) + static_cast<size_t>(h);
          e[static_cast<size_t>(j)] += (exact[i] - attention(queries[i], kd, vd, n - nq)).cast<double>().squaredNorm();
        }
      }
    });
    for (double x : e) err2[mode == KeyMode::per_channel ? 0 : 1] += x;
  }
  const double pc = std::sqrt(err2[0] / norm2), pt = std::sqrt(err2[1] / norm2);
  std::printf("SmolLM2 2-bit KIVI, G = 32, %lld tokens: attention output error per-channel keys %.4f, per-token %.4f (%.1f s)\n",
              static_cast<long long>(n), pc, pt,
              std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  EXPECT_LT(pc, pt);
}

}  // namespace
}  // namespace strata::kv

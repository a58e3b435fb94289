// Integer quantizers: the bit packing, RTN's formulas, GPTQ and AWQ against RTN on random and on real
// layers (stories260K calibrated on its own samples), stored bytes, and bad input.
#include "strata/compress/quant/quant.hpp"

#include <gtest/gtest.h>

#include <Eigen/Cholesky>
#include <Eigen/LU>

#include <algorithm>
#include <cmath>
#include <memory>
#include <random>

#include "strata/compress/compressor.hpp"
#include "strata/core/parallel.hpp"
#include "strata/io/model.hpp"
#include "strata/nn/calibration.hpp"
#include "strata/nn/eval.hpp"
#include "strata/nn/llama.hpp"
#include "test_util.hpp"

namespace strata::compress::quant {
namespace {

using strata::testing::correlated_hessian;
using strata::testing::heavy_tailed;

float f16_round(float x) { return f16_to_f32(f32_to_f16(x)); }

// ---- bit packing -------------------------------------------------------------------------------

TEST(PackBits, RoundTripEveryWidth) {
  std::mt19937 rng(7);
  for (int bits = 1; bits <= 8; ++bits) {
    for (uint64_t n : {0u, 1u, 2u, 7u, 8u, 9u, 61u, 1000u, 4099u}) {
      SCOPED_TRACE("bits " + std::to_string(bits) + ", n " + std::to_string(n));
      std::vector<uint8_t> values(n);
      for (auto& v : values) v = static_cast<uint8_t>(rng() % (1u << bits));
      const auto packed = pack_bits(values, bits);
      EXPECT_EQ(packed.size(), (n * static_cast<uint64_t>(bits) + 7) / 8);
      EXPECT_EQ(unpack_bits(packed, n, bits), values);
    }
  }
}

TEST(PackBits, LsbFirstLayout) {
  // 3-bit values 1, 2, 7, 0, 5 -> bits (LSB first) 100 010 111 000 101 -> bytes 0b11010001, 0b01010001.
  const std::vector<uint8_t> v3 = {1, 2, 7, 0, 5};
  EXPECT_EQ(pack_bits(v3, 3), (std::vector<uint8_t>{0xD1, 0x51}));
  const std::vector<uint8_t> v4 = {0xA, 0x3, 0xF};
  EXPECT_EQ(pack_bits(v4, 4), (std::vector<uint8_t>{0x3A, 0x0F}));
  const std::vector<uint8_t> v2 = {3, 0, 1, 2, 1};
  EXPECT_EQ(pack_bits(v2, 2), (std::vector<uint8_t>{0x93, 0x01}));
}

TEST(PackBits, RejectsBadInput) {
  const std::vector<uint8_t> v = {1, 8};
  EXPECT_THROW(pack_bits(v, 3), Error);  // 8 needs 4 bits
  EXPECT_THROW(pack_bits(v, 0), Error);
  EXPECT_THROW(pack_bits(v, 9), Error);
  const std::vector<uint8_t> packed = {0xFF, 0xFF};
  EXPECT_THROW(unpack_bits(packed, 6, 3), Error);  // 6 x 3 bits is 3 bytes
}

// ---- RTN formulas -------------------------------------------------------------------------------

TEST(FitGroup, AsymmetricFormula) {
  const std::vector<float> x = {-0.7f, -0.1f, 0.2f, 0.5f, 1.3f};
  const QuantSpec spec{3, 128, false};
  const GroupParams p = fit_group(x.data(), 5, 1, spec);
  EXPECT_EQ(p.scale, f16_round(2.0f / 7.0f));
  EXPECT_EQ(p.zero, static_cast<int>(std::nearbyint(0.7f / p.scale)));
  for (float v : x) {
    const int code = quantize_value(v, p, 7);
    EXPECT_EQ(code, std::clamp(static_cast<int>(std::nearbyint(v / p.scale)) + p.zero, 0, 7));
    EXPECT_LE(std::abs(dequantize_value(code, p) - v), 0.5f * p.scale * 1.01f) << v;
  }
}

TEST(FitGroup, RangeHoldsZero) {
  // All positive: min is taken as 0, so the zero point is code 0 and 0 is exact.
  const std::vector<float> x = {0.3f, 0.5f, 0.9f};
  const GroupParams p = fit_group(x.data(), 3, 1, QuantSpec{4, 32, false});
  EXPECT_EQ(p.scale, f16_round(0.9f / 15.0f));
  EXPECT_EQ(p.zero, 0);
  EXPECT_EQ(dequantize_value(quantize_value(0.0f, p, 15), p), 0.0f);
  const std::vector<float> neg = {-0.3f, -0.9f};
  const GroupParams q = fit_group(neg.data(), 2, 1, QuantSpec{4, 32, false});
  EXPECT_EQ(q.zero, 15);
  EXPECT_EQ(dequantize_value(quantize_value(0.0f, q, 15), q), 0.0f);
}

TEST(FitGroup, SymmetricFormula) {
  const std::vector<float> x = {0.25f, -1.5f, 0.75f, 1.0f};  // strided: every other value
  for (int bits = 2; bits <= 8; ++bits) {
    const GroupParams p = fit_group(x.data(), 2, 2, QuantSpec{bits, 128, true});
    const int half = 1 << (bits - 1);
    EXPECT_EQ(p.zero, half);
    EXPECT_EQ(p.scale, f16_round(0.75f / static_cast<float>(half - 1))) << bits;
    EXPECT_EQ(dequantize_value(quantize_value(0.0f, p, (1 << bits) - 1), p), 0.0f);
  }
}

TEST(FitGroup, ZeroGroupHasZeroScale) {
  const std::vector<float> x(8, 0.0f);
  for (bool sym : {false, true}) {
    const GroupParams p = fit_group(x.data(), 8, 1, QuantSpec{4, 8, sym});
    EXPECT_EQ(p.scale, 0.0f);
    EXPECT_EQ(dequantize_value(quantize_value(0.0f, p, 15), p), 0.0f);
  }
}

TEST(FitGroup, ScaleOverflowingF16Throws) {
  const std::vector<float> x = {-1e9f, 1e9f};
  EXPECT_THROW(fit_group(x.data(), 2, 1, QuantSpec{4, 32, false}), Error);
}

// The clipping search, written out: every candidate range of the documented grid, its f16 scale and
// zero point, and the squared error of the group; the first smallest wins.
GroupParams reference_clip_fit(const std::vector<float>& x, const QuantSpec& spec, const ClipSearch& clip,
                               const std::vector<float>& importance = {}) {
  float lo = 0, hi = 0;
  for (float v : x) {
    lo = std::min(lo, spec.symmetric ? 0.0f : v);
    hi = std::max(hi, spec.symmetric ? std::abs(v) : v);
  }
  GroupParams best;
  double best_err = INFINITY;
  const int steps = static_cast<int>(std::ceil(clip.max_shrink * clip.grid - 1e-9));
  for (int i = 0; i < std::max(steps, 1); ++i) {
    const float f = 1.0f - static_cast<float>(i) / static_cast<float>(clip.grid);
    GroupParams p;
    if (spec.symmetric) {
      p.zero = 1 << (spec.bits - 1);
      p.scale = f16_round(f * hi / static_cast<float>(p.zero - 1));
    } else {
      p.scale = f16_round((f * hi - f * lo) / static_cast<float>(spec.max_code()));
      const float z = std::nearbyint(-(f * lo) / p.scale);
      p.zero = static_cast<int>(std::clamp(z, 0.0f, static_cast<float>(spec.max_code())));
    }
    if (p.scale == 0) continue;
    double err = 0;
    for (size_t j = 0; j < x.size(); ++j) {
      const double e = x[j] - dequantize_value(quantize_value(x[j], p, spec.max_code()), p);
      err += (importance.empty() ? 1.0 : importance[j]) * e * e;
    }
    if (err < best_err * (1 - 1e-6)) {
      best_err = err;
      best = p;
    }
  }
  return best;
}

double group_error(const std::vector<float>& x, const GroupParams& p, int max_code,
                   const std::vector<float>& importance = {}) {
  double err = 0;
  for (size_t j = 0; j < x.size(); ++j) {
    const double e = x[j] - dequantize_value(quantize_value(x[j], p, max_code), p);
    err += (importance.empty() ? 1.0 : importance[j]) * e * e;
  }
  return err;
}

TEST(FitGroup, ClipSearchMatchesReferenceAndNeverLosesToFullRange) {
  std::mt19937_64 rng(21);
  std::student_t_distribution<float> t(3.0f);
  int clipped = 0, groups = 0;
  for (int bits : {2, 3, 4, 8}) {
    for (bool sym : {false, true}) {
      const QuantSpec spec{bits, 128, sym};
      for (int trial = 0; trial < 40; ++trial) {
        std::vector<float> x(static_cast<size_t>(trial % 3 == 0 ? 128 : 37));
        for (auto& v : x) v = 0.02f * t(rng);
        if (trial % 4 == 1) x[5] = 0.5f;  // one outlier
        if (trial % 8 == 3)
          for (auto& v : x) v = std::abs(v);  // all positive: the range still holds 0
        SCOPED_TRACE(spec.knob() + ", trial " + std::to_string(trial));
        const GroupParams full = fit_group(x.data(), static_cast<int64_t>(x.size()), 1, spec);
        const GroupParams mine = fit_group(x.data(), static_cast<int64_t>(x.size()), 1, spec, kMseClip);
        const GroupParams ref = reference_clip_fit(x, spec, kMseClip);
        EXPECT_NEAR(group_error(x, mine, spec.max_code()), group_error(x, ref, spec.max_code()),
                    1e-5 * group_error(x, ref, spec.max_code()));
        EXPECT_LE(group_error(x, mine, spec.max_code()), group_error(x, full, spec.max_code()) * (1 + 1e-6));
        EXPECT_LE(mine.scale, full.scale);
        // The stored zero point stays a code, and 0 stays exact.
        EXPECT_GE(mine.zero, 0);
        EXPECT_LE(mine.zero, spec.max_code());
        EXPECT_EQ(dequantize_value(quantize_value(0.0f, mine, spec.max_code()), mine), 0.0f);
        // Strided input gives the same fit.
        std::vector<float> strided(x.size() * 3, 99.0f);
        for (size_t i = 0; i < x.size(); ++i) strided[3 * i] = x[i];
        const GroupParams s3 = fit_group(strided.data(), static_cast<int64_t>(x.size()), 3, spec, kMseClip);
        EXPECT_EQ(s3.scale, mine.scale);
        EXPECT_EQ(s3.zero, mine.zero);
        clipped += mine.scale < full.scale;
        ++groups;
        // Weighted by importance (a few loud inputs, as E[x_j^2] has them).
        std::vector<float> imp(x.size());
        for (size_t i = 0; i < x.size(); ++i) imp[i] = i % 11 == 5 ? 100.0f : 0.5f + static_cast<float>(i % 3);
        const GroupParams wmine = fit_group(x.data(), static_cast<int64_t>(x.size()), 1, spec, kMseClip, imp.data());
        const GroupParams wref = reference_clip_fit(x, spec, kMseClip, imp);
        EXPECT_NEAR(group_error(x, wmine, spec.max_code(), imp), group_error(x, wref, spec.max_code(), imp),
                    1e-5 * group_error(x, wref, spec.max_code(), imp));
        EXPECT_LE(group_error(x, wmine, spec.max_code(), imp), group_error(x, full, spec.max_code(), imp) * (1 + 1e-6));
        const GroupParams ws3 =
            fit_group(strided.data(), static_cast<int64_t>(x.size()), 3, spec, kMseClip, imp.data());
        EXPECT_EQ(ws3.scale, wmine.scale);
      }
    }
  }
  // At 2-4 bits with heavy tails, most groups gain from clipping; at 8 bits almost none do.
  EXPECT_GT(clipped, groups / 3);
}

TEST(FitGroup, ClipSearchHelpsHeavyTailsAtThreeBits) {
  // Laplace-distributed weights: the extremes of 128 draws lie far out in the tails, and a grid
  // stretched to hold them wastes most of its 8 levels.
  std::mt19937_64 rng(23);
  std::exponential_distribution<float> expo(1.0f);
  std::vector<float> x(128);
  for (size_t i = 0; i < x.size(); ++i) x[i] = 0.01f * expo(rng) * (i % 2 ? 1.0f : -1.0f);
  const QuantSpec spec{3, 128, false};
  const GroupParams full = fit_group(x.data(), 128, 1, spec), clip = fit_group(x.data(), 128, 1, spec, kMseClip);
  std::printf("3-bit Laplace group: scale %.5f -> %.5f, squared error %.3e -> %.3e\n", full.scale, clip.scale,
              group_error(x, full, 7), group_error(x, clip, 7));
  EXPECT_LT(clip.scale, 0.9f * full.scale);
  EXPECT_LT(group_error(x, clip, 7), 0.9 * group_error(x, full, 7));
  // When the largest weights sit on inputs that matter most, the weighted search keeps their range.
  std::vector<float> imp(128, 1.0f);
  float amax = 0;
  for (float v : x) amax = std::max(amax, std::abs(v));
  for (size_t i = 0; i < x.size(); ++i)
    if (std::abs(x[i]) > 0.5f * amax) imp[i] = 1000.0f;
  const GroupParams weighted = fit_group(x.data(), 128, 1, spec, kMseClip, imp.data());
  EXPECT_GT(weighted.scale, clip.scale);
  EXPECT_LT(group_error(x, weighted, 7, imp), group_error(x, clip, 7, imp));
  // No search: the plain fit, bit for bit.
  const GroupParams off = fit_group(x.data(), 128, 1, spec, ClipSearch{});
  EXPECT_EQ(off.scale, full.scale);
  EXPECT_EQ(off.zero, full.zero);
  // A group of zeros keeps scale 0.
  const std::vector<float> zeros(16, 0.0f);
  EXPECT_EQ(fit_group(zeros.data(), 16, 1, spec, kMseClip).scale, 0.0f);
}

TEST(FitGroup, BadClipSearchThrows) {
  const std::vector<float> x = {0.1f, -0.2f};
  const QuantSpec spec{4, 32, false};
  EXPECT_THROW(fit_group(x.data(), 2, 1, spec, ClipSearch{-1, 0.8}), Error);
  EXPECT_THROW(fit_group(x.data(), 2, 1, spec, ClipSearch{100, 1.0}), Error);
  EXPECT_THROW(fit_group(x.data(), 2, 1, spec, ClipSearch{100, -0.1}), Error);
}

TEST(Rtn, MatchesFormulaWithRaggedGroups) {
  // 172 inputs in groups of 64: 64 + 64 + 44. An outlier in the short group must not touch the others.
  RowMatrix<float> w = heavy_tailed(7, 172, 1);
  w(2, 170) = 3.0f;
  for (bool sym : {false, true}) {
    const QuantSpec spec{3, 64, sym};
    const QuantizedMatrix q = rtn(w, spec);
    ASSERT_EQ(spec.groups(172), 3);
    ASSERT_EQ(q.scales.size(), 7u * 3);
    ASSERT_EQ(q.zeros.size(), sym ? 0u : 7u * 3);
    const RowMatrix<float> w_hat = dequantize(q);
    for (int64_t r = 0; r < 7; ++r) {
      for (int64_t k = 0; k < 3; ++k) {
        const int64_t c0 = 64 * k, c1 = std::min<int64_t>(172, c0 + 64);
        const GroupParams p = fit_group(&w(r, c0), c1 - c0, 1, spec);
        EXPECT_EQ(f16_to_f32(q.scales[static_cast<size_t>(r * 3 + k)]), p.scale);
        if (!sym) {
          EXPECT_EQ(q.zeros[static_cast<size_t>(r * 3 + k)], p.zero);
        }
        for (int64_t c = c0; c < c1; ++c) {
          EXPECT_EQ(q.codes[static_cast<size_t>(r * 172 + c)], quantize_value(w(r, c), p, 7));
          EXPECT_EQ(w_hat(r, c), dequantize_value(q.codes[static_cast<size_t>(r * 172 + c)], p));
          // Inside the grid the error is at most half a step (the f16 scale can clip the ends by a hair).
          EXPECT_LE(std::abs(w_hat(r, c) - w(r, c)), 0.5f * p.scale * 1.01f + 1e-7f);
        }
      }
    }
    // Row 2's first groups keep the scale of their own (small) weights.
    EXPECT_LT(f16_to_f32(q.scales[2 * 3 + 0]), 0.1f);
  }
}

TEST(Rtn, ClipSearchPerGroupAndNeverWorse) {
  const RowMatrix<float> w = heavy_tailed(9, 172, 22);
  for (bool sym : {false, true}) {
    const QuantSpec spec{3, 64, sym};
    const QuantizedMatrix q = rtn(w, spec, kMseClip), plain = rtn(w, spec);
    for (int64_t r = 0; r < 9; ++r) {
      for (int64_t k = 0; k < 3; ++k) {
        const int64_t c0 = 64 * k, c1 = std::min<int64_t>(172, c0 + 64);
        const GroupParams p = fit_group(&w(r, c0), c1 - c0, 1, spec, kMseClip);
        EXPECT_EQ(f16_to_f32(q.scales[static_cast<size_t>(r * 3 + k)]), p.scale);
        for (int64_t c = c0; c < c1; ++c)
          EXPECT_EQ(q.codes[static_cast<size_t>(r * 172 + c)], quantize_value(w(r, c), p, 7));
      }
    }
    EXPECT_LT((w - dequantize(q)).squaredNorm(), (w - dequantize(plain)).squaredNorm());
  }
}

// With many weights per group, rounding error is uniform over half a step: E[e^2] = s^2 / 12.
TEST(Rtn, SquaredErrorIsStepSquaredOverTwelve) {
  const RowMatrix<float> w = heavy_tailed(256, 512, 3);
  for (int bits : {4, 6, 8}) {
    const QuantSpec spec{bits, 128, false};
    const QuantizedMatrix q = rtn(w, spec);
    const RowMatrix<float> w_hat = dequantize(q);
    double predicted = 0;
    for (const f16 s : q.scales) predicted += 128.0 * std::pow(f16_to_f32(s), 2) / 12.0;
    const double actual = (w - w_hat).cast<double>().squaredNorm();
    EXPECT_NEAR(actual / predicted, 1.0, 0.05) << bits << " bits";
  }
}

TEST(Rtn, ErrorFallsWithBits) {
  const RowMatrix<float> w = heavy_tailed(64, 256, 4);
  double prev = 1.0;
  for (int bits = 2; bits <= 8; ++bits) {
    const double e = output_error(w, dequantize(rtn(w, QuantSpec{bits, 64, false})), nullptr);
    EXPECT_LT(e, prev) << bits;
    prev = e;
  }
  EXPECT_LT(prev, 1e-4);
}

// ---- GPTQ ---------------------------------------------------------------------------------------

// Without correlations between inputs there is nothing to feed the error into: GPTQ is RTN exactly.
TEST(Gptq, DiagonalHessianGivesRtn) {
  const RowMatrix<float> w = heavy_tailed(48, 200, 5);
  Matrix<double> h = Matrix<double>::Zero(200, 200);
  for (int64_t j = 0; j < 200; ++j) h(j, j) = 0.5 + j % 7;
  for (const QuantSpec spec : {QuantSpec{3, 64, false}, QuantSpec{4, 0, true}}) {
    for (bool act : {false, true}) {
      for (const ClipSearch clip : {ClipSearch{}, kMseClip}) {
        GptqOptions opt;
        opt.act_order = act;
        opt.clip = clip;
        const QuantizedMatrix g = gptq(w, h, spec, opt), r = rtn(w, spec, clip);
        EXPECT_EQ(g.codes, r.codes) << spec.knob() << (act ? " act_order" : "") << (clip.enabled() ? " clip" : "");
        EXPECT_EQ(dequantize(g), dequantize(r));
      }
    }
  }
}

// The textbook loop, unblocked and in double: H^-1 by a plain inverse, U its upper Cholesky factor,
// one column at a time. The blocked, float, reversed-Cholesky implementation must agree with it.
QuantizedMatrix reference_gptq(const RowMatrix<float>& w, Matrix<double> h, const QuantSpec& spec, bool act_order,
                               const ClipSearch& clip = {}) {
  const int64_t rows = w.rows(), cols = w.cols(), g = spec.group_size(cols), ng = spec.groups(cols);
  Matrix<double> wd = w.cast<double>();
  for (int64_t j = 0; j < cols; ++j)
    if (h(j, j) == 0) {
      h(j, j) = 1;
      wd.col(j).setZero();
    }
  std::vector<GroupParams> params(static_cast<size_t>(rows * ng));
  auto fit = [&](int64_t r, int64_t k) {
    const int64_t c0 = k * g, n = std::min(cols, c0 + g) - c0;
    const Eigen::RowVectorXf seg = wd.row(r).segment(c0, n).cast<float>();
    params[static_cast<size_t>(r * ng + k)] = fit_group(seg.data(), n, 1, spec, clip);
  };
  std::vector<int64_t> perm(static_cast<size_t>(cols));
  for (int64_t j = 0; j < cols; ++j) perm[static_cast<size_t>(j)] = j;
  const bool static_groups = act_order || g == cols;
  if (act_order)
    std::stable_sort(perm.begin(), perm.end(), [&](int64_t a, int64_t b) { return h(a, a) > h(b, b); });
  if (static_groups)
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t k = 0; k < ng; ++k) fit(r, k);
  Matrix<double> hp(cols, cols), wp(rows, cols);
  for (int64_t i = 0; i < cols; ++i) {
    wp.col(i) = wd.col(perm[static_cast<size_t>(i)]);
    for (int64_t j = 0; j < cols; ++j) hp(j, i) = h(perm[static_cast<size_t>(j)], perm[static_cast<size_t>(i)]);
  }
  hp.diagonal().array() += 0.01 * hp.diagonal().mean();
  const Matrix<double> hinv = hp.inverse();
  const Matrix<double> u = hinv.llt().matrixU();
  QuantizedMatrix q;
  q.rows = rows;
  q.cols = cols;
  q.spec = spec;
  q.codes.resize(static_cast<size_t>(rows * cols));
  for (int64_t i = 0; i < cols; ++i) {
    const int64_t orig = perm[static_cast<size_t>(i)], k = orig / g;
    for (int64_t r = 0; r < rows; ++r) {
      if (!static_groups && orig % g == 0) {
        // Dynamic groups: fitted on the current (updated) weights, in the original column order.
        const int64_t n = std::min(cols, orig + g) - orig;
        const Eigen::RowVectorXf seg = wp.row(r).segment(i, n).cast<float>();
        params[static_cast<size_t>(r * ng + k)] = fit_group(seg.data(), n, 1, spec, clip);
      }
      const GroupParams& p = params[static_cast<size_t>(r * ng + k)];
      const int code = quantize_value(static_cast<float>(wp(r, i)), p, spec.max_code());
      q.codes[static_cast<size_t>(r * cols + orig)] = static_cast<uint8_t>(code);
      const double e = (wp(r, i) - dequantize_value(code, p)) / u(i, i);
      for (int64_t j = i + 1; j < cols; ++j) wp(r, j) -= e * u(i, j);
    }
  }
  for (const auto& p : params) {
    q.scales.push_back(f32_to_f16(p.scale));
    if (!spec.symmetric) q.zeros.push_back(static_cast<uint8_t>(p.zero));
  }
  return q;
}

TEST(Gptq, MatchesUnblockedDoubleReference) {
  // 300 inputs: three blocks of 128 (the last one short), groups of 64 and a ragged 44.
  const RowMatrix<float> w = heavy_tailed(40, 300, 17);
  const Matrix<double> h = correlated_hessian(300, 17);
  for (const QuantSpec spec : {QuantSpec{3, 64, false}, QuantSpec{4, 0, true}, QuantSpec{4, 128, false}}) {
    for (const auto& [act, clip] : {std::pair{false, ClipSearch{}}, std::pair{true, ClipSearch{}},
                                    std::pair{false, kMseClip}, std::pair{true, kMseClip}}) {
      SCOPED_TRACE(spec.knob() + (act ? " act_order" : "") + (clip.enabled() ? " clip" : ""));
      GptqOptions opt;
      opt.act_order = act;
      opt.clip = clip;
      const QuantizedMatrix mine = gptq(w, h, spec, opt), ref = reference_gptq(w, h, spec, act, clip);
      // Float rounding may flip a code that sits on a rounding boundary, and its error then travels on.
      int64_t same = 0;
      for (size_t i = 0; i < mine.codes.size(); ++i) same += mine.codes[i] == ref.codes[i];
      EXPECT_GT(static_cast<double>(same) / static_cast<double>(mine.codes.size()), 0.99);
      const double e_mine = output_error(w, dequantize(mine), &h), e_ref = output_error(w, dequantize(ref), &h);
      EXPECT_NEAR(e_mine, e_ref, 0.01 * e_ref);
    }
  }
}

TEST(Gptq, EightBitsCloseToRtn) {
  const RowMatrix<float> w = heavy_tailed(64, 256, 6);
  const Matrix<double> h = correlated_hessian(256, 6);
  const QuantSpec spec{8, 128, false};
  const double e_rtn = output_error(w, dequantize(rtn(w, spec)), &h);
  const RowMatrix<float> g_hat = dequantize(gptq(w, h, spec));
  const double e_gptq = output_error(w, g_hat, &h);
  EXPECT_LT(e_rtn, 1e-4);
  EXPECT_LT(e_gptq, 1e-4);
  EXPECT_LE(e_gptq, e_rtn * 1.05);
  // The weights themselves stay within a few grid steps of the originals.
  EXPECT_LT((w - g_hat).cwiseAbs().maxCoeff(), 0.05f * w.cwiseAbs().maxCoeff());
}

TEST(Gptq, BeatsRtnOnCorrelatedInputs) {
  const RowMatrix<float> w = heavy_tailed(96, 320, 8);
  const Matrix<double> h = correlated_hessian(320, 8);
  for (int bits : {2, 3, 4}) {
    for (int64_t group : {0, 32, 128}) {  // 128 leaves a ragged group of 64
      const QuantSpec spec{bits, group, false};
      const double e_rtn = output_error(w, dequantize(rtn(w, spec)), &h);
      for (bool act : {false, true}) {
        GptqOptions opt;
        opt.act_order = act;
        const double e = output_error(w, dequantize(gptq(w, h, spec, opt)), &h);
        EXPECT_LT(e, 0.8 * e_rtn) << spec.knob() << (act ? " act_order" : "");
      }
    }
  }
}

TEST(Gptq, DeadInputsAreZeroed) {
  RowMatrix<float> w = heavy_tailed(16, 64, 9);
  Matrix<double> h = correlated_hessian(64, 9);
  for (int64_t j : {0, 17, 63}) {
    h.row(j).setZero();
    h.col(j).setZero();
  }
  const RowMatrix<float> w_hat = dequantize(gptq(w, h, QuantSpec{4, 32, false}));
  ASSERT_TRUE(w_hat.allFinite());
  for (int64_t j : {0, 17, 63}) EXPECT_EQ(w_hat.col(j).cwiseAbs().maxCoeff(), 0.0f) << j;
  EXPECT_LT(output_error(w, w_hat, &h), 0.05);
}

TEST(Gptq, DeterministicForAnyThreadCount) {
  const RowMatrix<float> w = heavy_tailed(80, 300, 10);
  const Matrix<double> h = correlated_hessian(300, 10);
  for (int variant = 0; variant < 3; ++variant) {
    GptqOptions opt;
    opt.act_order = variant > 0;
    if (variant == 2) {  // the registered defaults: the weighted search fits rows in parallel
      opt.clip = kMseClip;
      opt.clip_weighted = true;
    }
    const QuantSpec spec{3, 64, false};
    const int saved = num_threads();
    set_num_threads(1);
    const auto one = gptq(w, h, spec, opt);
    set_num_threads(2);
    const auto two = gptq(w, h, spec, opt), again = gptq(w, h, spec, opt);
    set_num_threads(saved);
    EXPECT_EQ(one.codes, two.codes);
    EXPECT_EQ(one.zeros, two.zeros);
    EXPECT_EQ(two.codes, again.codes);
  }
}

// ---- AWQ ----------------------------------------------------------------------------------------

TEST(Awq, NeverWorseThanRtnAndScalesStored) {
  const RowMatrix<float> w = heavy_tailed(64, 256, 11);
  const Matrix<double> h = correlated_hessian(256, 11);
  const Vector<double> mean_abs = h.diagonal().cwiseSqrt();
  const Vector<double> mean_sq = h.diagonal();
  for (int bits : {3, 4}) {
    const QuantSpec spec{bits, 64, false};
    const double e_rtn = output_error(w, dequantize(rtn(w, spec)), &h);
    const AwqResult with_h = awq(w, mean_abs, &h, nullptr, spec);
    EXPECT_EQ(with_h.q.channel_scales.size(), 256u);
    const double e = output_error(w, dequantize(with_h.q), &h);
    EXPECT_NEAR(e, with_h.error, 1e-4 * e);
    EXPECT_LE(e, e_rtn * (1 + 1e-4));
    EXPECT_GE(with_h.alpha, 0.0);
    EXPECT_LT(with_h.alpha, 1.0);
    // The diagonal proxy (no Hessian) still picks a valid alpha and a finite result.
    const AwqResult diag = awq(w, mean_abs, nullptr, &mean_sq, spec);
    EXPECT_TRUE(dequantize(diag.q).allFinite());
  }
}

TEST(Awq, DeadChannelsStayFinite) {
  const RowMatrix<float> w = heavy_tailed(8, 64, 12);
  Vector<double> mean_abs = Vector<double>::Constant(64, 0.5);
  mean_abs[5] = 0;
  mean_abs[6] = 1e-30;
  const AwqResult r = awq(w, mean_abs, nullptr, nullptr, QuantSpec{4, 32, false});
  EXPECT_TRUE(dequantize(r.q).allFinite());
}

// ---- the registered compressors -------------------------------------------------------------------

TEST(Compressors, StoredBytesMatchCostOnRaggedShapes) {
  for (const char* name : {"quant.rtn", "quant.rtn_sym", "quant.gptq", "quant.awq"}) {
    const WeightCompressor& c = find_compressor(name);
    for (auto [rows, cols] : {std::pair<int64_t, int64_t>{64, 172}, {172, 64}, {5, 7}, {33, 300}}) {
      const RowMatrix<float> w = heavy_tailed(rows, cols, 13);
      const Matrix<double> h = correlated_hessian(cols, 13);
      const Vector<double> mean_sq = h.diagonal(), mean_abs = mean_sq.cwiseSqrt();
      const LayerCalibration calib{&h, &mean_sq, &mean_abs, 1000};
      const Layer layer{"ragged.weight", &w};
      std::vector<std::string> knobs = c.knobs(layer);
      knobs.push_back("bits=3,group=32");
      knobs.push_back("bits=5,group=row,sym");
      knobs.push_back("bits=7,group=48,asym");
      for (const auto& knob : knobs) {
        SCOPED_TRACE(std::string(name) + " " + knob + " on " + std::to_string(rows) + "x" + std::to_string(cols));
        const Compressed comp = c.apply(layer, calib, knob);
        EXPECT_EQ(static_cast<uint64_t>(c.cost(layer, knob).bytes), comp.stored_bytes());
        const RowMatrix<float> w_hat = c.reconstruct(comp);
        ASSERT_EQ(w_hat.rows(), rows);
        ASSERT_EQ(w_hat.cols(), cols);
        EXPECT_TRUE(w_hat.allFinite());
      }
    }
  }
  // The formula, once by hand: 64 x 172 at 3 bits, groups of 32 (5 full + 1 of 12), asymmetric.
  const RowMatrix<float> w = heavy_tailed(64, 172, 14);
  const Layer layer{"w", &w};
  const double codes = std::ceil(64.0 * 172 * 3 / 8), scales = 64.0 * 6 * 2, zeros = std::ceil(64.0 * 6 * 3 / 8);
  EXPECT_EQ(find_compressor("quant.rtn").cost(layer, "bits=3,group=32").bytes, codes + scales + zeros);
  EXPECT_EQ(find_compressor("quant.awq").cost(layer, "bits=3,group=32").bytes, codes + scales + zeros + 172 * 2);
  EXPECT_EQ(find_compressor("quant.rtn_sym").cost(layer, "bits=3,group=32").bytes, codes + scales);
}

TEST(Compressors, KnobLadderAndDefaults) {
  const RowMatrix<float> w = heavy_tailed(8, 256, 15);
  const Layer layer{"w", &w};
  EXPECT_EQ(find_compressor("quant.rtn").knobs(layer),
            (std::vector<std::string>{"bits=2,group=128,asym", "bits=3,group=128,asym", "bits=4,group=128,asym",
                                      "bits=5,group=128,asym", "bits=6,group=128,asym", "bits=8,group=128,asym"}));
  EXPECT_EQ(find_compressor("quant.gptq").knobs(layer).front(), "bits=2,group=128,asym,act_order,clip=w,damp=0.1");
  // Missing keys take the compressor's defaults.
  EXPECT_EQ(find_compressor("quant.rtn").cost(layer, "bits=4").bytes,
            find_compressor("quant.rtn").cost(layer, "bits=4,group=128,asym").bytes);
  // GPTQ's knob reaches its options.
  const Matrix<double> h = correlated_hessian(256, 15);
  const LayerCalibration calib{&h, nullptr, nullptr, 1000};
  GptqOptions opt;
  opt.damp = 0.1;
  const Compressed g = find_compressor("quant.gptq").apply(layer, calib, "bits=3,act_order=0,damp=0.1,clip=0");
  EXPECT_EQ(find_compressor("quant.gptq").reconstruct(g), dequantize(gptq(w, h, QuantSpec{3, 128, false}, opt)));
  EXPECT_EQ(g.meta.at("act_order"), false);
  // GPTQ's defaults: act-order, the weighted clipping search, 10% dampening.
  GptqOptions best;
  best.act_order = true;
  best.damp = 0.1;
  best.clip = kMseClip;
  best.clip_weighted = true;
  const Compressed d = find_compressor("quant.gptq").apply(layer, calib, "bits=3");
  EXPECT_EQ(find_compressor("quant.gptq").reconstruct(d), dequantize(gptq(w, h, QuantSpec{3, 128, false}, best)));
  EXPECT_EQ(d.meta.at("damp"), 0.1);
  EXPECT_EQ(d.meta.at("clip"), "mse, weighted by H_jj");
  // The clipping search reaches RTN and GPTQ, and the stored form says whether it ran.
  const Compressed rc = find_compressor("quant.rtn").apply(layer, {}, "bits=3,clip");
  EXPECT_EQ(find_compressor("quant.rtn").reconstruct(rc), dequantize(rtn(w, QuantSpec{3, 128, false}, kMseClip)));
  EXPECT_EQ(rc.meta.at("clip"), "mse");
  EXPECT_EQ(find_compressor("quant.rtn").apply(layer, {}, "bits=3").meta.at("clip"), "none");
  EXPECT_EQ(find_compressor("quant.rtn_sym").apply(layer, {}, "bits=3,clip=0").meta.at("clip"), "none");
  // clip=w weighs the search by E[x_j^2]: RTN's from mean_sq, GPTQ's from the Hessian's diagonal.
  const Vector<double> mean_sq = h.diagonal();
  const std::vector<float> importance(mean_sq.data(), mean_sq.data() + mean_sq.size());
  const Compressed rw = find_compressor("quant.rtn").apply(layer, {&h, &mean_sq, nullptr, 1000}, "bits=3,clip=w");
  EXPECT_EQ(find_compressor("quant.rtn").reconstruct(rw),
            dequantize(rtn(w, QuantSpec{3, 128, false}, kMseClip, "w", importance)));
  EXPECT_EQ(rw.meta.at("clip"), "mse, weighted by E[x^2]");
  GptqOptions clip_opt;
  clip_opt.act_order = true;
  clip_opt.clip = kMseClip;
  const Compressed gc = find_compressor("quant.gptq").apply(layer, calib, "bits=3,act_order,clip=1,damp=0.01");
  EXPECT_EQ(find_compressor("quant.gptq").reconstruct(gc), dequantize(gptq(w, h, QuantSpec{3, 128, false}, clip_opt)));
  EXPECT_EQ(gc.meta.at("clip"), "mse");
  clip_opt.clip_weighted = true;
  const Compressed gw = find_compressor("quant.gptq").apply(layer, calib, "bits=3,act_order,clip=w,damp=0.01");
  EXPECT_EQ(find_compressor("quant.gptq").reconstruct(gw), dequantize(gptq(w, h, QuantSpec{3, 128, false}, clip_opt)));
  EXPECT_EQ(gw.meta.at("clip"), "mse, weighted by H_jj");
  // Stored form equals the algorithm's output, bit for bit.
  const Compressed c = find_compressor("quant.rtn").apply(layer, {}, "bits=5,group=row,sym");
  EXPECT_EQ(find_compressor("quant.rtn").reconstruct(c), dequantize(rtn(w, QuantSpec{5, 0, true})));
}

TEST(Compressors, BadInputNamesLayerAndField) {
  const RowMatrix<float> w = heavy_tailed(16, 64, 16);
  const Matrix<double> h = correlated_hessian(64, 16);
  const Vector<double> mean_sq = h.diagonal(), mean_abs = mean_sq.cwiseSqrt();
  const LayerCalibration calib{&h, &mean_sq, &mean_abs, 256};
  const Layer layer{"blk.3.ffn_up.weight", &w};
  auto message = [](auto&& fn) -> std::string {
    try {
      fn();
    } catch (const Error& e) {
      return e.what();
    }
    return "(no error)";
  };
  auto expect_error = [&](auto&& fn, const std::string& needle) {
    const std::string m = message(fn);
    EXPECT_NE(m.find("blk.3.ffn_up.weight"), std::string::npos) << m;
    EXPECT_NE(m.find(needle), std::string::npos) << m;
  };
  for (const char* name : {"quant.rtn", "quant.rtn_sym", "quant.gptq", "quant.awq"}) {
    SCOPED_TRACE(name);
    const WeightCompressor& c = find_compressor(name);
    expect_error([&] { c.apply(layer, calib, "bits=4,frobnicate=1"); }, "unknown key 'frobnicate'");
    expect_error([&] { c.apply(layer, calib, "group=32"); }, "bits");
    expect_error([&] { c.apply(layer, calib, "bits=1"); }, "bits must be in [2, 8]");
    expect_error([&] { c.apply(layer, calib, "bits=9"); }, "bits must be in [2, 8]");
    expect_error([&] { c.apply(layer, calib, "bits=4294967300"); }, "bits must be in [2, 8]");
    expect_error([&] { c.apply(layer, calib, "bits=4,group=0"); }, "group");
    expect_error([&] { c.apply(layer, calib, "bits=4,group=abc"); }, "group");
    expect_error([&] { c.apply(layer, calib, "bits=4,sym,asym"); }, "both");
    expect_error([&] { c.cost(layer, "bits=x"); }, "bits");
    RowMatrix<float> bad = w;
    bad(3, 7) = std::nanf("");
    const Layer bad_layer{"blk.3.ffn_up.weight", &bad};
    expect_error([&] { c.apply(bad_layer, calib, "bits=4"); }, "(3, 7)");
    bad(3, 7) = std::numeric_limits<float>::infinity();
    expect_error([&] { c.apply(bad_layer, calib, "bits=4"); }, "non-finite");
  }
  const WeightCompressor& g = find_compressor("quant.gptq");
  expect_error([&] { g.apply(layer, {}, "bits=4"); }, "Hessian");
  expect_error([&] { g.apply(layer, calib, "bits=4,damp=-1"); }, "damp must be finite and > 0");
  expect_error([&] { g.apply(layer, calib, "bits=4,damp=lots"); }, "'damp' must be a number");
  expect_error([&] { g.apply(layer, calib, "bits=4,act_order=yes"); }, "act_order");
  expect_error([&] { find_compressor("quant.rtn").apply(layer, calib, "bits=4,damp=0.1"); }, "unknown key 'damp'");
  expect_error([&] { find_compressor("quant.rtn").apply(layer, calib, "bits=4,clip=yes"); },
               "clip takes no value, 0, 1 or w");
  expect_error([&] { g.apply(layer, calib, "bits=4,clip=2"); }, "clip takes no value, 0, 1 or w");
  expect_error([&] { find_compressor("quant.rtn").apply(layer, {}, "bits=4,clip=w"); }, "mean x^2");
  expect_error([&] { find_compressor("quant.awq").apply(layer, calib, "bits=4,clip=w"); }, "AWQ's clip");
  const Matrix<double> h_small = correlated_hessian(32, 1);
  expect_error([&] { g.apply(layer, {&h_small, nullptr, nullptr, 1}, "bits=4"); }, "Hessian is [32, 32]");
  Matrix<double> h_nan = h;
  h_nan(1, 2) = std::nan("");
  expect_error([&] { g.apply(layer, {&h_nan, nullptr, nullptr, 1}, "bits=4"); }, "non-finite");
  const WeightCompressor& a = find_compressor("quant.awq");
  expect_error([&] { a.apply(layer, {&h, &mean_sq, nullptr, 1}, "bits=4"); }, "mean |x|");
  const Vector<double> short_abs = mean_abs.head(10);
  expect_error([&] { a.apply(layer, {&h, &mean_sq, &short_abs, 1}, "bits=4"); }, "mean_abs has 10 entries");
  expect_error([&] { a.apply(layer, {&h_small, &mean_sq, &mean_abs, 1}, "bits=4"); }, "Hessian is [32, 32]");
  // A damaged stored form is refused, never read out of bounds.
  Compressed comp = find_compressor("quant.rtn").apply(layer, calib, "bits=3");
  comp.tensors["codes"] = Tensor(DType::i8, Shape{5});
  EXPECT_THROW(find_compressor("quant.rtn").reconstruct(comp), Error);
  comp = find_compressor("quant.rtn").apply(layer, calib, "bits=3");
  comp.tensors.erase("zeros");
  EXPECT_THROW(find_compressor("quant.rtn").reconstruct(comp), Error);
  comp = find_compressor("quant.rtn").apply(layer, calib, "bits=3");
  comp.meta["bits"] = 12;
  EXPECT_THROW(find_compressor("quant.rtn").reconstruct(comp), Error);
}

// ---- a real model ------------------------------------------------------------------------------

// stories260K's layers calibrated on 16 sequences of 256 tokens it samples itself.
class Stories : public ::testing::Test {
 protected:
  struct Data {
    std::unique_ptr<io::Model> file;
    std::unique_ptr<nn::LlamaModel> model;
    nn::Calibration calib;
  };
  static std::filesystem::path path() {
    return strata::testing::shared_data_dir() / "models/stories260K/stories260K.bin";
  }
  static const Data& data() {
    static const std::unique_ptr<Data> d = [] {
      auto out = std::make_unique<Data>();
      out->file = io::open_model(path());
      out->model = std::make_unique<nn::LlamaModel>(nn::LlamaModel::load(*out->file));
      const auto seqs = nn::sample_sequences(*out->model, 16, 256, 1, 42);
      size_t next = 0;
      nn::calibrate(
          *out->model,
          [&](std::vector<int32_t>& s) {
            if (next == seqs.size()) return false;
            s = seqs[next++];
            return true;
          },
          out->calib);
      return out;
    }();
    return *d;
  }
  void SetUp() override { STRATA_REQUIRE_FILE(path(), "shared data: ../shared/data/models/stories260K"); }

  // Summed relative output error over every linear layer of the blocks.
  struct Totals {
    double rtn = 0, gptq = 0, gptq_act = 0, awq = 0;
    int layers = 0, gptq_wins = 0, awq_not_worse = 0;
  };
  static Totals run(const QuantSpec& spec) {
    const Data& d = data();
    Totals t;
    for (const auto& name : d.model->linear_names()) {
      if (name.rfind("blk.", 0) != 0) continue;
      const RowMatrix<float> w = d.model->linear(name).dense_weight();
      const auto& st = d.calib.stats(name);
      const Matrix<double> h = st.hessian();
      const Vector<double> mean_abs = st.mean_abs(), mean_sq = st.mean_sq();
      const double r = output_error(w, dequantize(rtn(w, spec, name)), &h);
      const double g = output_error(w, dequantize(gptq(w, h, spec, {}, name)), &h);
      GptqOptions act;
      act.act_order = true;
      const double ga = output_error(w, dequantize(gptq(w, h, spec, act, name)), &h);
      const double a = output_error(w, dequantize(awq(w, mean_abs, &h, &mean_sq, spec, {}, name).q), &h);
      t.rtn += r;
      t.gptq += g;
      t.gptq_act += ga;
      t.awq += a;
      t.gptq_wins += g < r && ga < r;
      t.awq_not_worse += a <= r * (1 + 1e-4);
      ++t.layers;
    }
    return t;
  }
};

TEST_F(Stories, GptqBeatsRtnAndActOrderHelpsAt3And4Bits) {
  for (int bits : {3, 4}) {
    // 64 and 172 inputs: groups of 32 leave a ragged group of 12 in ffn_down.
    const Totals t = run(QuantSpec{bits, 32, false});
    SCOPED_TRACE(std::to_string(bits) + " bits");
    ASSERT_EQ(t.layers, 35);
    EXPECT_EQ(t.gptq_wins, t.layers) << "GPTQ (with and without act-order) below RTN on every layer";
    EXPECT_LT(t.gptq, 0.75 * t.rtn);
    EXPECT_LE(t.gptq_act, 1.02 * t.gptq) << "act-order helps or ties";
    EXPECT_EQ(t.awq_not_worse, t.layers);
    EXPECT_LT(t.awq, t.rtn);
    std::printf("stories260K, %d bits, groups of 32: summed output error RTN %.4f  GPTQ %.4f  GPTQ act-order %.4f  "
                "AWQ %.4f\n",
                bits, t.rtn, t.gptq, t.gptq_act, t.awq);
  }
}

// The clipping search weighted by E[x_j^2] lowers the output error of RTN and of act-order GPTQ on
// every kind of layer of a real model, summed over the blocks.
TEST_F(Stories, WeightedClipSearchLowersOutputError) {
  const Data& d = data();
  const QuantSpec spec{3, 32, false};
  double rtn_plain = 0, rtn_w = 0, gptq_plain = 0, gptq_w = 0;
  for (const auto& name : d.model->linear_names()) {
    if (name.rfind("blk.", 0) != 0) continue;
    const RowMatrix<float> w = d.model->linear(name).dense_weight();
    const auto& st = d.calib.stats(name);
    const Matrix<double> h = st.hessian();
    const Vector<double> mean_sq = st.mean_sq();
    const std::vector<float> importance(mean_sq.data(), mean_sq.data() + mean_sq.size());
    rtn_plain += output_error(w, dequantize(rtn(w, spec, name)), &h);
    rtn_w += output_error(w, dequantize(rtn(w, spec, kMseClip, name, importance)), &h);
    GptqOptions opt;
    opt.act_order = true;
    gptq_plain += output_error(w, dequantize(gptq(w, h, spec, opt, name)), &h);
    opt.clip = kMseClip;
    opt.clip_weighted = true;
    gptq_w += output_error(w, dequantize(gptq(w, h, spec, opt, name)), &h);
  }
  std::printf("stories260K, 3 bits, groups of 32: summed output error RTN %.4f -> %.4f, GPTQ act-order %.4f -> %.4f "
              "with the weighted clipping search\n",
              rtn_plain, rtn_w, gptq_plain, gptq_w);
  EXPECT_LT(rtn_w, 0.95 * rtn_plain);
  EXPECT_LT(gptq_w, 0.98 * gptq_plain);
}

}  // namespace
}  // namespace strata::compress::quant

// GPTQ into ggml blocks (ggml::gptq and the quant.ggml_gptq compressor), in every column order and
// with scale refit: the written bytes dequantize to exactly the values the loop assumed; an identity
// Hessian gives ggml's own bytes; a correlated Hessian gives a lower output error than ggml's imatrix
// rounding; shrinking the Hessian toward its diagonal is GPTQ on the shrunk Hessian; bad input is
// refused naming the tensor.
#include "strata/compress/ggml/gptq.hpp"

#include <gtest/gtest.h>

#include <Eigen/Cholesky>

#include <cmath>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include "strata/compress/compressor.hpp"
#include "strata/compress/ggml/quantize.hpp"
#include "strata/core/error.hpp"
#include "strata/nn/ggml_linear.hpp"
#include "test_util.hpp"

namespace strata::compress::ggml {
namespace {

// A heavy-tailed layer whose inputs have correlated channels and a few loud ones (test_util.hpp),
// so that error feedback has correlations to use; the imatrix is H's diagonal (mean x^2).
struct Problem {
  RowMatrix<float> w;
  Matrix<double> h;
  std::vector<float> imatrix;
};

Problem make_problem(int64_t rows, int64_t cols, uint64_t seed) {
  Problem p{strata::testing::heavy_tailed(rows, cols, seed), strata::testing::correlated_hessian(cols, seed + 1), {}};
  p.imatrix.resize(static_cast<std::size_t>(cols));
  for (int64_t j = 0; j < cols; ++j) p.imatrix[static_cast<std::size_t>(j)] = static_cast<float>(p.h(j, j));
  return p;
}

RowMatrix<float> dequantize_all(GgmlType t, const std::vector<std::byte>& bytes, int64_t rows, int64_t cols) {
  RowMatrix<float> out(rows, cols);
  const kernels::GgmlCodec& c = kernels::ggml_codec(t);
  const uint64_t rb = c.row_bytes(cols);
  for (int64_t r = 0; r < rows; ++r) c.dequantize_row(bytes.data() + static_cast<uint64_t>(r) * rb, cols, &out(r, 0));
  return out;
}

// tr((W - Q) H (W - Q)^T), the layer's output error on the calibration inputs.
double weighted_error(const RowMatrix<float>& w, const RowMatrix<float>& q, const Matrix<double>& h) {
  const Matrix<double> d = (w - q).cast<double>();
  return (d * h * d.transpose()).trace();
}

// Every column order, each without and with one scale refit pass.
std::vector<GgmlGptqOptions> variants() {
  std::vector<GgmlGptqOptions> out;
  for (const GptqOrder order : {GptqOrder::natural, GptqOrder::act_order, GptqOrder::act_order_in_blocks})
    for (const int refit : {0, 1}) {
      GgmlGptqOptions o;
      o.order = order;
      o.refit = refit;
      out.push_back(o);
    }
  return out;
}

std::string describe(const GgmlGptqOptions& o) {
  return std::string(order_name(o.order)) + " refit=" + std::to_string(o.refit);
}

class GgmlGptqTypes : public ::testing::TestWithParam<GgmlType> {};

TEST_P(GgmlGptqTypes, BytesDequantizeToTheAssumedValues) {
  const GgmlType t = GetParam();
  const Problem p = make_problem(12, 512, 11);
  for (const GgmlGptqOptions& o : variants()) {
    for (const bool with_imatrix : {true, false}) {
      SCOPED_TRACE(lower_name(t) + " " + describe(o) + (with_imatrix ? " imatrix" : ""));
      const auto imp = with_imatrix ? std::span<const float>(p.imatrix) : std::span<const float>();
      const GgmlGptqResult r = gptq(t, p.w, p.h, imp, o, "test.weight");
      ASSERT_EQ(r.blocks.size(), kernels::ggml_row_size(t, 512) * 12);
      const RowMatrix<float> deq = dequantize_all(t, r.blocks, 12, 512);
      // Bit-equal, not merely close.
      ASSERT_EQ(std::memcmp(deq.data(), r.values.data(), sizeof(float) * static_cast<std::size_t>(deq.size())), 0);
      // Error feedback moved weights: not every value is ggml's plain rounding.
      const std::vector<std::byte> plain = quantize(t, p.w.data(), 12, 512, imp);
      EXPECT_NE(plain, r.blocks);
    }
  }
}

TEST_P(GgmlGptqTypes, IdentityHessianGivesGgmlBytes) {
  const GgmlType t = GetParam();
  const Problem p = make_problem(6, 512, 12);
  const Matrix<double> identity = Matrix<double>::Identity(512, 512);
  for (const GgmlGptqOptions& o : variants()) {
    for (const bool with_imatrix : {true, false}) {
      SCOPED_TRACE(lower_name(t) + " " + describe(o) + (with_imatrix ? " imatrix" : ""));
      const auto imp = with_imatrix ? std::span<const float>(p.imatrix) : std::span<const float>();
      const GgmlGptqResult r = gptq(t, p.w, identity, imp, o, "test.weight");
      // The independent reference: ggml's quantizer on whole rows.
      EXPECT_EQ(r.blocks, quantize(t, p.w.data(), 6, 512, imp));
    }
  }
  // The type's defaults too, without the least-squares scales (and the refit passes on them), which
  // change bytes only where the row's error drops.
  GgmlGptqOptions d = gptq_defaults(t);
  const bool ls = d.ls_scales;
  d.ls_scales = false;
  d.refit = 0;
  const std::vector<std::byte> ggml_bytes = quantize(t, p.w.data(), 6, 512, p.imatrix);
  EXPECT_EQ(gptq(t, p.w, identity, p.imatrix, d, "test.weight").blocks, ggml_bytes);
  if (ls) {
    const RowMatrix<float> ggml_values = dequantize_all(t, ggml_bytes, 6, 512);
    EXPECT_LE(weighted_error(p.w, gptq(t, p.w, identity, p.imatrix).values, identity),
              weighted_error(p.w, ggml_values, identity) * (1 + 1e-6));
  }
}

TEST_P(GgmlGptqTypes, LowerOutputErrorThanImatrixRounding) {
  const GgmlType t = GetParam();
  const Problem p = make_problem(16, 512, 13);
  const RowMatrix<float> plain = dequantize_all(t, quantize(t, p.w.data(), 16, 512, p.imatrix), 16, 512);
  const double e_plain = weighted_error(p.w, plain, p.h);
  for (const GgmlGptqOptions& o : variants()) {
    const GgmlGptqResult r = gptq(t, p.w, p.h, p.imatrix, o, "test.weight");
    const double e = weighted_error(p.w, r.values, p.h);
    EXPECT_LT(e, 0.9 * e_plain) << lower_name(t) << " " << describe(o) << ": gptq " << e << ", imatrix rounding "
                                << e_plain;
  }
}

TEST_P(GgmlGptqTypes, ShrinkIsGptqOnTheHessianShrunkTowardItsDiagonal) {
  const GgmlType t = GetParam();
  const Problem p = make_problem(6, 512, 16);
  for (const double a : {0.3, 1.0}) {
    SCOPED_TRACE(lower_name(t) + " shrink " + std::to_string(a));
    // The reference: (1 - a) H + a diag(H), formed directly.
    Matrix<double> shrunk = p.h;
    for (int64_t i = 0; i < 512; ++i)
      for (int64_t j = 0; j < 512; ++j)
        if (i != j) shrunk(i, j) = p.h(i, j) * (1 - a);
    // The loop alone: the least-squares scales would move a = 1's bytes off ggml's.
    GgmlGptqOptions plain = gptq_defaults(t);
    plain.ls_scales = false;
    plain.refit = 0;
    GgmlGptqOptions o = plain;
    o.shrink = a;
    const GgmlGptqResult r = gptq(t, p.w, p.h, p.imatrix, o, "test.weight");
    EXPECT_EQ(r.blocks, gptq(t, p.w, shrunk, p.imatrix, plain, "test.weight").blocks);
    if (a == 1.0) {
      // A diagonal Hessian moves no error: ggml's own rounding.
      EXPECT_EQ(r.blocks, quantize(t, p.w.data(), 6, 512, p.imatrix));
    } else {
      EXPECT_NE(r.blocks, gptq(t, p.w, p.h, p.imatrix, plain, "test.weight").blocks);
    }
  }
}

// The damped Hessian the least-squares refit minimizes over (as the loop damps it, no shrink).
Matrix<double> damped(const Matrix<double>& h, double damp) {
  Matrix<double> hd = h;
  hd.diagonal().array() += damp * h.diagonal().mean();
  return hd;
}

// Per row: (w - q) H (w - q)^T.
std::vector<double> row_errors(const RowMatrix<float>& w, const RowMatrix<float>& q, const Matrix<double>& h) {
  std::vector<double> out;
  for (int64_t r = 0; r < w.rows(); ++r) {
    const Vector<double> d = (w.row(r) - q.row(r)).transpose().cast<double>();
    out.push_back(d.dot(h * d));
  }
  return out;
}

TEST_P(GgmlGptqTypes, LeastSquaresScalesNeverRaiseARowsObjective) {
  const GgmlType t = GetParam();
  const Problem p = make_problem(16, 512, 21);
  for (GgmlGptqOptions o : {gptq_defaults(t), variants()[0]}) {
    o.ls_scales = false;
    o.refit = 0;
    SCOPED_TRACE(lower_name(t) + " " + describe(o));
    const GgmlGptqResult plain = gptq(t, p.w, p.h, p.imatrix, o, "test.weight");
    o.ls_scales = true;
    const GgmlGptqResult r = gptq(t, p.w, p.h, p.imatrix, o, "test.weight");
    const RowMatrix<float> deq = dequantize_all(t, r.blocks, 16, 512);
    ASSERT_EQ(std::memcmp(deq.data(), r.values.data(), sizeof(float) * static_cast<std::size_t>(deq.size())), 0);
    const Matrix<double> hd = damped(p.h, o.damp);
    const std::vector<double> before = row_errors(p.w, plain.values, hd), after = row_errors(p.w, r.values, hd);
    double sum_before = 0, sum_after = 0;
    for (std::size_t i = 0; i < before.size(); ++i) {
      // The refit compares rows in double on the stored scales; the float dequantizer may round a
      // min type's d * q + m differently by an ulp, hence the relative slack.
      EXPECT_LE(after[i], before[i] * (1 + 1e-6)) << "row " << i;
      sum_before += before[i];
      sum_after += after[i];
    }
    // The scales ggml's search picked are not the least-squares ones under the correlated H.
    EXPECT_LT(sum_after, sum_before);
    EXPECT_NE(r.blocks, plain.blocks);
    // With refit passes: the last pass's scales are refitted.
    o.refit = 2;
    const GgmlGptqResult rounds = gptq(t, p.w, p.h, p.imatrix, o, "test.weight");
    const RowMatrix<float> deq_rounds = dequantize_all(t, rounds.blocks, 16, 512);
    ASSERT_EQ(std::memcmp(deq_rounds.data(), rounds.values.data(), sizeof(float) * static_cast<std::size_t>(deq_rounds.size())), 0);
  }
}

// The refit on its own, on bytes whose least-squares scales are known: w = q* + r with r
// H-orthogonal to every direction the scales (and mins) move q in, so the continuous optimum is q*'s
// own scales, which are binary16 (and, for the k-quants, ggml's integers under a binary16 d and dmin),
// so the format holds them exactly.
TEST_P(GgmlGptqTypes, LeastSquaresScalesReachAnExactlyRepresentableOptimum) {
  const GgmlType t = GetParam();
  const int64_t rows = 4, cols = 512, bs = kernels::ggml_block_size(t);
  const bool k = bs == 256, with_min = t == GgmlType::Q4_1 || t == GgmlType::Q5_1 || t == GgmlType::Q2_K ||
                                       t == GgmlType::Q4_K || t == GgmlType::Q5_K;
  const int64_t sub = (t == GgmlType::Q4_K || t == GgmlType::Q5_K || !k) ? 32 : 16, nsub = cols / sub;
  const Problem p = make_problem(rows, cols, 22);
  const std::vector<std::byte> start = quantize(t, p.w.data(), rows, cols, p.imatrix);
  // q*: every block's d (and dmin or m) scaled by 1.0625 and by 0.9375 for the min, through binary16.
  std::vector<std::byte> target = start;
  const uint64_t ts = kernels::ggml_type_size(t);
  for (uint64_t b = 0; b < target.size() / ts; ++b) {
    std::byte* blk = target.data() + b * ts;
    // The binary16 d (and the min's) sit first in the legacy blocks, last in q2_k, q3_k and q6_k,
    // first in q4_k and q5_k.
    const bool tail = t == GgmlType::Q2_K || t == GgmlType::Q3_K || t == GgmlType::Q6_K;
    const uint64_t at = tail ? ts - (t == GgmlType::Q2_K ? 4 : 2) : 0;
    for (int f = 0; f < (with_min ? 2 : 1); ++f) {
      uint16_t bits;
      std::memcpy(&bits, blk + at + 2 * f, 2);
      bits = f32_to_f16(f16_to_f32(f16{bits}) * (f == 0 ? 1.0625f : 0.9375f)).bits;
      std::memcpy(blk + at + 2 * f, &bits, 2);
    }
  }
  const RowMatrix<float> qstar = dequantize_all(t, target, rows, cols);
  RowMatrix<float> w(rows, cols);
  const RowMatrix<float> z = strata::testing::heavy_tailed(rows, cols, 23);
  for (int64_t r = 0; r < rows; ++r) {
    // The directions the scales move the row in: each sub-block's values, and its indicator for a min.
    Matrix<double> v = Matrix<double>::Zero(cols, nsub * (with_min ? 2 : 1));
    for (int64_t j = 0; j < nsub; ++j)
      for (int64_t i = j * sub; i < (j + 1) * sub; ++i) {
        v(i, j) = qstar(r, i);
        if (with_min) v(i, nsub + j) = 1;
      }
    const Vector<double> zr = 0.02 * z.row(r).transpose().cast<double>();
    const Matrix<double> g = v.transpose() * p.h * v;
    const Vector<double> resid = zr - v * g.ldlt().solve(v.transpose() * (p.h * zr));
    for (int64_t i = 0; i < cols; ++i) w(r, i) = static_cast<float>(qstar(r, i) + resid[i]);
  }
  std::vector<std::byte> bytes = start;
  EXPECT_EQ(detail::refit_scales(t, w, p.h, bytes), rows);
  const RowMatrix<float> got = dequantize_all(t, bytes, rows, cols);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t i = 0; i < cols; ++i)
      ASSERT_NEAR(got(r, i), qstar(r, i), 1e-6 * (std::fabs(qstar(r, i)) + 1e-3)) << "[" << r << ", " << i << "]";
  // The legacy types hold one parameter per role: the bytes themselves.
  if (!k) {
    EXPECT_EQ(bytes, target);
  }
}

INSTANTIATE_TEST_SUITE_P(Types, GgmlGptqTypes,
                         ::testing::Values(GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::Q5_0, GgmlType::Q5_1,
                                           GgmlType::Q8_0, GgmlType::IQ4_NL, GgmlType::Q2_K, GgmlType::Q3_K,
                                           GgmlType::Q4_K, GgmlType::Q5_K, GgmlType::Q6_K),
                         [](const ::testing::TestParamInfo<GgmlType>& info) { return lower_name(info.param); });

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

// With an identity Hessian no error moves and the codes are ggml's; each block's least-squares scale
// is then sum(w v) / sum(v v), v its levels. The refit writes those, in binary16, into ggml's bytes
// for a row where that lowers the row's squared error, and leaves the row as ggml wrote it otherwise.
TEST(GgmlGptq, LeastSquaresScalesUnderAnIdentityHessian) {
  const int64_t rows = 6, cols = 512;
  const Matrix<double> identity = Matrix<double>::Identity(cols, cols);
  for (const GgmlType t : {GgmlType::Q4_0, GgmlType::Q5_0, GgmlType::Q8_0, GgmlType::IQ4_NL}) {
    SCOPED_TRACE(lower_name(t));
    const Problem p = make_problem(rows, cols, 24);
    GgmlGptqOptions o = gptq_defaults(t);
    o.ls_scales = true;
    const GgmlGptqResult r = gptq(t, p.w, identity, p.imatrix, o, "test.weight");
    const std::vector<std::byte> ggml_bytes = quantize(t, p.w.data(), rows, cols, p.imatrix);
    const RowMatrix<float> ggml_values = dequantize_all(t, ggml_bytes, rows, cols);
    // The reference: the binary16 d sits first in each of these blocks.
    std::vector<std::byte> expected = ggml_bytes, candidate = ggml_bytes;
    const uint64_t ts = kernels::ggml_type_size(t), rb = kernels::ggml_row_size(t, cols);
    for (int64_t b = 0; b < rows * cols / 32; ++b) {
      uint16_t bits;
      std::memcpy(&bits, candidate.data() + static_cast<uint64_t>(b) * ts, 2);
      const double d = f16_to_f32(f16{bits});
      double wv = 0, vv = 0;
      for (int64_t i = 0; i < 32; ++i) {
        const int64_t at = b * 32 + i;
        const double v = d != 0 ? ggml_values.data()[at] / d : 0;
        wv += p.w.data()[at] * v;
        vv += v * v;
      }
      if (vv == 0) continue;
      bits = f32_to_f16(static_cast<float>(wv / vv)).bits;
      std::memcpy(candidate.data() + static_cast<uint64_t>(b) * ts, &bits, 2);
    }
    const RowMatrix<float> cand_values = dequantize_all(t, candidate, rows, cols);
    const std::vector<double> e_ggml = row_errors(p.w, ggml_values, identity), e_cand = row_errors(p.w, cand_values, identity);
    int better = 0;
    for (int64_t row = 0; row < rows; ++row)
      if (e_cand[static_cast<std::size_t>(row)] < e_ggml[static_cast<std::size_t>(row)]) {
        ++better;
        std::memcpy(expected.data() + static_cast<uint64_t>(row) * rb, candidate.data() + static_cast<uint64_t>(row) * rb, rb);
      }
    EXPECT_EQ(r.blocks, expected);
    EXPECT_GT(better, 0);
  }
}

TEST(GgmlGptq, BadInputNamesTheTensor) {
  const Problem p = make_problem(4, 96, 14);
  // 96 columns are whole Q4_0 blocks but not whole Q4_K super-blocks.
  std::string msg = error_of([&] { gptq(GgmlType::Q4_K, p.w, p.h, p.imatrix, {}, "blk.3.ffn_down.weight"); });
  EXPECT_NE(msg.find("blk.3.ffn_down.weight"), std::string::npos) << msg;
  EXPECT_NE(msg.find("q4_k"), std::string::npos) << msg;
  const RowMatrix<float> odd = p.w.leftCols(80);
  msg = error_of([&] { gptq(GgmlType::Q4_0, odd, p.h.topLeftCorner(80, 80), {}, {}, "blk.0.attn_q.weight"); });
  EXPECT_NE(msg.find("blk.0.attn_q.weight"), std::string::npos) << msg;
  // A Hessian of the wrong size, a bad imatrix, a non-finite weight, a type it cannot write.
  EXPECT_THROW(gptq(GgmlType::Q4_0, p.w, p.h.topLeftCorner(64, 64), {}, {}, "t"), Error);
  std::vector<float> bad_imp = p.imatrix;
  bad_imp[5] = -1;
  EXPECT_THROW(gptq(GgmlType::Q4_0, p.w, p.h, bad_imp, {}, "t"), Error);
  EXPECT_THROW(gptq(GgmlType::Q4_0, p.w, p.h, std::span<const float>(p.imatrix).first(32), {}, "t"), Error);
  RowMatrix<float> nan_w = p.w;
  nan_w(1, 2) = std::nanf("");
  msg = error_of([&] { gptq(GgmlType::Q4_0, nan_w, p.h, {}, {}, "blk.1.attn_k.weight"); });
  EXPECT_NE(msg.find("blk.1.attn_k.weight"), std::string::npos) << msg;
  EXPECT_THROW(gptq(GgmlType::F16, p.w, p.h, {}, {}, "t"), Error);
  GgmlGptqOptions o;
  o.damp = -1;
  EXPECT_THROW(gptq(GgmlType::Q4_0, p.w, p.h, {}, o, "t"), Error);
  o = {};
  o.refit = kMaxGptqRefit + 1;
  msg = error_of([&] { gptq(GgmlType::Q4_0, p.w, p.h, {}, o, "blk.4.attn_v.weight"); });
  EXPECT_NE(msg.find("refit"), std::string::npos) << msg;
  EXPECT_NE(msg.find("blk.4.attn_v.weight"), std::string::npos) << msg;
  o.refit = -1;
  EXPECT_THROW(gptq(GgmlType::Q4_0, p.w, p.h, {}, o, "t"), Error);
  for (const double shrink : {-0.1, 1.5, static_cast<double>(std::nanf(""))}) {
    o = {};
    o.shrink = shrink;
    msg = error_of([&] { gptq(GgmlType::Q4_0, p.w, p.h, {}, o, "blk.5.ffn_up.weight"); });
    EXPECT_NE(msg.find("shrink"), std::string::npos) << msg;
    EXPECT_NE(msg.find("blk.5.ffn_up.weight"), std::string::npos) << msg;
  }
  EXPECT_THROW(parse_order("random"), Error);
  for (const GptqOrder order : {GptqOrder::natural, GptqOrder::act_order, GptqOrder::act_order_in_blocks})
    EXPECT_EQ(parse_order(order_name(order)), order);
}

TEST(GgmlGptqCompressor, RunsAndWritesAsTheGgmlType) {
  const Problem p = make_problem(8, 256, 15);
  const WeightCompressor& c = find_compressor("quant.ggml_gptq");
  EXPECT_TRUE(c.needs_hessian());
  Vector<double> ms(256);
  for (int64_t j = 0; j < 256; ++j) ms[j] = p.imatrix[static_cast<std::size_t>(j)];
  const LayerCalibration calib{&p.h, &ms, nullptr, 2048};
  const Layer layer{"blk.0.ffn_up.weight", &p.w};
  const Compressed comp = c.apply(layer, calib, "q3_k,damp=0.02,act_order=1,refit=1");
  EXPECT_EQ(static_cast<uint64_t>(c.cost(layer, "q3_k,damp=0.02,act_order=1,refit=1").bytes), comp.stored_bytes());
  EXPECT_EQ(comp.stored_bytes(), kernels::ggml_row_size(GgmlType::Q3_K, 256) * 8);
  // Written to GGUF as the ggml type, run as the ggml blocks.
  const GgufTensorData data = gguf_tensor_data(comp);
  EXPECT_EQ(data.type, GgmlType::Q3_K);
  const auto lin = c.to_linear(comp);
  EXPECT_NE(dynamic_cast<const nn::GgmlLinear*>(lin.get()), nullptr);
  // The same blocks as the plain function with the same settings.
  GgmlGptqOptions o = gptq_defaults(GgmlType::Q3_K);
  o.damp = 0.02;
  o.order = GptqOrder::act_order;
  o.refit = 1;
  EXPECT_EQ(data.bytes, gptq(GgmlType::Q3_K, p.w, p.h, p.imatrix, o, "x").blocks);
  // A knob naming only the type runs the type's defaults; order= names the column order.
  for (const GgmlType t : {GgmlType::Q4_0, GgmlType::IQ4_NL, GgmlType::Q2_K, GgmlType::Q3_K}) {
    EXPECT_EQ(gguf_tensor_data(c.apply(layer, calib, lower_name(t))).bytes, gptq(t, p.w, p.h, p.imatrix).blocks)
        << lower_name(t);
  }
  o = gptq_defaults(GgmlType::Q2_K);
  o.order = GptqOrder::act_order_in_blocks;
  o.refit = 2;
  EXPECT_EQ(gguf_tensor_data(c.apply(layer, calib, "q2_k,order=act_block,refit=2")).bytes,
            gptq(GgmlType::Q2_K, p.w, p.h, p.imatrix, o, "x").blocks);
  // shrink= and ls_scales= reach the function.
  o = gptq_defaults(GgmlType::Q4_0);
  o.ls_scales = true;
  o.shrink = 0.25;
  EXPECT_EQ(gguf_tensor_data(c.apply(layer, calib, "q4_0,shrink=0.25,ls_scales=1")).bytes,
            gptq(GgmlType::Q4_0, p.w, p.h, p.imatrix, o, "x").blocks);
  EXPECT_EQ(gguf_tensor_data(c.apply(layer, calib, "q4_0,ls_scales=0")).bytes,
            gptq(GgmlType::Q4_0, p.w, p.h, p.imatrix).blocks);
  for (const char* bad : {"q4_0,ls_scales=2", "q4_0,ls_scales=yes", "q4_0,shrink=1.5"}) {
    const std::string m = error_of([&] { c.apply(layer, calib, bad); });
    EXPECT_NE(m.find(std::string(bad).find("ls_") != std::string::npos ? "ls_scales" : "shrink"), std::string::npos)
        << bad << ": " << m;
    EXPECT_NE(m.find("blk.0.ffn_up.weight"), std::string::npos) << bad << ": " << m;
  }
  // Bad knobs and a row that is not whole super-blocks, refused naming the layer.
  EXPECT_THROW(c.apply(layer, calib, "q3_k,bogus=1"), Error);
  EXPECT_THROW(c.apply(layer, calib, "q3_k+imatrix"), Error);
  EXPECT_THROW(c.apply(layer, calib, "q3_k,order=sideways"), Error);
  EXPECT_THROW(c.apply(layer, calib, "q3_k,refit=9"), Error);
  const RowMatrix<float> narrow = p.w.leftCols(224);
  const Matrix<double> hn = p.h.topLeftCorner(224, 224);
  const Vector<double> msn = ms.head(224);
  const std::string msg =
      error_of([&] { c.apply(Layer{"blk.2.attn_v.weight", &narrow}, {&hn, &msn, nullptr, 2048}, "q4_k"); });
  EXPECT_NE(msg.find("blk.2.attn_v.weight"), std::string::npos) << msg;
}

}  // namespace
}  // namespace strata::compress::ggml

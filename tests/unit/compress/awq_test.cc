// AWQ as the paper runs it: the scale exponent searched per group of layers that read one input (on
// the group's joint output error), the clipping search, and the scales folded into what precedes the
// group, checked against brute force and, on stories260K, against the unfolded model's function.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <limits>
#include <filesystem>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "strata/compress/compressor.hpp"
#include "strata/compress/quant/quant.hpp"
#include "strata/io/model.hpp"
#include "strata/nn/calibration.hpp"
#include "strata/nn/eval.hpp"
#include "strata/nn/llama.hpp"
#include "test_util.hpp"

namespace strata::compress::quant {
namespace {

using strata::testing::correlated_hessian;
using strata::testing::heavy_tailed;

// tr(D H D^T) in double, straight from the definition.
double trace_error(const RowMatrix<float>& w, const RowMatrix<float>& w_hat, const Matrix<double>& h) {
  const Matrix<double> d = (w - w_hat).cast<double>();
  return (d * h * d.transpose()).trace();
}

// AWQ's scales for one alpha written out: mean|x|^alpha (floored at 1e-6 of the largest), divided by
// sqrt(max * min), rounded to f16.
Vector<float> scales_for(const Vector<double>& mean_abs, double alpha) {
  const double floor = 1e-6 * mean_abs.maxCoeff();
  Vector<double> s = mean_abs.cwiseMax(floor).array().pow(alpha).matrix();
  s /= std::sqrt(s.maxCoeff() * s.minCoeff());
  Vector<float> out(s.size());
  for (int64_t j = 0; j < s.size(); ++j) out[j] = f16_to_f32(f32_to_f16(static_cast<float>(s[j])));
  return out;
}

Vector<float> as_float(const std::vector<f16>& s16) {
  Vector<float> s(static_cast<int64_t>(s16.size()));
  for (size_t j = 0; j < s16.size(); ++j) s[static_cast<int64_t>(j)] = f16_to_f32(s16[j]);
  return s;
}

// The group search by brute force: every alpha of the grid, every matrix quantized in full (no row
// sample), the summed error in double; the chosen alpha must be the argmin (or tie with it to float
// precision, since the search scores in single precision).
TEST(AwqGroup, SearchPicksTheAlphaWithTheLeastJointErrorOfTheGroup) {
  const int64_t cols = 96;
  const Matrix<double> h = correlated_hessian(cols, 5);
  const Vector<double> mean_abs = h.diagonal().cwiseSqrt() * 0.8;
  const RowMatrix<float> a = heavy_tailed(24, cols, 6), b = heavy_tailed(8, cols, 7), c = heavy_tailed(40, cols, 8);
  const std::vector<const RowMatrix<float>*> group = {&a, &b, &c};
  const QuantSpec spec{3, 32, false};
  AwqOptions opt;
  opt.search_rows = 0;
  const AwqScales got = awq_search_scales(group, mean_abs, &h, nullptr, spec, opt, "blk.0.qkv");

  double best = std::numeric_limits<double>::infinity(), best_alpha = -1, err_at_chosen = -1;
  std::vector<double> per_alpha;
  for (int i = 0; i < opt.grid; ++i) {
    const double alpha = static_cast<double>(i) / opt.grid;
    const Vector<float> s = scales_for(mean_abs, alpha);
    double num = 0, denom = 0;
    for (const RowMatrix<float>* w : group) {
      const RowMatrix<float> back = dequantize(rtn(RowMatrix<float>(*w * s.asDiagonal()), spec)) *
                                    s.cwiseInverse().asDiagonal();
      num += trace_error(*w, back, h);
      denom += trace_error(*w, RowMatrix<float>::Zero(w->rows(), cols), h);
    }
    per_alpha.push_back(num / denom);
    if (num / denom < best) {
      best = num / denom;
      best_alpha = alpha;
    }
    if (std::abs(alpha - got.alpha) < 1e-12) err_at_chosen = num / denom;
  }
  ASSERT_GE(err_at_chosen, 0);
  EXPECT_NEAR(err_at_chosen, best, 1e-5 * best) << "chosen alpha " << got.alpha << ", best " << best_alpha;
  EXPECT_NEAR(got.error, err_at_chosen, 1e-4 * err_at_chosen);
  EXPECT_LT(got.error, per_alpha[0]) << "scaling should beat plain RTN on correlated inputs with loud channels";
  EXPECT_EQ(as_float(got.scales), scales_for(mean_abs, got.alpha));
}

// A group of one is the per-tensor search the registry runs: the same alpha and scales.
TEST(AwqGroup, GroupOfOneIsThePerTensorSearch) {
  const Matrix<double> h = correlated_hessian(64, 9);
  const Vector<double> mean_abs = h.diagonal().cwiseSqrt();
  const RowMatrix<float> w = heavy_tailed(48, 64, 10);
  const QuantSpec spec{4, 32, false};
  const RowMatrix<float>* one[] = {&w};
  const AwqScales g = awq_search_scales(one, mean_abs, &h, nullptr, spec);
  const AwqResult t = awq(w, mean_abs, &h, nullptr, spec);
  EXPECT_EQ(g.alpha, t.alpha);
  EXPECT_EQ(as_float(g.scales), as_float(t.q.channel_scales));
  EXPECT_EQ(dequantize(rtn(scale_columns(w, g.scales), spec)), dequantize(QuantizedMatrix{
                                                                    t.q.rows, t.q.cols, t.q.spec, t.q.codes,
                                                                    t.q.scales, t.q.zeros, {}}));
}

// The clipping search by brute force on a small layer: for every row and group, every candidate bound
// m = max|w| (1 - i / 20), i < 10, clamps the scaled weights, fits RTN on the clamped group and scores
// d^T H'_gg d with H' = diag(1/s) H diag(1/s); the chosen fit must reach the least score.
TEST(AwqClip, EachGroupTakesTheCandidateWithTheLeastOutputError) {
  const int64_t rows = 5, cols = 40;
  const RowMatrix<float> w = heavy_tailed(rows, cols, 11);
  const Matrix<double> h = correlated_hessian(cols, 12);
  const std::vector<f16> s16 = awq_channel_scales(h.diagonal().cwiseSqrt(), 0.5);
  const Vector<float> s = as_float(s16);
  const AwqClip clip;
  for (const QuantSpec& spec : {QuantSpec{3, 16, false}, QuantSpec{3, 16, true}, QuantSpec{2, 0, false}}) {
    SCOPED_TRACE(spec.knob());
    const QuantizedMatrix q = awq_quantize(w, s16, h, spec, &clip, "blk.1.ffn_gate.weight");
    const RowMatrix<float> got = dequantize(q);
    const RowMatrix<float> ws = w * s.asDiagonal();
    Matrix<double> hs = h;
    for (int64_t i = 0; i < cols; ++i)
      for (int64_t j = 0; j < cols; ++j) hs(i, j) /= static_cast<double>(s[i]) * s[j];
    const int64_t g = spec.group_size(cols);
    for (int64_t r = 0; r < rows; ++r) {
      for (int64_t c0 = 0; c0 < cols; c0 += g) {
        const int64_t n = std::min(cols, c0 + g) - c0;
        const Matrix<double> hg = hs.block(c0, c0, n, n);
        const auto score = [&](const Vector<double>& d) { return d.dot(hg * d); };
        float top = 0;
        for (int64_t j = 0; j < n; ++j) top = std::max(top, std::abs(ws(r, c0 + j)));
        double best = std::numeric_limits<double>::infinity(), plain = 0;
        for (int i = 0; i < 10; ++i) {
          const float m = top * static_cast<float>(1.0 - i / 20.0);
          std::vector<float> x(static_cast<size_t>(n));
          for (int64_t j = 0; j < n; ++j) x[static_cast<size_t>(j)] = std::clamp(ws(r, c0 + j), -m, m);
          const GroupParams p = fit_group(x.data(), n, 1, spec);
          Vector<double> d(n);
          for (int64_t j = 0; j < n; ++j)
            d[j] = ws(r, c0 + j) - dequantize_value(quantize_value(x[static_cast<size_t>(j)], p, spec.max_code()), p);
          best = std::min(best, score(d));
          if (i == 0) plain = score(d);
        }
        Vector<double> d(n);
        for (int64_t j = 0; j < n; ++j) d[j] = static_cast<double>(ws(r, c0 + j)) - got(r, c0 + j);
        EXPECT_NEAR(score(d), best, 1e-9 * best + 1e-30) << "row " << r << ", group at " << c0;
        EXPECT_LE(score(d), plain * (1 + 1e-12));
      }
    }
  }
}

TEST(AwqFold, FoldsDivideTheNormAndThePreviousRows) {
  const std::vector<f16> s16 = {f32_to_f16(2.0f), f32_to_f16(0.5f), f32_to_f16(4.0f)};
  Vector<float> norm(3);
  norm << 1.0f, 3.0f, -8.0f;
  fold_scales_into_norm(norm, s16, "blk.0.attn_norm.weight");
  EXPECT_EQ(norm, (Vector<float>(3) << 0.5f, 6.0f, -2.0f).finished());
  RowMatrix<float> prev(3, 2);
  prev << 2, 4, 1, 1, 8, -4;
  fold_scales_into_rows(prev, s16, "blk.0.ffn_up.weight");
  EXPECT_EQ(prev, (RowMatrix<float>(3, 2) << 1, 2, 2, 2, 2, -1).finished());
  const RowMatrix<float> w = RowMatrix<float>::Ones(2, 3);
  EXPECT_EQ(scale_columns(w, s16), (RowMatrix<float>(2, 3) << 2, 0.5f, 4, 2, 0.5f, 4).finished());
  // Wrong sizes and non-positive scales name the tensor.
  const auto message = [](auto&& fn) {
    try {
      fn();
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string("(no error)");
  };
  Vector<float> short_norm(2);
  std::string m = message([&] { fold_scales_into_norm(short_norm, s16, "blk.4.ffn_norm.weight"); });
  EXPECT_NE(m.find("blk.4.ffn_norm.weight"), std::string::npos) << m;
  RowMatrix<float> wide(2, 3);
  m = message([&] { fold_scales_into_rows(wide, s16, "blk.4.attn_v.weight"); });
  EXPECT_NE(m.find("blk.4.attn_v.weight"), std::string::npos) << m;
  const std::vector<f16> zero = {f32_to_f16(1.0f), f32_to_f16(0.0f), f32_to_f16(1.0f)};
  m = message([&] { fold_scales_into_norm(norm, zero, "blk.5.attn_norm.weight"); });
  EXPECT_NE(m.find("blk.5.attn_norm.weight"), std::string::npos) << m;
  EXPECT_NE(m.find("scale 1"), std::string::npos) << m;
}

// ---- stories260K: the folded model computes the unfolded model's function ------------------------

std::filesystem::path stories_path() {
  return strata::testing::shared_data_dir() / "models/stories260K/stories260K.bin";
}

// A model file whose named tensors are replaced (the folded norms), everything else read through.
class PatchedModel final : public io::Model {
 public:
  PatchedModel(const io::Model& base, std::map<std::string, Vector<float>> vectors)
      : base_(base), vectors_(std::move(vectors)) {
    path_ = base.path();
    tensors_ = base.tensors();
    config_ = base.config();
    metadata_ = base.metadata();
  }
  io::FileFormat format() const override { return base_.format(); }
  std::span<const std::byte> raw(const io::TensorInfo& t) const override { return base_.raw(t); }
  Tensor to_f32(const io::TensorInfo& t) const override {
    const auto it = vectors_.find(t.name);
    if (it == vectors_.end()) return base_.to_f32(t);
    Tensor out(DType::f32, t.shape);
    std::memcpy(out.raw(), it->second.data(), static_cast<size_t>(it->second.size()) * sizeof(float));
    return out;
  }

 private:
  const io::Model& base_;
  std::map<std::string, Vector<float>> vectors_;
};

class AwqStories : public ::testing::Test {
 protected:
  struct Data {
    std::unique_ptr<io::Model> file;
    std::unique_ptr<nn::LlamaModel> model;
    nn::Calibration calib;
    std::vector<int32_t> eval;
  };
  static const Data& data() {
    static const std::unique_ptr<Data> d = [] {
      auto out = std::make_unique<Data>();
      out->file = io::open_model(stories_path());
      out->model = std::make_unique<nn::LlamaModel>(nn::LlamaModel::load(*out->file));
      const auto seqs = nn::sample_sequences(*out->model, 16, 128, 1, 7);
      size_t next = 0;
      nn::calibrate(*out->model, [&](std::vector<int32_t>& s) {
        if (next == seqs.size()) return false;
        s = seqs[next++];
        return true;
      }, out->calib);
      out->eval = nn::sample_sequences(*out->model, 1, 96, 1, 901)[0];
      return out;
    }();
    return *d;
  }
  void SetUp() override { STRATA_REQUIRE_FILE(stories_path(), "shared data: ../shared/data/models/stories260K"); }

  static RowMatrix<float> logits(const nn::LlamaModel& m) {
    const auto& tokens = data().eval;
    RowMatrix<float> out(static_cast<int64_t>(tokens.size()), m.config().vocab_size);
    nn::LlamaSession s(m, static_cast<int64_t>(tokens.size()));
    s.forward(tokens, out.data(), nn::Logits::all);
    return out;
  }

  // One AWQ group of a block: the layers that read one input, and what produces that input.
  struct Group {
    std::vector<std::string> layers;
    std::string norm;      // an RMSNorm weight before the group, or
    std::string previous;  // the linear layer whose outputs are the group's inputs
  };
  static std::vector<Group> groups(int b) {
    const std::string p = "blk." + std::to_string(b) + ".";
    std::vector<Group> out = {{{p + "attn_q.weight", p + "attn_k.weight", p + "attn_v.weight"}, p + "attn_norm.weight", ""},
                              {{p + "ffn_gate.weight", p + "ffn_up.weight"}, p + "ffn_norm.weight", ""},
                              {{p + "ffn_down.weight"}, "", p + "ffn_up.weight"}};
    // v_proj folds into o_proj only when every attention head has its own value head (as in AWQ).
    const auto& c = data().model->config();
    if (c.n_kv_heads == c.n_heads) out.push_back({{p + "attn_output.weight"}, "", p + "attn_v.weight"});
    return out;
  }

  // The model with every group of every block scaled by AWQ's searched scales and folded, in the
  // paper's order: first every group's scales are searched (on the original weights and inputs) and
  // folded (the norm g / s, the previous layer's rows / s), then every layer W (its rows already
  // divided where it precedes a group) becomes W diag(s), or with `spec` the clipped RTN of it,
  // dequantized. `scales_of` gets the scales each layer's input was divided by; the errors, AWQ's
  // group result and RTN summed over the layers.
  static nn::LlamaModel folded(const QuantSpec* spec, std::map<std::string, std::vector<f16>>* scales_of,
                               double* awq_error = nullptr, double* rtn_error = nullptr) {
    const Data& d = data();
    std::map<std::string, RowMatrix<float>> weights;
    for (const auto& name : d.model->linear_names()) weights[name] = d.model->linear(name).dense_weight();
    std::map<std::string, Vector<float>> norms;
    const AwqClip clip;
    const QuantSpec search_spec = spec != nullptr ? *spec : QuantSpec{3, 32, false};
    for (int b = 0; b < d.model->config().n_layers; ++b) {
      const auto& blk = d.model->blocks()[static_cast<size_t>(b)];
      for (const Group& g : groups(b)) {
        const nn::InputStats& st = d.calib.stats(g.layers[0]);
        const Matrix<double> h = st.hessian();
        std::vector<RowMatrix<float>> originals;
        for (const auto& name : g.layers) originals.push_back(d.model->linear(name).dense_weight());
        std::vector<const RowMatrix<float>*> ws;
        for (const auto& w : originals) ws.push_back(&w);
        const AwqGroupResult r = awq_group(ws, st.mean_abs(), h, search_spec, {}, &clip, g.layers[0]);
        const Vector<float> s = as_float(r.scales.scales);
        for (size_t i = 0; i < g.layers.size(); ++i) {
          if (awq_error != nullptr) {
            *awq_error += output_error(originals[i], dequantize(r.q[i]) * s.cwiseInverse().asDiagonal(), &h);
            *rtn_error += output_error(originals[i], dequantize(rtn(originals[i], search_spec)), &h);
          }
          (*scales_of)[g.layers[i]] = r.scales.scales;
        }
        if (!g.norm.empty()) {
          Vector<float> n = g.norm.find("ffn_norm") != std::string::npos ? blk.ffn_norm : blk.attn_norm;
          fold_scales_into_norm(n, r.scales.scales, g.norm);
          norms[g.norm] = n;
        } else {
          fold_scales_into_rows(weights.at(g.previous), r.scales.scales, g.previous);
        }
      }
    }
    for (auto& [name, w] : weights) {
      if (name.rfind("blk.", 0) != 0) continue;
      // A layer in no group (o_proj under grouped-query attention) keeps its input: unit scales.
      const std::vector<f16>& s16 =
          scales_of->try_emplace(name, static_cast<size_t>(w.cols()), f32_to_f16(1.0f)).first->second;
      if (spec == nullptr) {
        w = scale_columns(w, s16, name);
      } else {
        const Matrix<double> h = d.calib.stats(name).hessian();
        w = dequantize(awq_quantize(w, s16, h, *spec, &clip, name));
      }
    }
    PatchedModel patched(*d.file, norms);
    nn::LlamaModel m = nn::LlamaModel::load(patched);
    for (const auto& [name, w] : weights)
      if (name.rfind("blk.", 0) == 0) m.set_linear(name, std::make_shared<nn::DenseLinear>(w));
    return m;
  }
};

TEST_F(AwqStories, FoldedScalesComputeTheSameFunction) {
  std::map<std::string, std::vector<f16>> scales_of;
  const nn::LlamaModel m = folded(nullptr, &scales_of);
  // The scales are real AWQ scales, far from 1, or the test would prove nothing.
  float spread = 1;
  for (const auto& [name, s16] : scales_of) {
    const Vector<float> s = as_float(s16);
    spread = std::max(spread, s.maxCoeff() / s.minCoeff());
  }
  EXPECT_GT(spread, 1.5f);
  const RowMatrix<float> want = logits(*data().model), got = logits(m);
  const float tol = 1e-4f * want.cwiseAbs().maxCoeff();
  EXPECT_LT((got - want).cwiseAbs().maxCoeff(), tol) << "largest logit " << want.cwiseAbs().maxCoeff();
  std::printf("stories260K, folded AWQ scales (max/min up to %.1f): largest logit difference %.3g of %.3g\n", spread,
              (got - want).cwiseAbs().maxCoeff(), want.cwiseAbs().maxCoeff());
}

// The folded quantized model (codes of W diag(s), no runtime scale) computes what the stored-scale
// form computes (dequant(codes) diag(s)^-1 on the unscaled input), and AWQ's groups beat RTN.
TEST_F(AwqStories, FoldedQuantizedModelEqualsStoredScalesAndBeatsRtn) {
  const QuantSpec spec{3, 32, false};
  std::map<std::string, std::vector<f16>> scales_of;
  double awq_error = 0, rtn_error = 0;
  const nn::LlamaModel folded_q = folded(&spec, &scales_of, &awq_error, &rtn_error);
  // The same codes with the scales applied at run time instead: on the original norms, each layer is
  // dequant(codes) diag(s)^-1, and a layer that precedes a group gets its rows multiplied back by that
  // group's scales. Computes the folded model's function, the folding done the other way round.
  nn::LlamaModel stored = data().model->clone();
  for (const auto& name : data().model->linear_names()) {
    if (name.rfind("blk.", 0) != 0) continue;
    RowMatrix<float> w = folded_q.linear(name).dense_weight() * as_float(scales_of.at(name)).cwiseInverse().asDiagonal();
    const std::string blk = name.substr(0, name.find('.', 4) + 1);
    for (const auto& [layer, next] : {std::pair{"ffn_up.weight", "ffn_down.weight"}, std::pair{"attn_v.weight", "attn_output.weight"}})
      if (name == blk + layer && scales_of.at(blk + next).size() == static_cast<size_t>(w.rows()))
        w = as_float(scales_of.at(blk + next)).asDiagonal() * w;
    stored.set_linear(name, std::make_shared<nn::DenseLinear>(w));
  }
  const RowMatrix<float> a = logits(folded_q), b = logits(stored);
  EXPECT_LT((a - b).cwiseAbs().maxCoeff(), 1e-4f * b.cwiseAbs().maxCoeff());
  std::printf("stories260K, 3 bits, groups of 32: summed layer output error over the blocks: AWQ (group alpha, "
              "clip) %.4f, RTN %.4f\n",
              awq_error, rtn_error);
  EXPECT_LT(awq_error, rtn_error);
}

}  // namespace
}  // namespace strata::compress::quant

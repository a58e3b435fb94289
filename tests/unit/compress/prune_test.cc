// Pruning: exact masks (per-row counts, N:M groups), the stored form and its byte count, SparseGPT's
// algebra (sparsity 0, dead inputs), the error order SparseGPT < Wanda < magnitude on real layers
// (stories260K calibrated on its own samples), FFN-neuron and block removal on the whole model, and
// bad input.
#include "strata/compress/prune/prune.hpp"

#include <gtest/gtest.h>

#include <Eigen/LU>
#include <cmath>
#include <functional>
#include <memory>
#include <numeric>
#include <random>

#include "strata/compress/compressor.hpp"
#include "strata/io/model.hpp"
#include "strata/nn/calibration.hpp"
#include "strata/nn/eval.hpp"
#include "strata/nn/llama.hpp"
#include "test_util.hpp"

namespace strata::compress::prune {
namespace {

using strata::testing::correlated_hessian;
using strata::testing::heavy_tailed;

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "(no error)";
}

// ---- patterns and masks --------------------------------------------------------------------------

TEST(Pattern, CountsAndNames) {
  EXPECT_EQ(Pattern::unstructured(0.5).pruned_per_row(576), 288);
  EXPECT_EQ(Pattern::unstructured(0.29).pruned_per_row(100), 29);
  EXPECT_EQ(Pattern::unstructured(0.7).pruned_per_row(10), 7);
  EXPECT_EQ(Pattern::unstructured(0.0).pruned_per_row(10), 0);
  EXPECT_EQ(Pattern::n_of_m(2, 4).pruned_per_row(64), 32);
  EXPECT_EQ(Pattern::n_of_m(4, 8).kept_per_row(64), 32);
  EXPECT_EQ(Pattern::unstructured(0.5).str(), "sparsity=0.5");
  EXPECT_EQ(Pattern::n_of_m(2, 4).str(), "pattern=2:4");
  EXPECT_THROW(Pattern::n_of_m(2, 4).pruned_per_row(30), Error);
  EXPECT_THROW(Pattern::unstructured(1.0), Error);
  EXPECT_THROW(Pattern::unstructured(-0.1), Error);
  EXPECT_THROW(Pattern::n_of_m(4, 4), Error);
}

TEST(Pattern, ParseSetting) {
  EXPECT_DOUBLE_EQ(parse_setting("sparsity=0.6", "l").pattern.sparsity, 0.6);
  const Setting s = parse_setting("pattern=4:8,values=f32", "l");
  EXPECT_EQ(s.pattern.n, 4);
  EXPECT_EQ(s.pattern.m, 8);
  EXPECT_EQ(s.values, ValueType::f32);
  EXPECT_EQ(parse_setting("sparsity=0.5,pattern=2:4", "l").pattern.m, 4);
  for (const char* bad : {"sparsity=0.4,pattern=2:4", "pattern=2-4", "pattern=4:4", "sparsity=1", "sparsity=x",
                          "bits=4", "sparsity=0.5,values=bf16", "values=f16", ""}) {
    SCOPED_TRACE(bad);
    const std::string msg = error_of([&] { parse_setting(bad, "blk.3.ffn_up.weight"); });
    EXPECT_NE(msg.find("blk.3.ffn_up.weight"), std::string::npos) << msg;
  }
}

void expect_exact_pattern(const Mask& mask, const Pattern& p) {
  const int64_t cols = mask.cols();
  for (int64_t r = 0; r < mask.rows(); ++r) {
    if (p.semi_structured()) {
      for (int64_t g = 0; g < cols; g += p.m) {
        int64_t pruned = 0;
        for (int64_t j = g; j < g + p.m; ++j) pruned += mask(r, j) == 0;
        ASSERT_EQ(pruned, p.n) << "row " << r << " group " << g / p.m;
      }
    } else {
      int64_t pruned = 0;
      for (int64_t j = 0; j < cols; ++j) pruned += mask(r, j) == 0;
      ASSERT_EQ(pruned, p.pruned_per_row(cols)) << "row " << r;
    }
  }
}

TEST(Masks, ExactPerRowAndPerGroupForEveryMethod) {
  const RowMatrix<float> w = heavy_tailed(48, 160, 1);
  const Matrix<double> h = correlated_hessian(160, 2);
  const Vector<double> ms = h.diagonal();
  for (const Pattern& p : {Pattern::unstructured(0.5), Pattern::unstructured(0.3), Pattern::unstructured(0.73),
                           Pattern::n_of_m(2, 4), Pattern::n_of_m(4, 8), Pattern::n_of_m(1, 4)}) {
    SCOPED_TRACE(p.str());
    for (const Pruned& r : {magnitude(w, p), wanda(w, ms, p), sparsegpt(w, h, p)}) {
      expect_exact_pattern(r.mask, p);
      for (int64_t i = 0; i < w.size(); ++i) {
        if (!r.mask.data()[i]) {
          ASSERT_EQ(r.weight.data()[i], 0.0f);
        }
      }
    }
  }
}

TEST(Masks, MagnitudeKeepsTheLargestAndWandaWeighsByInputNorm) {
  RowMatrix<float> w(1, 4);
  w << 0.1f, -0.4f, 0.2f, 0.3f;
  EXPECT_EQ(magnitude(w, Pattern::unstructured(0.5)).mask, (Mask(1, 4) << 0, 1, 0, 1).finished());
  Vector<double> ms(4);
  ms << 100.0, 1.0, 1.0, 1.0;  // channel 0 is 10x louder: 0.1 * 10 beats 0.4
  EXPECT_EQ(wanda(w, ms, Pattern::unstructured(0.5)).mask, (Mask(1, 4) << 1, 1, 0, 0).finished());
  EXPECT_EQ(wanda(w, ms, Pattern::n_of_m(2, 4)).mask, (Mask(1, 4) << 1, 1, 0, 0).finished());
  // Ties prune the lower index first, so masks never depend on the sort's whims.
  RowMatrix<float> same = RowMatrix<float>::Constant(1, 4, 0.5f);
  EXPECT_EQ(magnitude(same, Pattern::unstructured(0.5)).mask, (Mask(1, 4) << 0, 0, 1, 1).finished());
}

// ---- SparseGPT algebra ---------------------------------------------------------------------------

TEST(SparseGpt, SparsityZeroReproducesTheWeights) {
  const RowMatrix<float> w = heavy_tailed(40, 300, 3);
  const Matrix<double> h = correlated_hessian(300, 4);
  const Pruned r = sparsegpt(w, h, Pattern::unstructured(0.0));
  EXPECT_EQ(r.weight, w);
  EXPECT_EQ(r.mask.cast<int>().sum(), w.size());
  // Through the registry's adapter with float32 values the round trip is exact as well.
  const auto c = make_sparsegpt_compressor();
  const Layer layer{"test.weight", &w};
  const Vector<double> ms = h.diagonal();
  const Compressed comp = c->apply(layer, {&h, &ms, nullptr, 1200}, "sparsity=0,values=f32");
  EXPECT_EQ(c->reconstruct(comp), w);
}

TEST(SparseGpt, FactorIsTheUpperCholeskyFactorOfTheDampedInverse) {
  const Matrix<double> h = correlated_hessian(64, 5);
  const SparseGptFactor f = sparsegpt_factor(h, {128, 0.01});
  Matrix<double> damped = h;
  damped.diagonal().array() += 0.01 * h.diagonal().mean();
  const Matrix<double> want = damped.inverse();
  const Matrix<double> got = f.u.transpose() * f.u;
  EXPECT_LT((got - want).norm(), 1e-8 * want.norm());
  EXPECT_TRUE(f.u.isUpperTriangular());
  EXPECT_GT(f.u.diagonal().minCoeff(), 0.0);
}

TEST(SparseGpt, DeadInputsArePrunedFirstAndStayFinite) {
  const RowMatrix<float> w = heavy_tailed(16, 64, 6);
  Matrix<double> h = correlated_hessian(64, 7);
  for (int64_t j : {5, 17, 40}) {
    h.row(j).setZero();
    h.col(j).setZero();
  }
  const Pruned r = sparsegpt(w, h, Pattern::unstructured(0.25));
  ASSERT_TRUE(r.weight.allFinite());
  for (int64_t row = 0; row < w.rows(); ++row)
    for (int64_t j : {5, 17, 40}) EXPECT_EQ(r.mask(row, j), 0) << "row " << row << " input " << j;
}

TEST(SparseGpt, BeatsWandaAndMagnitudeOnCorrelatedInputs) {
  const RowMatrix<float> w = heavy_tailed(64, 256, 8);
  const Matrix<double> h = correlated_hessian(256, 9);
  const Vector<double> ms = h.diagonal();
  for (const Pattern& p : {Pattern::unstructured(0.5), Pattern::n_of_m(2, 4)}) {
    SCOPED_TRACE(p.str());
    const double em = output_error(w, magnitude(w, p).weight, &h);
    const double ew = output_error(w, wanda(w, ms, p).weight, &h);
    const double es = output_error(w, sparsegpt(w, h, p).weight, &h);
    EXPECT_LT(es, ew);
    EXPECT_LT(ew, em);
  }
}

// The optimal-brain-surgeon algebra written out directly from the (damped) Hessian, one row at a time,
// with no Cholesky factor and no lazy blocks. Column j is visited in order; the columns not yet
// visited are the only ones left free, so removing w_j moves them by -w_j [H_jj^-1]_j / [H_jj^-1]_00,
// with H_jj^-1 the inverse of H restricted to columns j.. (a fresh inverse per column). The mask follows
// the rule SparseGPT documents: unstructured, each row's count per block comes from ranking the whole
// original row by w^2 / [H_jj^-1]_00, and the weights a block loses are the lowest by the same score
// on the weights as the earlier columns left them when the block starts; N:M, the lowest n of every
// group of m when the group starts.
Pruned sequential_obs(const RowMatrix<float>& w, const Matrix<double>& damped, const Pattern& p, int64_t block) {
  const int64_t rows = w.rows(), n = w.cols(), drop = p.pruned_per_row(n);
  std::vector<Matrix<double>> tail_inverse;
  Vector<double> d2(n);
  for (int64_t j = 0; j < n; ++j) {
    tail_inverse.push_back(damped.bottomRightCorner(n - j, n - j).inverse());
    d2[j] = tail_inverse.back()(0, 0);
  }
  // Pruning the lowest `count` scores among columns [begin, end) of a row (ties: lower column first).
  const auto prune_lowest_of = [&](const Vector<double>& x, int64_t begin, int64_t end, int64_t count, Mask& mask,
                                   int64_t r) {
    std::vector<int64_t> cols(static_cast<size_t>(end - begin));
    std::iota(cols.begin(), cols.end(), begin);
    std::stable_sort(cols.begin(), cols.end(),
                     [&](int64_t a, int64_t b) { return x[a] * x[a] / d2[a] < x[b] * x[b] / d2[b]; });
    for (int64_t k = 0; k < count; ++k) mask(r, cols[static_cast<size_t>(k)]) = 0;
  };
  Pruned out{RowMatrix<float>(rows, n), Mask::Ones(rows, n)};
  for (int64_t r = 0; r < rows; ++r) {
    Vector<double> x = w.row(r).transpose().cast<double>();
    Mask whole = Mask::Ones(1, n);
    if (!p.semi_structured()) prune_lowest_of(x, 0, n, drop, whole, 0);
    for (int64_t j = 0; j < n; ++j) {
      if (p.semi_structured() && j % p.m == 0) prune_lowest_of(x, j, j + p.m, p.n, out.mask, r);
      if (!p.semi_structured() && j % block == 0) {
        const int64_t end = std::min(n, j + block);
        int64_t quota = 0;
        for (int64_t k = j; k < end; ++k) quota += whole(0, k) == 0;
        prune_lowest_of(x, j, end, quota, out.mask, r);
      }
      if (out.mask(r, j)) continue;
      const Matrix<double>& hinv = tail_inverse[static_cast<size_t>(j)];
      x.tail(n - j) -= (x[j] / hinv(0, 0)) * hinv.col(0);
      x[j] = 0;
    }
    out.weight.row(r) = x.transpose().cast<float>();
  }
  return out;
}

// The best any method can do with a given mask: per row, the kept weights that minimise
// (w - w')^T H (w - w') with the pruned ones at zero, w'_K = w_K + H_KK^-1 H_KP w_P, one linear solve.
RowMatrix<double> least_squares_for_mask(const RowMatrix<float>& w, const Matrix<double>& h, const Mask& mask) {
  RowMatrix<double> out = RowMatrix<double>::Zero(w.rows(), w.cols());
  for (int64_t r = 0; r < w.rows(); ++r) {
    std::vector<int64_t> kept, pruned;
    for (int64_t j = 0; j < w.cols(); ++j) (mask(r, j) ? kept : pruned).push_back(j);
    const auto nk = static_cast<int64_t>(kept.size()), np = static_cast<int64_t>(pruned.size());
    Matrix<double> hkk(nk, nk), hkp(nk, np);
    Vector<double> wk(nk), wp(np);
    for (int64_t a = 0; a < nk; ++a) {
      wk[a] = w(r, kept[static_cast<size_t>(a)]);
      for (int64_t b = 0; b < nk; ++b) hkk(a, b) = h(kept[static_cast<size_t>(a)], kept[static_cast<size_t>(b)]);
      for (int64_t b = 0; b < np; ++b) hkp(a, b) = h(kept[static_cast<size_t>(a)], pruned[static_cast<size_t>(b)]);
    }
    for (int64_t b = 0; b < np; ++b) wp[b] = w(r, pruned[static_cast<size_t>(b)]);
    const Vector<double> solved = wk + hkk.partialPivLu().solve(hkp * wp);
    for (int64_t a = 0; a < nk; ++a) out(r, kept[static_cast<size_t>(a)]) = solved[a];
  }
  return out;
}

// sum over rows of (w - w')^T H (w - w'): the layer's output error on the inputs H came from.
template <typename Derived>
double output_error_under(const RowMatrix<float>& w, const Eigen::MatrixBase<Derived>& w_hat,
                          const Matrix<double>& h) {
  const RowMatrix<double> diff = w.cast<double>() - w_hat.template cast<double>();
  return (diff * h).cwiseProduct(diff).sum();
}

TEST(SparseGpt, MatchesSequentialObsAndComesCloseToTheLeastSquaresOptimum) {
  // A small layer and a dense Hessian from random, correlated inputs.
  const int64_t rows = 8, cols = 16;
  const RowMatrix<float> w = heavy_tailed(rows, cols, 12);
  std::mt19937_64 rng(13);
  std::normal_distribution<double> gauss(0.0, 1.0);
  Matrix<double> x(64, cols), mix(cols, cols);
  for (int64_t i = 0; i < x.size(); ++i) x.data()[i] = gauss(rng);
  for (int64_t i = 0; i < mix.size(); ++i) mix.data()[i] = (i % (cols + 1) == 0 ? 1.0 : 0.0) + 0.4 * gauss(rng);
  x = x * mix;
  const Matrix<double> h = x.transpose() * x / 64.0;
  const double damp = 0.01;
  Matrix<double> damped = h;
  damped.diagonal().array() += damp * h.diagonal().mean();

  for (const Pattern& p : {Pattern::unstructured(0.5), Pattern::unstructured(0.3), Pattern::n_of_m(2, 4)}) {
    for (int64_t block : {cols, int64_t{5}, int64_t{4}, int64_t{1}}) {
      SCOPED_TRACE(p.str() + ", block " + std::to_string(block));
      const Pruned got = sparsegpt(w, h, p, {block, damp});
      const Pruned want = sequential_obs(w, damped, p, block);
      ASSERT_EQ(got.mask, want.mask);
      EXPECT_LT((got.weight - want.weight).cwiseAbs().maxCoeff(), 1e-6f * w.cwiseAbs().maxCoeff());
      // Sequential OBS compensates each removal only with the columns after it, so it cannot beat the
      // least-squares weights for its own mask (a pruned last column gets no compensation at all);
      // on 16 columns it lands at 1.2-2.1x the optimum, far below leaving the kept weights alone.
      const double e_got = output_error_under(w, got.weight, damped);
      const double e_best = output_error_under(w, least_squares_for_mask(w, damped, got.mask), damped);
      EXPECT_GE(e_got, e_best * (1 - 1e-6));
      EXPECT_LT(e_got, 2.5 * e_best) << "SparseGPT " << e_got << " vs least squares " << e_best;
      // Keeping the original weights under the same mask is worse still (2.3-7x the optimum here).
      EXPECT_LT(e_got, output_error_under(w, (w.array() * got.mask.cast<float>().array()).matrix(), damped));
    }
  }
}

// ---- storage -------------------------------------------------------------------------------------

TEST(Storage, RoundTripAndByteCounts) {
  const RowMatrix<float> w = heavy_tailed(12, 40, 10);
  for (const char* knob : {"sparsity=0.5", "sparsity=0.35,values=f32", "pattern=2:4", "pattern=4:8,values=f32",
                           "pattern=1:4", "sparsity=0"}) {
    SCOPED_TRACE(knob);
    const Setting s = parse_setting(knob, "t");
    const Pruned p = magnitude(w, s.pattern);
    const Compressed c = encode(p, s, "prune.magnitude", knob);
    EXPECT_EQ(c.stored_bytes(), stored_bytes(w.rows(), w.cols(), s));
    const RowMatrix<float> back = decode(c);
    for (int64_t i = 0; i < w.size(); ++i) {
      const float want = s.values == ValueType::f32 ? p.weight.data()[i] : f16_to_f32(f32_to_f16(p.weight.data()[i]));
      ASSERT_EQ(back.data()[i], want) << i;
    }
  }
  // The formats: 50% unstructured = f16 values + a 1-bit mask; 2:4 = f16 values + 2-bit indices per
  // kept value (4 bits per group, NVIDIA's layout); 4:8 = values + an 8-bit mask per group (cheaper
  // than four 3-bit indices).
  const auto bytes = [](const char* knob) { return stored_bytes(576, 1536, parse_setting(knob, "t")); };
  EXPECT_EQ(bytes("sparsity=0.5"), 576u * (768 * 2 + 192));
  EXPECT_EQ(bytes("pattern=2:4"), 576u * (768 * 2 + 192));
  EXPECT_EQ(bytes("pattern=4:8"), 576u * (768 * 2 + 192));
  EXPECT_EQ(bytes("sparsity=0.5,values=f32"), 576u * (768 * 4 + 192));
  const Compressed c24 = encode(magnitude(w, Pattern::n_of_m(2, 4)), parse_setting("pattern=2:4", "t"), "m", "pattern=2:4");
  EXPECT_TRUE(c24.tensors.count("indices"));
  const Compressed c48 = encode(magnitude(w, Pattern::n_of_m(4, 8)), parse_setting("pattern=4:8", "t"), "m", "pattern=4:8");
  EXPECT_TRUE(c48.tensors.count("mask"));
}

TEST(Storage, TwoBitIndicesLayout) {
  // One row, two groups of 4: keep columns {1, 3} then {4, 6} -> indices 1, 3, 0, 2 packed LSB first:
  // 01 11 00 10 -> 0b10001101.
  RowMatrix<float> w(1, 8);
  w << 0.0f, 1.0f, 0.0f, 2.0f, 3.0f, 0.0f, 4.0f, 0.0f;
  const Pruned p = magnitude(w, Pattern::n_of_m(2, 4));
  const Compressed c = encode(p, parse_setting("pattern=2:4,values=f32", "t"), "m", "pattern=2:4,values=f32");
  const Tensor& idx = c.tensors.at("indices");
  ASSERT_EQ(idx.nbytes(), 1u);
  EXPECT_EQ(static_cast<uint8_t>(idx.raw()[0]), 0b10001101);
  EXPECT_EQ(decode(c), w);
}

TEST(Storage, CorruptFormsAreRejected) {
  const RowMatrix<float> w = heavy_tailed(4, 16, 11);
  const Setting s = parse_setting("sparsity=0.5", "t");
  const auto fresh = [&] { return encode(magnitude(w, s.pattern), s, "prune.magnitude", "sparsity=0.5"); };
  Compressed extra_bit = fresh();
  extra_bit.tensors.at("mask").raw()[0] = std::byte{0xFF};
  extra_bit.tensors.at("mask").raw()[1] = std::byte{0xFF};
  EXPECT_THROW(decode(extra_bit), Error);
  Compressed missing = fresh();
  missing.tensors.erase("values");
  EXPECT_THROW(decode(missing), Error);
  Compressed wrong_shape = fresh();
  wrong_shape.cols = 24;
  EXPECT_THROW(decode(wrong_shape), Error);
}

// ---- the adapters --------------------------------------------------------------------------------

TEST(Adapters, KnobsLadderCostAndBadInput) {
  const RowMatrix<float> w = heavy_tailed(32, 128, 12);
  const Matrix<double> h = correlated_hessian(128, 13);
  const Vector<double> ms = h.diagonal();
  const LayerCalibration calib{&h, &ms, nullptr, 512};
  const Layer layer{"blk.0.ffn_up.weight", &w};
  for (const auto& c : {make_magnitude_compressor(), make_wanda_compressor(), make_sparsegpt_compressor()}) {
    SCOPED_TRACE(std::string(c->name()));
    double prev_bytes = 0, prev_error = 2;
    for (const Option& o : c->options(layer, calib)) {
      EXPECT_GT(o.cost.bytes, prev_bytes);
      EXPECT_LE(o.error, prev_error);
      EXPECT_EQ(static_cast<uint64_t>(o.cost.bytes), c->apply(layer, calib, o.knob).stored_bytes());
      prev_bytes = o.cost.bytes;
      prev_error = o.error;
    }
    for (const char* knob : {"pattern=2:4", "pattern=4:8"})
      EXPECT_EQ(static_cast<uint64_t>(c->cost(layer, knob).bytes), c->apply(layer, calib, knob).stored_bytes());
    const auto has_layer = [&](const std::function<void()>& f, const char* layer_name) {
      const std::string msg = error_of(f);
      EXPECT_NE(msg.find(layer_name), std::string::npos) << msg;
    };
    has_layer([&] { c->apply(layer, calib, "rank=4"); }, "blk.0.ffn_up.weight");
    has_layer([&] { c->cost(layer, "pattern=3:7"); }, "blk.0.ffn_up.weight");  // 128 is no multiple of 7
    RowMatrix<float> bad = w;
    bad(2, 5) = std::numeric_limits<float>::infinity();
    const Layer bad_layer{"blk.1.attn_q.weight", &bad};
    has_layer([&] { c->apply(bad_layer, calib, "sparsity=0.5"); }, "blk.1.attn_q.weight");
    const Matrix<double> small = h.topLeftCorner(64, 64);
    const Vector<double> small_ms = small.diagonal();
    if (c->name() != "prune.magnitude")
      has_layer([&] { c->apply(layer, {&small, &small_ms, nullptr, 512}, "sparsity=0.5"); }, "blk.0.ffn_up.weight");
  }
  {
    const auto c = make_sparsegpt_compressor();
    EXPECT_TRUE(c->needs_hessian());
    const std::string msg = error_of([&] { c->apply(layer, {nullptr, &ms, nullptr, 512}, "sparsity=0.5"); });
    EXPECT_NE(msg.find("blk.0.ffn_up.weight"), std::string::npos) << msg;
  }
}

// ---- real layers and the whole model: stories260K ------------------------------------------------

std::filesystem::path stories_path() { return strata::testing::shared_data_dir() / "models/stories260K/stories260K.bin"; }

class Stories : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    if (!std::filesystem::exists(stories_path())) return;
    file_ = io::open_model(stories_path()).release();
    model_ = new nn::LlamaModel(nn::LlamaModel::load(*file_));
    // The model's own samples stand in for text (its tokenizer is not available): 16 x 128 tokens
    // to calibrate, 8 others to evaluate.
    const auto calib_seqs = nn::sample_sequences(*model_, 16, 128, 1, 100);
    calib_ = new nn::Calibration();
    size_t next = 0;
    nn::calibrate(*model_, [&](std::vector<int32_t>& out) {
      if (next == calib_seqs.size()) return false;
      out = calib_seqs[next++];
      return true;
    }, *calib_);
    eval_ = new std::vector<int32_t>();
    for (const auto& s : nn::sample_sequences(*model_, 8, 128, 1, 900)) eval_->insert(eval_->end(), s.begin(), s.end());
  }
  static void TearDownTestSuite() {
    delete eval_;
    delete calib_;
    delete model_;
    delete file_;
  }
  void SetUp() override { STRATA_REQUIRE_FILE(stories_path(), "shared data: ../shared/data/models/stories260K"); }

  static double kl(const nn::LlamaModel& m) {
    return nn::kl_divergence(*model_, m, *eval_, {128, 128, 0}).mean_kl;
  }

  static inline io::Model* file_ = nullptr;
  static inline nn::LlamaModel* model_ = nullptr;
  static inline nn::Calibration* calib_ = nullptr;
  static inline std::vector<int32_t>* eval_ = nullptr;
};

TEST_F(Stories, SparseGptBeatsWandaBeatsMagnitudeOnRealLayers) {
  // Summed over every linear layer of the five blocks, and on most layers one by one.
  for (const Pattern& p : {Pattern::unstructured(0.5), Pattern::n_of_m(2, 4)}) {
    SCOPED_TRACE(p.str());
    double sum_m = 0, sum_w = 0, sum_s = 0;
    int layers = 0, ordered = 0;
    for (const auto& name : model_->linear_names()) {
      if (name == "output.weight") continue;
      const RowMatrix<float> w = model_->linear(name).dense_weight();
      const nn::InputStats& st = calib_->stats(name);
      const Matrix<double> h = st.hessian();
      const double em = output_error(w, magnitude(w, p, name).weight, &h);
      const double ew = output_error(w, wanda(w, st.mean_sq(), p, name).weight, &h);
      const double es = output_error(w, sparsegpt(w, h, p, {}, name).weight, &h);
      sum_m += em;
      sum_w += ew;
      sum_s += es;
      ++layers;
      ordered += es < ew && ew <= em * 1.02;
      EXPECT_LT(es, ew) << name;
    }
    EXPECT_LT(sum_s, 0.8 * sum_w);
    EXPECT_LT(sum_w, sum_m);
    EXPECT_GE(ordered, layers * 3 / 4);
  }
}

TEST_F(Stories, PrunedModelsRunAndOrderEndToEnd) {
  const auto& names = model_->linear_names();
  std::vector<double> kls;
  for (const auto& c : {make_magnitude_compressor(), make_sparsegpt_compressor()}) {
    nn::LlamaModel m = model_->clone();
    for (const auto& name : names) {
      if (name == "output.weight") continue;
      const RowMatrix<float> w = model_->linear(name).dense_weight();
      const nn::InputStats& st = calib_->stats(name);
      const Matrix<double> h = st.hessian();
      const Vector<double> ms = st.mean_sq(), ma = st.mean_abs();
      const Compressed comp = c->apply({name, &w}, {&h, &ms, &ma, st.tokens}, "sparsity=0.5");
      m.set_linear(name, c->to_linear(comp));
    }
    kls.push_back(kl(m));
    EXPECT_TRUE(std::isfinite(kls.back()));
  }
  EXPECT_LT(kls[1], kls[0]) << "SparseGPT's model should be closer to the dense one than magnitude's";
}

TEST_F(Stories, FfnNeuronPruningKeepsTheModelRunnable) {
  const int64_t hidden = model_->config().hidden_dim;
  NeuronPruningReport with, without;
  const nn::LlamaModel pruned = prune_ffn_neurons(*model_, *calib_, {0.25, true}, &with);
  const nn::LlamaModel plain = prune_ffn_neurons(*model_, *calib_, {0.25, false}, &without);
  ASSERT_EQ(with.kept.size(), static_cast<size_t>(model_->config().n_layers));
  for (const auto& k : with.kept) EXPECT_EQ(static_cast<int64_t>(k.size()), hidden - hidden / 4);
  EXPECT_LT(with.bytes_after, with.bytes_before * 0.77);
  EXPECT_EQ(with.kept, without.kept);
  // Shapes are unchanged and the dense view has the pruned neurons zeroed.
  const auto& gate = pruned.linear("blk.1.ffn_gate.weight");
  EXPECT_EQ(gate.out_features(), hidden);
  const RowMatrix<float> gd = gate.dense_weight();
  int64_t zero_rows = 0;
  for (int64_t r = 0; r < gd.rows(); ++r) zero_rows += gd.row(r).isZero(0);
  EXPECT_EQ(zero_rows, hidden / 4);
  // The same number of neurons removed at random, for scale: the importance ranking must matter.
  nn::LlamaModel random = model_->clone();
  std::mt19937_64 rng(5);
  for (int64_t l = 0; l < model_->config().n_layers; ++l) {
    std::vector<int64_t> kept(static_cast<size_t>(hidden));
    std::iota(kept.begin(), kept.end(), int64_t{0});
    std::shuffle(kept.begin(), kept.end(), rng);
    kept.resize(with.kept[static_cast<size_t>(l)].size());
    std::sort(kept.begin(), kept.end());
    for (const char* slot : {"ffn_gate", "ffn_up"}) {
      const std::string name = "blk." + std::to_string(l) + "." + slot + ".weight";
      const RowMatrix<float> w = model_->linear(name).dense_weight();
      RowMatrix<float> sub(static_cast<int64_t>(kept.size()), w.cols());
      for (size_t r = 0; r < kept.size(); ++r) sub.row(static_cast<int64_t>(r)) = w.row(kept[r]);
      random.set_linear(name, std::make_shared<SubmatrixLinear>(hidden, w.cols(), kept, std::vector<int64_t>{}, sub));
    }
  }
  // stories260K is tiny (hidden 172) and fragile: a quarter of its FFN neurons is a lot to lose.
  const double kl_with = kl(pruned), kl_without = kl(plain), kl_random = kl(random);
  EXPECT_TRUE(std::isfinite(kl_with));
  EXPECT_GT(kl_without, 0.0);
  EXPECT_LT(kl_without, 0.7 * kl_random) << "importance ranking vs random neurons";
  EXPECT_LT(kl_with, kl_without) << "least-squares compensation should help";
  EXPECT_THROW(prune_ffn_neurons(*model_, *calib_, {1.0, true}), Error);
}

TEST(Structured, SubmatrixAndZeroLinearComputeTheirDenseView) {
  const RowMatrix<float> w = heavy_tailed(6, 5, 14);
  const SubmatrixLinear rows(10, 5, {1, 4, 5, 7, 8, 9}, {}, w);
  const RowMatrix<float> w2 = heavy_tailed(4, 3, 15);
  const SubmatrixLinear cols(4, 7, {}, {0, 2, 6}, w2);
  for (const nn::Linear* l : {static_cast<const nn::Linear*>(&rows), static_cast<const nn::Linear*>(&cols)}) {
    const RowMatrix<float> x = heavy_tailed(3, l->in_features(), 16);
    RowMatrix<float> y(3, l->out_features());
    l->forward(x.data(), 3, y.data());
    const RowMatrix<float> want = x * l->dense_weight().transpose();
    EXPECT_LT((y - want).norm(), 1e-6f * (1 + want.norm()));
  }
  const ZeroLinear zero(3, 4);
  std::vector<float> x(8, 1.0f), y(6, 5.0f);
  zero.forward(x.data(), 2, y.data());
  for (float v : y) EXPECT_EQ(v, 0.0f);
  EXPECT_EQ(zero.weight_bytes(), 0u);
  EXPECT_TRUE(zero.dense_weight().isZero(0));
  EXPECT_THROW(SubmatrixLinear(10, 5, {3, 2}, {}, heavy_tailed(2, 5, 1)), Error);
  EXPECT_THROW(SubmatrixLinear(10, 5, {1}, {}, heavy_tailed(2, 5, 1)), Error);
}

TEST_F(Stories, BlockRemovalFollowsBlockInfluence) {
  const int64_t n = model_->config().n_layers;
  const std::vector<int> order = rank_blocks_by_influence(*calib_, n);
  ASSERT_EQ(static_cast<int64_t>(order.size()), n);
  const auto bi = calib_->block_influence();
  for (size_t i = 1; i < order.size(); ++i) EXPECT_LE(bi[static_cast<size_t>(order[i - 1])], bi[static_cast<size_t>(order[i])]);
  const int least[1] = {order.front()}, most[1] = {order.back()};
  const nn::LlamaModel a = remove_blocks(*model_, least), b = remove_blocks(*model_, most);
  EXPECT_EQ(a.linear(model_->linear_names()[static_cast<size_t>(least[0] * 7)]).weight_bytes(), 0u);
  EXPECT_LT(a.weight_bytes(), model_->weight_bytes());
  EXPECT_LT(kl(a), kl(b)) << "removing the least influential block must hurt less than the most influential";
  // A removed block is an exact identity: removing every block leaves embedding -> norm -> output.
  std::vector<int> all(static_cast<size_t>(n));
  std::iota(all.begin(), all.end(), 0);
  const nn::LlamaModel none = remove_blocks(*model_, all);
  const int32_t toks[3] = {1, 40, 7};
  nn::LlamaSession s(none, 3);
  std::vector<float> logits(static_cast<size_t>(3 * model_->config().vocab_size));
  s.forward(toks, logits.data(), nn::Logits::all);
  const auto& c = model_->config();
  Vector<float> x(c.dim);
  model_->token_embedding().lookup(40, x.data());
  const float scale = 1.0f / std::sqrt(x.squaredNorm() / static_cast<float>(c.dim) + c.norm_eps);
  const Vector<float> xn = (x * scale).cwiseProduct(model_->output_norm());
  const Vector<float> want = model_->output().dense_weight() * xn;
  for (int64_t v = 0; v < c.vocab_size; ++v) ASSERT_NEAR(logits[static_cast<size_t>(c.vocab_size + v)], want[v], 1e-4f);
  const int dup[2] = {1, 1};
  EXPECT_THROW(remove_blocks(*model_, dup), Error);
  const int out_of_range[1] = {static_cast<int>(n)};
  EXPECT_THROW(remove_blocks(*model_, out_of_range), Error);
}

}  // namespace
}  // namespace strata::compress::prune
